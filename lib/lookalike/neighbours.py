"""Index: exact cosine top-k of every item among the items of its category and price band."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from lookalike.tables import conform, ensure_table, read_table, table_path
from schemas import EMBEDDINGS, SIMILAR_ITEMS

log = logging.getLogger(__name__)

PARTITION_KEYS = ("category", "price_band")


def top_k_blocked(vectors: np.ndarray, k: int, *, block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product neighbours of every row among the other rows.

    The similarity matrix is computed ``block_rows`` rows at a time (one BLAS matrix product
    each), so memory is ``block_rows x n`` rather than ``n x n``. Ties are broken by the lower
    row index, so the result is deterministic.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(n, d)`` float32, L2-normalised rows (inner product = cosine).
    k : int
        Neighbours per row; fewer when ``n - 1 < k``.
    block_rows : int
        Rows per matrix product.

    Returns
    -------
    neighbours : numpy.ndarray
        ``(n, min(k, n - 1))`` row indices, most similar first.
    scores : numpy.ndarray
        Matching similarities, float32.
    """
    n = vectors.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    neighbours = np.empty((n, kk), dtype=np.int64)
    scores = np.empty((n, kk), dtype=np.float32)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sims = vectors[start:stop] @ vectors.T
        rows = np.arange(stop - start)
        sims[rows, rows + start] = -np.inf  # never your own neighbour
        # The kk-th largest score per row; everything above it is in, ties at it go to lower indices.
        kth = -np.partition(-sims, kk - 1, axis=1)[:, kk - 1 : kk]
        above = sims > kth
        at = sims == kth
        take_at = (kk - above.sum(axis=1, keepdims=True))
        chosen = above | (at & (np.cumsum(at, axis=1) <= take_at))
        index = np.nonzero(chosen)[1].reshape(stop - start, kk)  # ascending index within each row
        picked = np.take_along_axis(sims, index, axis=1)
        order = np.argsort(-picked, axis=1, kind="stable")  # stable: equal scores keep index order
        neighbours[start:stop] = np.take_along_axis(index, order, axis=1)
        scores[start:stop] = np.take_along_axis(picked, order, axis=1)
    return neighbours, scores


def _partition_top_k(k: int, block_rows: int, run_id: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def top_k(group: pd.DataFrame) -> pd.DataFrame:
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        vectors = np.stack(group["embedding"].to_numpy()).astype(np.float32)
        neighbours, scores = top_k_blocked(vectors, k, block_rows=block_rows)
        n, kk = neighbours.shape
        source = np.repeat(np.arange(n), kk)
        target = neighbours.reshape(-1)
        return pd.DataFrame(
            {
                "category": group["category"].iloc[0] if n else None,
                "price_band": group["price_band"].iloc[0] if n else None,
                "item_id": group["item_id"].to_numpy()[source],
                "rank": np.tile(np.arange(1, kk + 1, dtype=np.int32), n),
                "neighbour_id": group["item_id"].to_numpy()[target],
                "score": scores.reshape(-1),
                "neighbour_price": group["price"].to_numpy()[target],
                "model_version": group["model_version"].to_numpy()[source],
                "run_id": run_id,
            }
        )

    return top_k


def similar_items(embeddings: DataFrame, *, k: int, block_rows: int, run_id: str) -> DataFrame:
    """Top-k look-alikes per item within its (category, price band), computed per partition in parallel.

    Parameters
    ----------
    embeddings : DataFrame
        Rows of the ``embeddings`` table.
    k, block_rows : int
        List length, and rows per BLAS block.
    run_id : str
        Recorded on every row.

    Returns
    -------
    DataFrame
        In the ``similar_items`` schema.
    """
    columns = ["category", "price_band", "item_id", "embedding", "price", "model_version"]
    return conform(
        embeddings.select(*columns)
        .groupBy(*PARTITION_KEYS)
        .applyInPandas(_partition_top_k(k, block_rows, run_id), SIMILAR_ITEMS.spark_schema),
        SIMILAR_ITEMS,
    )


def build_index(spark: SparkSession, config: Mapping[str, Any], *, run_id: str) -> int:
    """Compute ``similar_items`` from ``embeddings`` and overwrite the table.

    Returns
    -------
    int
        Rows written.
    """
    ensure_table(spark, config, SIMILAR_ITEMS)
    lists = similar_items(
        read_table(spark, config, EMBEDDINGS),
        k=int(config["index"]["k"]),
        block_rows=int(config["index"]["block_rows"]),
        run_id=run_id,
    )
    lists.write.format("delta").mode("overwrite").save(table_path(config, SIMILAR_ITEMS))
    written = read_table(spark, config, SIMILAR_ITEMS).count()
    log.info("index: %d neighbour rows written (k=%s)", written, config["index"]["k"])
    return written
