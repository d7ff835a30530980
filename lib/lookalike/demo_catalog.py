"""Build a demo catalog file (and demo user interactions) from the shared fashion-products photos.

Prices, stock flags, brands and user interactions are SYNTHETIC: the source has none. Prices are
deterministic: a base price per articleType drawn from a seeded generator, times a per-item
factor seeded by the item id, so the same inputs always give the same catalog.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

UPDATED_AT = "2026-11-01T00:00:00Z"
IN_STOCK_RATE = 0.95
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


def _price_and_stock(item_id: str, article_type: str, *, seed: int, in_stock_rate: float) -> dict[str, str]:
    """An item's synthetic ``price`` and ``in_stock`` catalog fields."""
    return {
        "price": f"{synthetic_price(item_id, article_type, seed=seed):.2f}",
        "in_stock": str(bool(_rng(seed, f"stock:{item_id}").random() < in_stock_rate)).lower(),
    }


def build_demo_catalog(
    source_dir: Path | str,
    out_path: Path | str,
    *,
    seed: int,
    in_stock_rate: float = IN_STOCK_RATE,
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
                    "category": label.get("subCategory") or "",
                    "article_type": article_type,
                    "title": title,
                    "brand": title.split(" ")[0] if title else "",
                    "updated_at": UPDATED_AT,
                    **_price_and_stock(item_id, article_type, seed=seed, in_stock_rate=in_stock_rate),
                }
            )
    return len(ids)


CHANGE_KINDS = ("price_same_band", "price_new_band", "new_category", "new_photo", "stock_change", "new_item", "deleted")
# Kinds that change an existing row in place (the others add or remove rows).
_ROW_KINDS = CHANGE_KINDS[:5]
CHANGED_AT = "2026-11-20T00:00:00Z"


def nightly_changes(
    rows: list[dict[str, str]], spare_photos: list[str], *, fraction: float, seed: int
) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """A deterministic night of catalog changes touching ``fraction`` of the items, in equal shares.

    Kinds: a small price change, a price tripled (likely a new price band), a new category, a new
    photo, the stock flag flipped, a new item, a deleted item. New photos and new items use
    ``spare_photos`` (image URIs the catalog does not reference).

    Returns
    -------
    (list of dict, dict)
        The new catalog rows, and the item ids affected per kind.
    """
    rng = np.random.default_rng(seed)
    per_kind = max(1, int(round(fraction * len(rows) / len(CHANGE_KINDS))))
    if len(spare_photos) < 2 * per_kind:
        raise ValueError(f"{2 * per_kind} spare photos needed, {len(spare_photos)} given")
    order = rng.permutation(len(rows))
    in_place = len(_ROW_KINDS)
    picked = [order[i * per_kind:(i + 1) * per_kind] for i in range(in_place)]
    picked += [[], order[in_place * per_kind:(in_place + 1) * per_kind]]
    categories = sorted({r["category"] for r in rows if r["category"]})
    out = [dict(r) for r in rows]
    affected: dict[str, list[str]] = {kind: [] for kind in CHANGE_KINDS}
    spare = iter(spare_photos)
    for kind, positions in zip(CHANGE_KINDS, picked):
        for position in positions:
            row = out[position]
            affected[kind].append(row["item_id"])
            row["updated_at"] = CHANGED_AT
            if kind == "price_same_band":
                row["price"] = f"{float(row['price']) + 1:.2f}"
            elif kind == "price_new_band":
                row["price"] = f"{float(row['price']) * 3:.2f}"
            elif kind == "new_category":
                others = [c for c in categories if c != row["category"]]
                row["category"] = others[int(rng.integers(len(others)))]
            elif kind == "new_photo":
                row["image_uri"] = next(spare)
            elif kind == "stock_change":
                row["in_stock"] = "false" if row["in_stock"] == "true" else "true"
    for _ in range(per_kind):
        uri = next(spare)
        template = dict(out[int(rng.integers(len(out)))])
        item_id = f"new-{Path(uri).stem}"
        out.append({**template, "item_id": item_id, "image_uri": uri, "updated_at": CHANGED_AT})
        affected["new_item"].append(item_id)
    gone = set(affected["deleted"])
    return [r for r in out if r["item_id"] not in gone], affected


VARIANT_TRANSFORMS = ("mirrored", "cropped", "mirrored and cropped")


def scaled_catalog(
    rows: list[dict[str, str]], source_dir: Path | str, out_dir: Path | str, *, copies: int, seed: int
) -> list[dict[str, str]]:
    """A catalog ``copies`` times the size of ``rows``, for benchmarks: every photo also as new variant photos.

    Copies the photos of ``rows`` to ``out_dir/images`` and writes, per extra copy, each photo
    mirrored, cropped by 8 % on every side, or both (``VARIANT_TRANSFORMS``, in turn), as a new
    item ``<item_id>-v<copy>`` of the same category and type, with its own synthetic price and
    stock flag. The variants are distinct files (other hashes, other embeddings), so a full build
    scores every one of them. ``image_uri`` values are relative to ``out_dir``.

    Parameters
    ----------
    rows : list of dict
        Catalog rows (``CATALOG_COLUMNS``) whose ``image_uri`` is relative to ``source_dir``.
    copies : int
        1 to 4: the original and up to three variants of each item.
    seed : int
        Seed of the variants' synthetic prices and stock flags.

    Returns
    -------
    list of dict
        The originals, then the variants of copy 2, 3, ...
    """
    if not 1 <= copies <= len(VARIANT_TRANSFORMS) + 1:
        raise ValueError(f"copies must be between 1 and {len(VARIANT_TRANSFORMS) + 1}, not {copies}")
    source, images = Path(source_dir), Path(out_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        target = images / Path(row["image_uri"]).name
        target.write_bytes((source / row["image_uri"]).read_bytes())
        out.append({**row, "image_uri": f"images/{target.name}"})
    for copy in range(2, copies + 1):
        transform = VARIANT_TRANSFORMS[copy - 2]
        for row in rows:
            item_id = f"{row['item_id']}-v{copy}"
            with Image.open(source / row["image_uri"]) as photo:
                variant = photo.convert("RGB")
            if "cropped" in transform:
                dx, dy = int(variant.width * 0.08), int(variant.height * 0.08)
                variant = variant.crop((dx, dy, variant.width - dx, variant.height - dy)).resize(photo.size)
            if "mirrored" in transform:
                variant = ImageOps.mirror(variant)
            variant.save(images / f"{item_id}.jpg", quality=90)
            out.append({
                **row, "item_id": item_id, "image_uri": f"images/{item_id}.jpg",
                **_price_and_stock(item_id, row["article_type"], seed=seed, in_stock_rate=IN_STOCK_RATE),
            })
    return out


def read_catalog_csv(path: Path | str) -> list[dict[str, str]]:
    """The rows of a catalog CSV as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_catalog_csv(rows: list[dict[str, str]], path: Path | str) -> Path:
    """Write catalog rows (``CATALOG_COLUMNS``) to a CSV."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CATALOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out


INTERACTION_COLUMNS = ("user_id", "item_id", "event", "rating", "event_time")
_INTERACTIONS_START = np.datetime64("2026-10-01T00:00:00")


def build_demo_interactions(
    rows: list[dict[str, str]], out_path: Path | str, *, users: int, seed: int
) -> int:
    """Write SYNTHETIC user interactions for catalog ``rows`` to a CSV, deterministically.

    Each user has one favourite category (drawn by category size) and rates 3 to 6 of its items
    4 or 5 or buys them, rates one or two items of other categories 1 or 2, and views a few
    random items. Only items with a given category take part.

    Returns
    -------
    int
        Rows written.
    """
    by_category: dict[str, list[str]] = {}
    for row in rows:
        if row.get("category"):
            by_category.setdefault(row["category"], []).append(row["item_id"])
    categories = sorted(c for c, ids in by_category.items() if len(ids) >= 8)
    if not categories:
        raise ValueError("no category has 8 items with a given category: nothing to interact with")
    sizes = np.array([len(by_category[c]) for c in categories], dtype=np.float64)
    everything = sorted(i for ids in by_category.values() for i in ids)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    events: list[dict[str, str]] = []

    def event(user: str, item: str, kind: str, rating: str, rng: np.random.Generator) -> None:
        when = _INTERACTIONS_START + np.timedelta64(int(rng.integers(0, 30 * 24 * 60)), "m")
        events.append({"user_id": user, "item_id": item, "event": kind, "rating": rating, "event_time": f"{when}Z"})

    for number in range(users):
        user = f"user-{number:05d}"
        rng = _rng(seed, user)
        favourite = categories[int(rng.choice(len(categories), p=sizes / sizes.sum()))]
        loved = rng.choice(by_category[favourite], size=int(rng.integers(3, 7)), replace=False)
        for item in loved:
            if rng.random() < 0.3:
                event(user, str(item), "purchase", "", rng)
            else:
                event(user, str(item), "rating", str(int(rng.integers(4, 6))), rng)
        others = [c for c in categories if c != favourite]
        for category in rng.choice(others, size=min(len(others), int(rng.integers(1, 3))), replace=False):
            disliked = by_category[str(category)][int(rng.integers(len(by_category[str(category)])))]
            event(user, disliked, "rating", str(int(rng.integers(1, 3))), rng)
        for item in rng.choice(everything, size=int(rng.integers(2, 6)), replace=False):
            event(user, str(item), "view", "", rng)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INTERACTION_COLUMNS)
        writer.writeheader()
        writer.writerows(events)
    return len(events)
