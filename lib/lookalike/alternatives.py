"""Lists derived from the embeddings: cheaper look-alikes, look-alikes in other categories, and
items whose photo the classifier puts in another category than the catalog does.

Each run recomputes them whole from the run's embeddings (exact search, like the index) and
publishes them with one MERGE per table that writes only the rows that changed, so their change
feed holds real changes only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.neighbours import top_k_allowed
from lookalike.tables import conform
from schemas import CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, MISCLASSIFIED_ITEMS, TableSchema

log = logging.getLogger(__name__)


def _ranks(query_rows: np.ndarray) -> np.ndarray:
    """1, 2, ... within each run of equal query rows (the pairs come grouped by query, best first)."""
    counts = np.bincount(query_rows) if len(query_rows) else np.zeros(0, dtype=np.int64)
    counts = counts[counts > 0]
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return (np.arange(len(query_rows)) - starts + 1).astype(np.int32)


def _scored_lineage(
    group: pd.DataFrame, queries: np.ndarray, scores: np.ndarray, run_id: str, catalog_version: int
) -> dict[str, Any]:
    """The score and lineage columns of list rows, the model version being the query item's."""
    return {
        "score": scores,
        "model_version": group["model_version"].to_numpy()[queries],
        "run_id": run_id,
        "catalog_version": catalog_version,
    }


def _cheaper_lists(
    k: int, in_stock_only: bool, block_rows: int, run_id: str, catalog_version: int
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per category: each item's top-k among the items of the category priced below it."""
    def cheaper(group: pd.DataFrame) -> pd.DataFrame:
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        vectors = np.stack(group["embedding"].to_numpy())
        price = group["price"].to_numpy(dtype=np.float64)
        # An unknown stock state (null) counts as in stock: only a known false excludes an item.
        buyable = ~group["in_stock"].eq(False).to_numpy() if in_stock_only else np.ones(len(group), dtype=bool)

        def allowed(rows: slice) -> np.ndarray:
            return (price[None, :] < price[rows, None]) & buyable[None, :]

        queries, found, scores = top_k_allowed(vectors, vectors, k, allowed, block_rows=block_rows)
        return pd.DataFrame(
            {
                "category": group["category"].to_numpy()[queries],
                "item_id": group["item_id"].to_numpy()[queries],
                "item_price": price[queries],
                "rank": _ranks(queries),
                "alternative_id": group["item_id"].to_numpy()[found],
                "alternative_price": price[found],
                "alternative_price_band": group["price_band"].to_numpy()[found],
                **_scored_lineage(group, queries, scores, run_id, catalog_version),
            }
        )

    return cheaper


def _cross_category_lists(
    k: int, candidates: Any, block_rows: int, run_id: str, catalog_version: int
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per category: each item's top-k among every item of the other categories (``candidates`` is broadcast)."""
    def cross(group: pd.DataFrame) -> pd.DataFrame:
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        ids, categories, prices, vectors = candidates.value
        category = group["category"].iloc[0]
        other = categories != category

        def allowed(rows: slice) -> np.ndarray:
            return np.broadcast_to(other, (rows.stop - rows.start, len(other)))

        queries, found, scores = top_k_allowed(
            np.stack(group["embedding"].to_numpy()), vectors, k, allowed, block_rows=block_rows
        )
        return pd.DataFrame(
            {
                "category": category,
                "item_id": group["item_id"].to_numpy()[queries],
                "rank": _ranks(queries),
                "neighbour_id": ids[found],
                "neighbour_category": categories[found],
                "neighbour_price": prices[found],
                **_scored_lineage(group, queries, scores, run_id, catalog_version),
            }
        )

    return cross


def cheaper_alternatives(
    state: DataFrame, catalog: DataFrame, *, k: int, in_stock_only: bool, block_rows: int, run_id: str,
    catalog_version: int,
) -> DataFrame:
    """For every item, the ``k`` most similar items of its category that cost less, computed per category in parallel.

    Parameters
    ----------
    state : DataFrame
        The run's ``embeddings`` rows.
    catalog : DataFrame
        ``catalog`` at the version the embeddings were computed from (for ``in_stock``).
    k : int
        Longest list; shorter when fewer cheaper items qualify (the cheapest item has none).
    in_stock_only : bool
        List only items not known to be out of stock.
    block_rows : int
        Query rows per BLAS block.
    run_id : str
        Recorded on every row.
    catalog_version : int
        Recorded on every row.

    Returns
    -------
    DataFrame
        In the ``cheaper_alternatives`` schema.
    """
    rows = state.select("category", "item_id", "embedding", "price", "price_band", "model_version").join(
        catalog.select("item_id", "in_stock"), "item_id", "left"
    )
    schema = CHEAPER_ALTERNATIVES.spark_schema
    lists = rows.groupBy("category").applyInPandas(
        _cheaper_lists(k, in_stock_only, block_rows, run_id, catalog_version), schema
    )
    return conform(lists, CHEAPER_ALTERNATIVES)


def cross_category_items(
    spark: SparkSession, state: DataFrame, *, k: int, block_rows: int, run_id: str, catalog_version: int
) -> DataFrame:
    """For every item, the ``k`` most similar items of the other categories.

    Every category's items are compared with the whole catalog, which is broadcast to the
    executors (item id, category, price and embedding: about ``items x (dim x 4 + 64)`` bytes).

    Parameters
    ----------
    spark : SparkSession
    state : DataFrame
        The run's ``embeddings`` rows.
    k, block_rows : int
        List length, and query rows per BLAS block.
    run_id : str
        Recorded on every row.
    catalog_version : int
        Recorded on every row.

    Returns
    -------
    DataFrame
        In the ``cross_category_items`` schema.
    """
    columns = state.select("item_id", "category", "price", "embedding").orderBy("item_id").toPandas()
    vectors = (
        np.stack(columns["embedding"].to_numpy()).astype(np.float32) if len(columns) else np.zeros((0, 0), np.float32)
    )
    candidates = spark.sparkContext.broadcast(
        (columns["item_id"].to_numpy(), columns["category"].to_numpy(), columns["price"].to_numpy(np.float64), vectors)
    )
    lists = state.select("category", "item_id", "embedding", "model_version").groupBy("category").applyInPandas(
        _cross_category_lists(k, candidates, block_rows, run_id, catalog_version), CROSS_CATEGORY_ITEMS.spark_schema
    )
    return conform(lists, CROSS_CATEGORY_ITEMS)


def misclassified_items(state: DataFrame, *, classes: Sequence[str], run_id: str, catalog_version: int) -> DataFrame:
    """Items whose given category is one of the classifier's ``classes`` but not its prediction.

    Items given a category the classifier never learnt (too few labelled items) cannot be
    judged and are left out.

    Returns
    -------
    DataFrame
        In the ``misclassified_items`` schema.
    """
    rows = state.where(
        F.col("given_category").isin(list(classes)) & (F.col("given_category") != F.col("predicted_category"))
    ).withColumn("run_id", F.lit(run_id)).withColumn("catalog_version", F.lit(catalog_version))
    return conform(rows, MISCLASSIFIED_ITEMS)


def derived_tables(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    state: DataFrame,
    catalog: DataFrame,
    classes: Sequence[str],
    run_id: str,
    catalog_version: int,
) -> list[tuple[TableSchema, DataFrame]]:
    """Every derived table of a run, from its embeddings and catalog.

    Returns
    -------
    list of (TableSchema, DataFrame)
        Each table and its full content for this run.
    """
    settings = config["alternatives"]
    block_rows = int(config["index"]["block_rows"])
    return [
        (CHEAPER_ALTERNATIVES, cheaper_alternatives(
            state, catalog, k=int(settings["cheaper_k"]), in_stock_only=bool(settings["cheaper_in_stock_only"]),
            block_rows=block_rows, run_id=run_id, catalog_version=catalog_version,
        )),
        (CROSS_CATEGORY_ITEMS, cross_category_items(
            spark, state, k=int(settings["cross_category_k"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version,
        )),
        (MISCLASSIFIED_ITEMS, misclassified_items(state, classes=classes, run_id=run_id, catalog_version=catalog_version)),
    ]


__all__ = ["cheaper_alternatives", "cross_category_items", "derived_tables", "misclassified_items"]
