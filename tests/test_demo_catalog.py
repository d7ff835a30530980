"""The demo catalog built from the shared photos: deterministic synthetic prices, labels mapped to columns."""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.demo_catalog import CATALOG_COLUMNS, UPDATED_AT, build_demo_catalog, scaled_catalog, synthetic_price

SEED = 20261121


def read_rows(path: Path) -> list[dict]:
    """The written CSV as a list of dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_labels(source: Path) -> dict[str, dict]:
    """labels.csv by id."""
    with open(source / "labels.csv", newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def demo(photo_subset, tmp_path_factory):
    """The demo catalog for the photo subset, written once: (path, rows, rows written)."""
    path = tmp_path_factory.mktemp("demo") / "catalog.csv"
    written = build_demo_catalog(photo_subset, path, seed=SEED, in_stock_rate=0.95)
    return path, read_rows(path), written


def test_one_row_per_photo_in_id_order(demo, photo_subset):
    """Every photo gets exactly one row, in sorted id order, with the documented header; the count is returned."""
    path, rows, written = demo
    ids = sorted(p.stem for p in (photo_subset / "images").glob("*.jpg"))
    assert [r["item_id"] for r in rows] == ids
    assert written == len(ids) == 200
    with open(path, newline="", encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == list(CATALOG_COLUMNS)


def test_two_runs_are_byte_identical(demo, photo_subset, tmp_path):
    """Building again with the same seed gives the very same file; another seed changes prices."""
    path, _, _ = demo
    again = tmp_path / "again.csv"
    build_demo_catalog(photo_subset, again, seed=SEED, in_stock_rate=0.95)
    assert again.read_bytes() == path.read_bytes()
    other = tmp_path / "other.csv"
    build_demo_catalog(photo_subset, other, seed=SEED + 1, in_stock_rate=0.95)
    assert [r["price"] for r in read_rows(other)] != [r["price"] for r in read_rows(path)]


def test_image_uris_point_at_the_photos(demo, photo_subset):
    """image_uri is relative to the source folder and names an existing photo of the same id."""
    _, rows, _ = demo
    for row in rows:
        assert row["image_uri"] == f"images/{row['item_id']}.jpg"
        assert (photo_subset / row["image_uri"]).is_file()


def test_prices_positive_and_formatted(demo):
    """Prices are positive, at least 99, written with two decimals and ending in 9."""
    _, rows, _ = demo
    for row in rows:
        assert re.fullmatch(r"\d+9\.00", row["price"]), row["price"]
        assert float(row["price"]) >= 99


def test_same_article_type_shares_a_base_price(demo):
    """Within an articleType prices spread only by the per-item factor (sigma 0.35), far less than across types."""
    _, rows, _ = demo
    by_type: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_type[row["article_type"]].append(float(row["price"]))
    groups = {t: p for t, p in by_type.items() if len(p) >= 3}
    assert len(groups) >= 5
    for article_type, prices in groups.items():
        # exp(+-4 sigma) around one base: a ratio above exp(8 * 0.35) ~ 16 is not one shared base.
        assert max(prices) / min(prices) < math.exp(8 * 0.35), article_type
    # Medians differ between types (there is a per-type base at all).
    medians = sorted(sorted(p)[len(p) // 2] for p in groups.values())
    assert medians[-1] / medians[0] > 1.5


def test_price_is_base_times_item_factor():
    """For a fixed item, switching articleType scales its price by the same ratio for every item (a shared base)."""
    ratios = []
    for n in range(60):
        item = str(10000 + n)
        a = synthetic_price(item, "Tshirts", seed=SEED)
        b = synthetic_price(item, "Watches", seed=SEED)
        if a >= 500 and b >= 500:  # away from the 99 floor, where rounding to 10 is under 2 %
            ratios.append(a / b)
    assert len(ratios) >= 20
    assert max(ratios) / min(ratios) < 1.05
    # And the item factor really varies between items.
    prices = [synthetic_price(str(10000 + n), "Tshirts", seed=SEED) for n in range(60)]
    assert len(set(prices)) > 30


def test_unlabelled_items_share_one_base():
    """Items without a label all use the same (empty) articleType base: None and '' price alike."""
    for item in ("1", "20000", "99999"):
        assert synthetic_price(item, None, seed=SEED) == synthetic_price(item, "", seed=SEED)


def test_labels_map_to_columns(demo, photo_subset):
    """Labelled rows take subCategory, articleType, title and first word of title as brand; unlabelled rows are empty."""
    _, rows, _ = demo
    labels = read_labels(photo_subset)
    labelled = [r for r in rows if r["item_id"] in labels]
    unlabelled = [r for r in rows if r["item_id"] not in labels]
    assert len(labelled) == 150 and len(unlabelled) == 50
    for row in labelled:
        label = labels[row["item_id"]]
        assert row["category"] == label["subCategory"]
        assert row["article_type"] == label["articleType"]
        assert row["title"] == label["productDisplayName"]
        assert row["brand"] == label["productDisplayName"].split(" ")[0]
    for row in unlabelled:
        assert (row["category"], row["article_type"], row["title"], row["brand"]) == ("", "", "", "")
    assert all(r["updated_at"] == UPDATED_AT for r in rows)


def test_in_stock_flags(demo, photo_subset, tmp_path):
    """in_stock is 'true'/'false', mostly true at rate 0.95, all false at 0 and all true at 1."""
    _, rows, _ = demo
    flags = [r["in_stock"] for r in rows]
    assert set(flags) <= {"true", "false"}
    assert 0.85 <= flags.count("true") / len(flags) < 1.0
    for rate, expected in ((0.0, "false"), (1.0, "true")):
        out = tmp_path / f"rate{rate}.csv"
        build_demo_catalog(photo_subset, out, seed=SEED, in_stock_rate=rate)
        assert {r["in_stock"] for r in read_rows(out)} == {expected}


def test_item_ids_filter(demo, photo_subset, tmp_path):
    """Only the requested ids that have photos are written, in id order, with the same values as the full build."""
    _, rows, _ = demo
    full = {r["item_id"]: r for r in rows}
    wanted = [rows[10]["item_id"], rows[3]["item_id"], rows[199]["item_id"], "no-such-item"]
    out = tmp_path / "sub" / "subset.csv"  # parent folder created on demand
    written = build_demo_catalog(photo_subset, out, seed=SEED, item_ids=iter(wanted))
    subset = read_rows(out)
    assert written == 3
    assert [r["item_id"] for r in subset] == sorted(wanted[:3])
    assert all(r == full[r["item_id"]] for r in subset)
    assert build_demo_catalog(photo_subset, tmp_path / "none.csv", seed=SEED, item_ids=[]) == 0
    assert read_rows(tmp_path / "none.csv") == []


def test_scaled_catalog_adds_distinct_variant_photos(demo, photo_subset, tmp_path):
    """copies=4: every item three more times, as mirrored / cropped / both photos of its own, same labels."""
    _, rows, _ = demo
    originals = rows[:3]
    scaled = scaled_catalog(originals, photo_subset, tmp_path / "photos", copies=4, seed=SEED)
    assert [r["item_id"] for r in scaled] == [r["item_id"] for r in originals] + [
        f"{r['item_id']}-v{copy}" for copy in (2, 3, 4) for r in originals
    ]
    photos = [(tmp_path / "photos" / r["image_uri"]).read_bytes() for r in scaled]
    assert len(set(photos)) == len(photos)
    assert photos[:3] == [(photo_subset / r["image_uri"]).read_bytes() for r in originals]
    for variant in scaled[3:]:
        original = next(r for r in originals if variant["item_id"].startswith(r["item_id"] + "-v"))
        assert {k: variant[k] for k in ("category", "article_type", "title", "brand")} == {
            k: original[k] for k in ("category", "article_type", "title", "brand")
        }
        assert re.fullmatch(r"\d+9\.00", variant["price"]) and variant["in_stock"] in ("true", "false")

    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as photo:
            return np.asarray(photo.convert("RGB"), dtype=np.float64)

    for position, original in enumerate(originals):
        photo = pixels(photo_subset / original["image_uri"])
        mirrored = pixels(tmp_path / "photos" / scaled[3 + position]["image_uri"])
        # JPEG re-encoding moves pixels a little: the variant matches the mirror image far better than the photo.
        assert np.abs(mirrored - photo[:, ::-1]).mean() < 0.5 * np.abs(mirrored - photo).mean()
        assert pixels(tmp_path / "photos" / scaled[6 + position]["image_uri"]).shape == photo.shape
    with pytest.raises(ValueError, match="copies must be between 1 and 4"):
        scaled_catalog(originals, photo_subset, tmp_path / "other", copies=5, seed=SEED)
