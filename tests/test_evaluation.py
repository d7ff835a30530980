"""articleType precision@k of the lists, and the random-list baseline, on hand-made tables."""

from __future__ import annotations

import pytest

from pyspark.testing import assertDataFrameEqual

from lookalike.evaluation import article_type_precision, partition_quality, random_list_precision

LISTS_SCHEMA = "item_id string, rank int, neighbour_id string"
CATALOG_SCHEMA = "item_id string, article_type string"


@pytest.fixture
def catalog(spark):
    rows = [("a", "Tshirts"), ("b", "Tshirts"), ("c", "Shirts"), ("d", None), ("e", "Tshirts")]
    return spark.createDataFrame(rows, CATALOG_SCHEMA)


def test_precision_ignores_unlabelled_neighbours_and_counts_them_in_strict(spark, catalog):
    """a: neighbours b (hit), c (miss), d (unlabelled) -> 1/2, strict 1/3; c: a, b both misses -> 0."""
    lists = spark.createDataFrame(
        [("a", 1, "b"), ("a", 2, "c"), ("a", 3, "d"), ("c", 1, "a"), ("c", 2, "b")], LISTS_SCHEMA
    )
    result = article_type_precision(lists, catalog, k=3)
    assert result == pytest.approx({"precision": (1 / 2 + 0) / 2, "strict_precision": (1 / 3 + 0) / 2, "items": 2})


def test_precision_only_reads_the_top_k(spark, catalog):
    """With k=1 only rank 1 counts: a -> b is a hit, e -> c a miss."""
    lists = spark.createDataFrame([("a", 1, "b"), ("a", 2, "c"), ("e", 1, "c"), ("e", 2, "a")], LISTS_SCHEMA)
    result = article_type_precision(lists, catalog, k=1)
    assert result == pytest.approx({"precision": 0.5, "strict_precision": 0.5, "items": 2})


def test_items_without_labelled_neighbours_are_not_evaluated(spark, catalog):
    """An unlabelled item and an item whose only neighbour is unlabelled give no evidence."""
    lists = spark.createDataFrame([("d", 1, "a"), ("b", 1, "d"), ("e", 1, "a")], LISTS_SCHEMA)
    result = article_type_precision(lists, catalog, k=5)
    assert result == pytest.approx({"precision": 1.0, "strict_precision": 1.0, "items": 1})


def test_random_baseline_is_the_chance_of_a_same_type_neighbour_in_the_partition(spark, catalog):
    """Partition P1 holds a, b, e (Tshirts) and c (Shirts): Tshirts items match 2/3, c matches 0 -> 6/12."""
    embeddings = spark.createDataFrame(
        [("a", "Topwear", 1), ("b", "Topwear", 1), ("c", "Topwear", 1), ("e", "Topwear", 1), ("d", "Topwear", 1)],
        "item_id string, category string, price_band int",
    )
    assert random_list_precision(embeddings, catalog) == pytest.approx((3 * (2 / 3) + 0) / 4)


def test_partition_quality_measures_each_partition_on_its_own(spark, catalog):
    """Band 1 (a, b, c): a scores 1/2 (strict 1/2), c scores 0 -> 1/4; band 2 (e): its one labelled neighbour a is a hit.

    Random baseline: band 1 holds a, b (Tshirts) and c (Shirts): (2 x 1/2 + 0) / 3; band 2 has
    one labelled item (e) and no baseline.
    """
    embeddings = spark.createDataFrame(
        [("a", "Topwear", 1), ("b", "Topwear", 1), ("c", "Topwear", 1), ("e", "Topwear", 2), ("d", "Topwear", 2)],
        "item_id string, category string, price_band int",
    )
    lists = spark.createDataFrame(
        [("Topwear", 1, "a", 1, "b"), ("Topwear", 1, "a", 2, "c"), ("Topwear", 1, "c", 1, "a"),
         ("Topwear", 1, "c", 2, "b"), ("Topwear", 2, "e", 1, "a"), ("Topwear", 2, "e", 2, "d")],
        "category string, price_band int, item_id string, rank int, neighbour_id string",
    )
    expected = spark.createDataFrame(
        [("Topwear", 1, 2, 0.25, 0.25, 1 / 3), ("Topwear", 2, 1, 1.0, 0.5, None)],
        "category string, price_band int, items_evaluated long, precision_at_k double, "
        "strict_precision_at_k double, random_list_precision double",
    )
    assertDataFrameEqual(partition_quality(lists, embeddings, catalog, k=2), expected)
