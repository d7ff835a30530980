"""Build a demo catalog file from the shared fashion-products photos.

Prices, stock flags and brands are SYNTHETIC: the source has no prices. Prices are
deterministic: a base price per articleType drawn from a seeded generator, times a per-item
factor seeded by the item id, so the same inputs always give the same catalog.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

UPDATED_AT = "2026-11-01T00:00:00Z"
CATALOG_COLUMNS = ("item_id", "image_uri", "price", "category", "article_type", "title", "brand", "in_stock", "updated_at")


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def synthetic_price(item_id: str, article_type: str | None, *, seed: int) -> float:
    """A deterministic synthetic price: base per articleType (unlabelled items share one), item factor.

    Returns
    -------
    float
        A price ending in 9, between 99 and about 20,000.
    """
    base = float(_rng(seed, f"type:{article_type or ''}").lognormal(mean=np.log(1200.0), sigma=0.7))
    factor = float(_rng(seed, f"item:{item_id}").lognormal(mean=0.0, sigma=0.35))
    return float(max(99, int(round(base * factor / 10.0)) * 10 - 1))


def build_demo_catalog(
    source_dir: Path | str,
    out_path: Path | str,
    *,
    seed: int,
    in_stock_rate: float = 0.95,
    item_ids: Iterable[str] | None = None,
) -> int:
    """Write a catalog CSV for the photos in ``source_dir/images`` with ``source_dir/labels.csv``.

    Parameters
    ----------
    source_dir : path-like
        Folder with ``images/<id>.jpg`` and ``labels.csv``.
    out_path : path-like
        CSV to write. ``image_uri`` values are relative to ``source_dir``.
    seed : int
        Seed of the synthetic prices and stock flags.
    in_stock_rate : float
        Share of items marked in stock.
    item_ids : iterable of str, optional
        Only these items (tests use a fixed subset); default every photo.

    Returns
    -------
    int
        Rows written.
    """
    source = Path(source_dir)
    with open(source / "labels.csv", newline="", encoding="utf-8") as handle:
        labels = {row["id"]: row for row in csv.DictReader(handle)}
    ids = sorted(p.stem for p in (source / "images").glob("*.jpg"))
    if item_ids is not None:
        wanted = set(item_ids)
        ids = [i for i in ids if i in wanted]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CATALOG_COLUMNS)
        writer.writeheader()
        for item_id in ids:
            label = labels.get(item_id, {})
            title = label.get("productDisplayName") or ""
            article_type = label.get("articleType") or ""
            writer.writerow(
                {
                    "item_id": item_id,
                    "image_uri": f"images/{item_id}.jpg",
                    "price": f"{synthetic_price(item_id, article_type, seed=seed):.2f}",
                    "category": label.get("subCategory") or "",
                    "article_type": article_type,
                    "title": title,
                    "brand": title.split(" ")[0] if title else "",
                    "in_stock": str(bool(_rng(seed, f"stock:{item_id}").random() < in_stock_rate)).lower(),
                    "updated_at": UPDATED_AT,
                }
            )
    return len(ids)
