"""Price bands (fixed edges and per-category quantiles) and the Arrow batch-size arithmetic."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.scoring import arrow_batch_rows, assign_price_bands

SCHEMA = "item_id string, category string, price double"
BANDED = SCHEMA + ", price_band int"


def fixed_config(edges) -> dict:
    """A config with fixed price-band edges."""
    return {"index": {"price_bands": "fixed", "price_band_edges": edges, "quantile_bands": 4}}


def quantile_config(bands: int) -> dict:
    """A config with per-category quantile bands."""
    return {"index": {"price_bands": "quantile", "price_band_edges": [], "quantile_bands": bands}}


def test_fixed_edges_bands_whole_frame(spark):
    """Band = number of edges <= price: values on an edge go to the band above it."""
    rows = [
        ("a", "Shoes", 0.0, 0),
        ("b", "Shoes", 499.99, 0),
        ("c", "Shoes", 500.0, 1),  # on the first edge: upper band
        ("d", "Shoes", 999.0, 1),
        ("e", "Bags", 1000.0, 2),  # on the second edge
        ("f", "Bags", 1999.5, 2),
        ("g", "Bags", 2000.0, 3),
        ("h", "Bags", 3999.99, 3),
        ("i", "Watches", 4000.0, 4),  # on the last edge: top band
        ("j", "Watches", 1e9, 4),
    ]
    df = spark.createDataFrame([r[:3] for r in rows], SCHEMA)
    actual = assign_price_bands(df, fixed_config([500.0, 1000.0, 2000.0, 4000.0]))
    assertDataFrameEqual(actual, spark.createDataFrame(rows, BANDED))


def test_fixed_edges_from_config_override(spark, make_config):
    """Integer edges given as a command-line override band prices like float edges."""
    config = make_config("index.price_band_edges=[10, 20]")
    df = spark.createDataFrame([("a", "x", 9.0), ("b", "x", 10.0), ("c", "x", 19.0), ("d", "x", 20.0)], SCHEMA)
    expected = spark.createDataFrame([("a", "x", 9.0, 0), ("b", "x", 10.0, 1), ("c", "x", 19.0, 1), ("d", "x", 20.0, 2)], BANDED)
    assertDataFrameEqual(assign_price_bands(df, config), expected)


def test_fixed_no_edges_puts_everything_in_band_zero(spark):
    """With no edges there is a single band 0."""
    df = spark.createDataFrame([("a", "x", 1.0), ("b", "y", 1e6)], SCHEMA)
    expected = spark.createDataFrame([("a", "x", 1.0, 0), ("b", "y", 1e6, 0)], BANDED)
    assertDataFrameEqual(assign_price_bands(df, fixed_config([])), expected)


def nearest_rank_edges(prices: list[float], bands: int) -> list[float]:
    """Reference quantile edges: for q = 1/bands ... (bands-1)/bands, the smallest price p with
    at least q of the prices <= p (nearest-rank percentile, what an exact percentile_approx returns)."""
    ordered = sorted(prices)
    return [ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in (i / bands for i in range(1, bands))]


def reference_bands(rows: list[tuple[str, str, float]], bands: int) -> list[tuple[str, str, float, int]]:
    """Each row with its band computed from its own category's reference edges (edges <= price)."""
    by_category: dict[str, list[float]] = {}
    for _, category, price in rows:
        by_category.setdefault(category, []).append(price)
    edges = {c: nearest_rank_edges(p, bands) for c, p in by_category.items()}
    return [(i, c, p, sum(e <= p for e in edges[c])) for i, c, p in rows]


def test_quantile_bands_hand_worked(spark):
    """Quartile bands for 1..8 within one category: edges 2, 4, 6, and an edge value goes up a band."""
    rows = [(f"a{p}", "Shoes", float(p)) for p in range(1, 9)]
    df = spark.createDataFrame(rows, SCHEMA)
    bands = {1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3, 8: 3}
    expected = spark.createDataFrame([(i, c, p, bands[int(p)]) for i, c, p in rows], BANDED)
    actual = assign_price_bands(df, quantile_config(4)).select("item_id", "category", "price", "price_band")
    assertDataFrameEqual(actual, expected)


def test_quantile_bands_are_per_category(spark):
    """Each category gets its own edges: a cheap category and a dear one both span bands 0..n-1."""
    rows = (
        [(f"cheap{i}", "Socks", float(10 + 3 * i)) for i in range(12)]
        + [(f"dear{i}", "Watches", float(5000 + 700 * i)) for i in range(9)]
        + [("mid0", "Bags", 250.0), ("mid1", "Bags", 100.0), ("mid2", "Bags", 400.0), ("mid3", "Bags", 250.0)]
        + [("solo", "Belts", 42.0)]
    )
    df = spark.createDataFrame(rows, SCHEMA).repartition(3)
    actual = assign_price_bands(df, quantile_config(3)).select("item_id", "category", "price", "price_band")
    expected = spark.createDataFrame(reference_bands(rows, 3), BANDED)
    assertDataFrameEqual(actual, expected)
    spans = actual.groupBy("category").agg(F.min("price_band").alias("lo"), F.max("price_band").alias("hi"))
    bands_by_category = {r["category"]: (r["lo"], r["hi"]) for r in spans.collect()}
    assert bands_by_category["Socks"] == (0, 2)
    assert bands_by_category["Watches"] == (0, 2)


def test_quantile_bands_keep_every_row(spark):
    """Quantile banding neither drops nor duplicates rows (it joins per-category edges back)."""
    rows = [(f"i{n}", f"c{n % 3}", float((n * 37) % 101)) for n in range(30)]
    df = spark.createDataFrame(rows, SCHEMA)
    actual = assign_price_bands(df, quantile_config(4))
    assertDataFrameEqual(actual.select("item_id", "category", "price"), df)


def test_bad_mode_raises(spark):
    """An unknown index.price_bands value raises ValueError naming it."""
    df = spark.createDataFrame([("a", "x", 1.0)], SCHEMA)
    config = {"index": {"price_bands": "log", "price_band_edges": [1.0], "quantile_bands": 4}}
    with pytest.raises(ValueError, match="'log'"):
        assign_price_bands(df, config)


@pytest.mark.parametrize("edges", [[1000.0, 500.0], [100.0, 300.0, 200.0], [5.0, 4.0, 3.0, 2.0]])
def test_non_ascending_edges_raise(spark, edges):
    """Edges out of order raise ValueError instead of producing meaningless bands."""
    df = spark.createDataFrame([("a", "x", 1.0)], SCHEMA)
    with pytest.raises(ValueError, match="ascending"):
        assign_price_bands(df, fixed_config(edges))


@pytest.mark.parametrize(
    "image_size, target_bytes, max_rows, expected",
    [
        # 64*64*3*4 = 49,152 bytes a row; 32 MiB / 49,152 = 682.67 -> 682 (under the 1024 cap).
        (64, 33_554_432, 1024, 682),
        # 224*224*3*4 = 602,112 bytes a row; 32 MiB / 602,112 = 55.7 -> 55.
        (224, 33_554_432, 1024, 55),
        # 16*16*3*4 = 3,072 bytes a row; 32 MiB / 3,072 = 10,922 -> capped at 1024.
        (16, 33_554_432, 1024, 1024),
        # Exactly 10 rows' worth of bytes -> 10.
        (32, 10 * 32 * 32 * 3 * 4, 1000, 10),
        # One byte short of 10 rows -> 9 (rounds down, never over the target).
        (32, 10 * 32 * 32 * 3 * 4 - 1, 1000, 9),
        # Target smaller than one row still gives 1 row, never 0.
        (224, 1000, 1024, 1),
        (64, 0, 1024, 1),
        # max_rows of 1 wins over a large target.
        (8, 10**9, 1, 1),
    ],
)
def test_arrow_batch_rows_arithmetic(image_size, target_bytes, max_rows, expected):
    """Rows per batch = floor(target / (side*side*3*4 bytes)), clamped to [1, max_rows]."""
    rows = arrow_batch_rows(image_size=image_size, target_bytes=target_bytes, max_rows=max_rows)
    assert rows == expected
    assert isinstance(rows, int)


@pytest.mark.parametrize(
    "image_size, max_rows, multiple_of, expected",
    [
        (224, 1024, 16, 48),   # 55 rows fit: three model calls of 16
        (224, 1024, 55, 55),   # already a multiple
        (224, 1024, 64, 55),   # no room for one call of 64: left as it is (the call is padded)
        (16, 1024, 16, 1024),
        (16, 1000, 16, 992),
        (224, 1024, 1, 55),
    ],
)
def test_arrow_batch_rows_round_down_to_whole_model_calls(image_size, max_rows, multiple_of, expected):
    rows = arrow_batch_rows(image_size=image_size, target_bytes=33_554_432, max_rows=max_rows, multiple_of=multiple_of)
    assert rows == expected
