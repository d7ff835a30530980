"""Cheaper alternatives, cross-category look-alikes, the misclassification table and list quality.

The exact search is checked against a brute-force sort on random vectors with ties; the
published tables of the session's refresh history (real photos, a real model, real Delta
tables) are checked against lists recomputed here in plain pandas from the published
embeddings and catalog, and against the rules shoppers rely on (every alternative costs less).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.alternatives import _ranks
from lookalike.model_store import load_manifest
from lookalike.neighbours import top_k_allowed
from lookalike.publish import published_table, register_published_views
from lookalike.evaluation import partition_quality
from lookalike.tables import read_table, register_tables
from schemas import (
    CATALOG,
    CHEAPER_ALTERNATIVES,
    CROSS_CATEGORY_ITEMS,
    EMBEDDINGS,
    LIST_QUALITY,
    MISCLASSIFIED_ITEMS,
    SIMILAR_ITEMS,
)


def brute_force(queries: np.ndarray, candidates: np.ndarray, k: int, mask: np.ndarray) -> list[tuple[int, int, float]]:
    """(query, candidate, score) by sorting every allowed pair on (-score, candidate index)."""
    sims = queries.astype(np.float64) @ candidates.astype(np.float64).T
    out = []
    for q in range(len(queries)):
        allowed = [c for c in range(len(candidates)) if mask[q, c]]
        for c in sorted(allowed, key=lambda c: (-sims[q, c], c))[:k]:
            out.append((q, c, np.float32(sims[q, c])))
    return out


@pytest.mark.parametrize("block_rows", [1, 3, 64])
def test_top_k_allowed_matches_a_brute_force_sort(block_rows):
    """Same pairs, order and scores as sorting, ties to the lower index, short lists where few are allowed."""
    rng = np.random.default_rng(4)
    # Few distinct vectors, so many scores tie exactly.
    base = rng.normal(size=(6, 8))
    candidates = base[rng.integers(0, 6, size=40)]
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    queries = candidates[:13]
    mask = rng.random((13, 40)) < 0.3
    mask[0] = False  # a query with nothing allowed gets no list
    mask[1, :] = False
    mask[1, 5] = True  # ... and one with a single candidate, a list of one
    rows = lambda block: mask[block]  # noqa: E731
    query_rows, found, scores = top_k_allowed(queries, candidates, 5, rows, block_rows=block_rows)
    expected = brute_force(queries, candidates, 5, mask)
    assert list(zip(query_rows.tolist(), found.tolist())) == [(q, c) for q, c, _ in expected]
    np.testing.assert_array_equal(scores, np.array([s for _, _, s in expected], dtype=np.float32))
    assert 0 not in query_rows and (query_rows == 1).sum() == 1


def test_ranks_count_within_each_query():
    assert _ranks(np.array([0, 0, 0, 2, 5, 5])).tolist() == [1, 2, 3, 1, 1, 2]
    assert _ranks(np.array([], dtype=np.int64)).tolist() == []


def published(spark, history, table):
    return published_table(spark, history.incremental, table, history.night2.publication)


@pytest.fixture(scope="module")
def night2_items(spark, history) -> pd.DataFrame:
    """Night-2's published embeddings with each item's stock state, sorted by item id."""
    embeddings = published(spark, history, EMBEDDINGS)
    stock = published(spark, history, CATALOG).select("item_id", "in_stock")
    frame = embeddings.join(stock, "item_id", "left").orderBy("item_id").toPandas()
    frame["vector"] = [np.asarray(v, dtype=np.float64) for v in frame["embedding"]]
    return frame


def reference_lists(items: pd.DataFrame, k: int, allowed) -> list[tuple]:
    """(item, rank, neighbour, score) for every item, by sorting its allowed candidates on (-score, id)."""
    vectors = np.stack(items["vector"].to_numpy())
    sims = vectors @ vectors.T
    rows = []
    for i, item in items.iterrows():
        candidates = [j for j in range(len(items)) if j != i and allowed(item, items.iloc[j])]
        best = sorted(candidates, key=lambda j: (-sims[i, j], items["item_id"].iloc[j]))[:k]
        rows += [(i, rank, j, float(sims[i, j])) for rank, j in enumerate(best, start=1)]
    return rows


def test_cheaper_alternatives_are_the_most_similar_cheaper_in_stock_items(spark, history, night2_items):
    """Equal to lists sorted by hand; every alternative is in the same category, cheaper and not out of stock."""
    k = int(history.incremental["alternatives"]["cheaper_k"])
    items = night2_items

    def cheaper(item, other) -> bool:
        buyable = pd.isna(other["in_stock"]) or bool(other["in_stock"])  # unknown stock counts as in stock
        return other["category"] == item["category"] and other["price"] < item["price"] and buyable

    expected = spark.createDataFrame(
        [
            (items["category"][i], items["item_id"][i], float(items["price"][i]), rank, items["item_id"][j],
             float(items["price"][j]), int(items["price_band"][j]), score)
            for i, rank, j, score in reference_lists(items, k, cheaper)
        ],
        "category string, item_id string, item_price double, rank int, alternative_id string, "
        "alternative_price double, alternative_price_band int, score double",
    )
    actual = published(spark, history, CHEAPER_ALTERNATIVES)
    assertDataFrameEqual(actual.select(*expected.columns).withColumn("score", F.col("score").cast("double")),
                         expected, atol=1e-5)
    # The rules shoppers rely on, checked against the published tables directly.
    lookup = published(spark, history, EMBEDDINGS).select(
        F.col("item_id").alias("alternative_id"), F.col("category").alias("alternative_category"),
        F.col("price").alias("catalog_price"),
    )
    joined = actual.join(lookup, "alternative_id")
    assert joined.count() == actual.count()
    assert joined.where("alternative_category <> category OR catalog_price <> alternative_price").count() == 0
    assert actual.where("alternative_price >= item_price").count() == 0
    out_of_stock = items.loc[items["in_stock"].eq(False), "item_id"].tolist()
    assert out_of_stock, "the demo catalog marks some items out of stock; without them the stock rule is untested"
    assert actual.where(F.col("alternative_id").isin(out_of_stock)).count() == 0
    # The cheapest item of each category has no cheaper alternative; most others do.
    cheapest = items.loc[items.groupby("category")["price"].idxmin(), "item_id"].tolist()
    assert actual.where(F.col("item_id").isin(cheapest)).count() == 0
    assert actual.select("item_id").distinct().count() >= len(items) // 2


def test_cross_category_items_are_the_most_similar_items_of_other_categories(spark, history, night2_items):
    """Equal to lists sorted by hand over every other category; no neighbour shares the item's category."""
    k = int(history.incremental["alternatives"]["cross_category_k"])
    items = night2_items
    expected = spark.createDataFrame(
        [
            (items["category"][i], items["item_id"][i], rank, items["item_id"][j], items["category"][j], score)
            for i, rank, j, score in reference_lists(items, k, lambda a, b: a["category"] != b["category"])
        ],
        "category string, item_id string, rank int, neighbour_id string, neighbour_category string, score double",
    )
    actual = published(spark, history, CROSS_CATEGORY_ITEMS)
    assertDataFrameEqual(actual.select(*expected.columns).withColumn("score", F.col("score").cast("double")),
                         expected, atol=1e-5)
    assert actual.where("neighbour_category = category").count() == 0
    assert actual.groupBy("item_id").count().where(f"count <> {k}").count() == 0  # every item, a full list


def test_misclassified_items_are_the_known_categories_the_model_disagrees_with(spark, history):
    """Exactly the items given a category the classifier learnt and predicted as another one."""
    embeddings = published(spark, history, EMBEDDINGS)
    classes = load_manifest(spark, history.incremental, history.night2.publication.model_version).classes
    expected = embeddings.where(F.col("given_category").isin(classes) & (F.col("given_category") != F.col("predicted_category")))
    actual = published(spark, history, MISCLASSIFIED_ITEMS)
    columns = ["item_id", "given_category", "predicted_category", "confidence", "price", "image_hash", "model_version"]
    assertDataFrameEqual(actual.select(*columns), expected.select(*columns))
    # Non-vacuous both ways: the test profile's 4-epoch classifier gets some items wrong and some right.
    labelled = embeddings.where(F.col("given_category").isin(classes)).count()
    assert 0 < actual.count() < labelled


def test_published_views_serve_the_derived_tables(spark, history):
    """``published_<table>`` in the SQL database reads the version the publication names.

    The cross-category view adds each neighbour's price from the same run's embeddings (the
    table holds none, so a price change rewrites no list).
    """
    config, publication = history.incremental, history.night2.publication
    register_published_views(spark, config, publication)
    database = config["storage"]["database"]
    for table in (CHEAPER_ALTERNATIVES, MISCLASSIFIED_ITEMS):
        assertDataFrameEqual(
            spark.table(f"{database}.published_{table.name}"), published_table(spark, config, table, publication)
        )
    view = spark.table(f"{database}.published_{CROSS_CATEGORY_ITEMS.name}")
    prices = published(spark, history, EMBEDDINGS).select(
        F.col("item_id").alias("neighbour_id"), F.col("price").alias("neighbour_price")
    )
    cross = published_table(spark, config, CROSS_CATEGORY_ITEMS, publication)
    assert "neighbour_price" not in cross.columns
    assert view.columns == [*cross.columns[:5], "neighbour_price", *cross.columns[5:]]
    assertDataFrameEqual(view, cross.join(prices, "neighbour_id").select(*view.columns))


def readme_sql_statements() -> list[str]:
    """The statements of the README's SQL example blocks, in order."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    statements = [re.sub(r"--[^\n]*", "", s).strip() for block in blocks for s in block.split(";")]
    return [s for s in statements if s]


def test_readme_sql_examples_run_on_the_published_tables(spark, history):
    """Every query of the README's SQL blocks runs; the misclassification one returns what its table says."""
    config, publication = history.incremental, history.night2.publication
    register_tables(spark, config)
    register_published_views(spark, config, publication)
    statements = readme_sql_statements()
    assert len(statements) == 6
    database = config["storage"]["database"]  # the README's queries name the default database, lookalike
    results = [spark.sql(statement.replace("lookalike.", f"{database}.")).collect() for statement in statements]
    misclassified = results[next(i for i, s in enumerate(statements) if "published_misclassified_items" in s)]
    confident = published(spark, history, MISCLASSIFIED_ITEMS).where("confidence > 0.9").toPandas()
    expected = sorted(confident["confidence"].round(2), reverse=True)[:20]  # ties may come in any order
    assert [r["confidence"] for r in misclassified] == pytest.approx(expected, abs=0.011)
    assert {r["item_id"] for r in misclassified} <= set(confident["item_id"])


def test_every_run_records_its_list_quality_per_partition(spark, history):
    """night-2's rows in list_quality are the per-partition precision of night-2's published lists."""
    config, publication = history.incremental, history.night2.publication
    k = min(int(config["index"]["quality_k"]), int(config["index"]["k"]))
    expected = partition_quality(
        published(spark, history, SIMILAR_ITEMS), published(spark, history, EMBEDDINGS),
        published(spark, history, CATALOG), k=k,
    )
    recorded = read_table(spark, config, LIST_QUALITY).where(F.col("run_id") == "night-2")
    assertDataFrameEqual(recorded.drop("run_id", "model_version", "k", "measured_at"), expected)
    assert {(r["model_version"], r["k"]) for r in recorded.collect()} == {(publication.model_version, k)}
    assert expected.count() >= 5  # one row per partition with a labelled item to measure
