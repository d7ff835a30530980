"""Index: exact cosine top-k of every item among the items of its category and price band."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from lookalike.scoring import DELETE_FLAG, PREVIOUS_BAND, PREVIOUS_CATEGORY, VECTOR_CHANGED
from lookalike.tables import conform
from schemas import SIMILAR_ITEMS, TableSchema

log = logging.getLogger(__name__)

PARTITION_KEYS = ("category", "price_band")


def top_k_blocked(
    vectors: np.ndarray, k: int, *, block_rows: int = 1024, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product neighbours of every row (or of ``rows``) among the other rows.

    Candidates come from a float32 search (faiss ``IndexFlatIP``: BLAS products and a heap
    selection in C++), ``k + 9`` per row; they are rescored in float64 and sorted by (score,
    lower index). A row's list is taken from its candidates only when the float32 error bound
    proves that no other row can reach its k-th float64 score; any other row (exact ties at the
    cut, say) is recomputed against every row in float64. So the result is the exact float64
    top-k whatever the float32 rounding, and a row's list does not depend on which other rows
    share its block: an incremental refresh that recomputes a few rows gets the lists a full
    rebuild would. Ties are broken by the lower row index, so the result is deterministic.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(n, d)`` L2-normalised rows (inner product = cosine).
    k : int
        Neighbours per row; fewer when ``n - 1 < k``.
    block_rows : int
        Query rows per search, so memory is ``block_rows x (k + 9) x d`` (``block_rows x n`` for the rows recomputed in full).
    rows : numpy.ndarray, optional
        Indices of the rows to compute lists for; default all.

    Returns
    -------
    neighbours : numpy.ndarray
        ``(len(rows), min(k, n - 1))`` row indices, most similar first.
    scores : numpy.ndarray
        Matching similarities, float32.
    """
    neighbours, scores, _ = candidate_top_k(vectors, k, block_rows=block_rows, rows=rows)
    return neighbours, scores


def candidate_top_k(
    vectors: np.ndarray, k: int, *, block_rows: int = 1024, rows: np.ndarray | None = None, extra: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``top_k_blocked``, also returning how many rows needed the full float64 pass.

    ``extra`` candidates beyond ``k + 1`` are searched per row (default 8: past the k-th, float32
    scores only have to clear the error bound, about 1.6e-5 at 128 dimensions).
    """
    import faiss

    n = vectors.shape[0]
    queries = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    m = len(queries)
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.float32), 0
    exact = np.ascontiguousarray(vectors, dtype=np.float64)
    rounded = np.ascontiguousarray(exact, dtype=np.float32)
    # Bound on |float32 score - float64 score| for any pair: rounding the inputs and a d-term float32
    # sum, each at most (d + 2) units of 2^-24 of |a| |b|; doubled for safety.
    norm = float(np.linalg.norm(exact, axis=1).max()) if n else 0.0
    error = 2.0 * (exact.shape[1] + 2) * 2.0**-24 * norm * norm
    found = min(n, kk + 1 + (8 if extra is None else extra))
    index = faiss.IndexFlatIP(rounded.shape[1])
    index.add(rounded)
    neighbours = np.empty((m, kk), dtype=np.int64)
    scores = np.empty((m, kk), dtype=np.float32)
    recomputed = 0
    for start in range(0, m, block_rows):
        block = queries[start : start + block_rows]
        bound, candidates = index.search(rounded[block], found)
        own = candidates == block[:, None]
        rescored = np.einsum("bd,bcd->bc", exact[block], exact[np.maximum(candidates, 0)])
        rescored[own | (candidates < 0)] = -np.inf
        order = np.lexsort((candidates, -rescored))  # score descending, then the lower index
        best = np.take_along_axis(candidates, order[:, :kk], axis=1)
        best_scores = np.take_along_axis(rescored, order[:, :kk], axis=1)
        # Safe: every row not among the candidates scores at most bound[-1] in float32, so at most
        # bound[-1] + error in float64, below the k-th candidate's score (or every row was a candidate).
        safe = (found == n) | (best_scores[:, -1] > bound[:, -1] + error)
        neighbours[start : start + len(block)] = best
        scores[start : start + len(block)] = best_scores.astype(np.float32)
        for r in np.flatnonzero(~safe):
            sims = exact[block[r : r + 1]] @ exact.T
            sims[0, block[r]] = -np.inf  # never your own neighbour
            neighbours[start + r], scores[start + r] = (a[0] for a in best_per_row(sims, kk))
        recomputed += int((~safe).sum())
    return neighbours, scores, recomputed


def best_per_row(sims: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of the ``kk`` largest entries of every row, best first.

    Ties are broken by the lower column index, so the result does not depend on how
    ``np.partition`` orders equal values.
    """
    rows = sims.shape[0]
    # The kk-th largest score per row; everything above it is in, ties at it go to lower indices.
    kth = -np.partition(-sims, kk - 1, axis=1)[:, kk - 1 : kk]
    above = sims > kth
    at = sims == kth
    take_at = kk - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1) <= take_at))
    index = np.nonzero(chosen)[1].reshape(rows, kk)  # ascending index within each row
    picked = np.take_along_axis(sims, index, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")  # stable: equal scores keep index order
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(picked, order, axis=1).astype(np.float32)


# Most cells of one query block's (rows x candidates) matrices: 4M float64 cells are 32 MB, so a
# task's memory stays bounded however big a category gets (at n = 400,000 a block has 10 rows).
BLOCK_CELLS = 1 << 22


def bounded_block_rows(block_rows: int, candidates: int) -> int:
    """``block_rows``, lowered so that a block of ``candidates`` columns holds at most ``BLOCK_CELLS`` cells."""
    return max(1, min(block_rows, BLOCK_CELLS // max(candidates, 1)))


def top_k_allowed(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    allowed: Callable[[slice], np.ndarray],
    *,
    block_rows: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k candidates of every query row among the candidates ``allowed`` says it may have.

    Parameters
    ----------
    queries : numpy.ndarray
        ``(m, d)`` L2-normalised rows.
    candidates : numpy.ndarray
        ``(n, d)`` L2-normalised rows.
    k : int
        Most neighbours per query; fewer when fewer candidates are allowed.
    allowed : callable
        Given an index array of query rows, a boolean ``(rows, n)`` mask of the candidates each may list.
    block_rows : int
        Query rows per matrix product, so memory is ``block_rows x n`` (fewer rows for a large
        ``n``: see ``bounded_block_rows``).

    Returns
    -------
    query_rows, candidate_rows : numpy.ndarray
        Flat pairs, each query's best first; ties go to the lower candidate index.
    scores : numpy.ndarray
        Matching similarities, float32 (products summed in float64, as in ``top_k_blocked``).
    """
    m, n = queries.shape[0], candidates.shape[0]
    kk = min(k, n)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if kk <= 0 or m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    candidates = np.ascontiguousarray(candidates, dtype=np.float64)
    block_rows = bounded_block_rows(block_rows, n)
    for start in range(0, m, block_rows):
        block = np.arange(start, min(start + block_rows, m))
        sims = queries[block] @ candidates.T
        sims[~allowed(block)] = -np.inf
        index, scores = best_per_row(sims, kk)
        keep = np.isfinite(scores)  # a row with fewer than kk allowed candidates gets a shorter list
        query_rows = np.broadcast_to(block[:, None], index.shape)
        found.append((query_rows[keep], index[keep], scores[keep]))
    return tuple(np.concatenate(parts) for parts in zip(*found))  # type: ignore[return-value]


# Per-item flags the partition function reads besides the embeddings columns.
MUST_RECOMPUTE = "_must"
ENTRANT = "_entrant"
PREVIOUS_LENGTH = "_previous_length"
PREVIOUS_KTH = "_previous_kth"


def _use_task_cores() -> None:
    """Let faiss use the cores Spark gave the task (``spark.task.cpus``), not every core: tasks run side by side."""
    import faiss
    from pyspark import TaskContext

    context = TaskContext.get()
    faiss.omp_set_num_threads(max(1, int(context.cpus())) if context is not None else 1)


def _partition_top_k(
    k: int, block_rows: int, run_id: str, catalog_version: int
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Lists for the rows of one (category, band) group that need them.

    Without the incremental flags every row gets a list. With them, a row gets one if it must
    (its own item or a neighbour changed) or if an entrant (an item new to the partition or
    with a new vector) scores at least its previous k-th score, or its list was short.
    """
    def top_k(group: pd.DataFrame) -> pd.DataFrame:
        _use_task_cores()
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        vectors = np.stack(group["embedding"].to_numpy()).astype(np.float64)
        n = len(group)
        if MUST_RECOMPUTE in group:
            wanted = group[MUST_RECOMPUTE].eq(True).to_numpy()
            entrants = np.flatnonzero(group[ENTRANT].eq(True).to_numpy())
            if len(entrants):
                sims = vectors @ vectors[entrants].T
                sims[entrants, np.arange(len(entrants))] = -np.inf
                best = sims.max(axis=1).astype(np.float32)
                short = group[PREVIOUS_LENGTH].fillna(0).to_numpy() < min(k, n - 1)
                kth = group[PREVIOUS_KTH].to_numpy(dtype=np.float32, na_value=np.inf)
                wanted |= short | (best >= kth)
            rows = np.flatnonzero(wanted)
        else:
            rows = np.arange(n)
        neighbours, scores = top_k_blocked(vectors, k, block_rows=block_rows, rows=rows)
        kk = neighbours.shape[1]
        source = np.repeat(rows, kk)
        target = neighbours.reshape(-1)
        return pd.DataFrame(
            {
                "category": group["category"].iloc[0] if n else None,
                "price_band": group["price_band"].iloc[0] if n else None,
                "item_id": group["item_id"].to_numpy()[source],
                "rank": np.tile(np.arange(1, kk + 1, dtype=np.int32), len(rows)),
                "neighbour_id": group["item_id"].to_numpy()[target],
                "score": scores.reshape(-1),
                "neighbour_price": group["price"].to_numpy()[target],
                "model_version": group["model_version"].to_numpy()[source],
                "run_id": run_id,
                "catalog_version": catalog_version,
            }
        )

    return top_k


def similar_items(
    embeddings: DataFrame, *, k: int, block_rows: int, run_id: str, catalog_version: int = 0
) -> DataFrame:
    """Top-k look-alikes per item within its (category, price band), computed per partition in parallel.

    Parameters
    ----------
    embeddings : DataFrame
        Rows of the ``embeddings`` table; with the columns ``_must``, ``_entrant``,
        ``_previous_length`` and ``_previous_kth`` only the rows that need a new list get one.
    k, block_rows : int
        List length, and rows per BLAS block.
    run_id : str
        Recorded on every row.
    catalog_version : int
        Version of ``catalog`` the embeddings were computed from, recorded on every row.

    Returns
    -------
    DataFrame
        In the ``similar_items`` schema.
    """
    columns = ["category", "price_band", "item_id", "embedding", "price", "model_version"]
    columns += [c for c in (MUST_RECOMPUTE, ENTRANT, PREVIOUS_LENGTH, PREVIOUS_KTH) if c in embeddings.columns]
    return conform(
        embeddings.select(*columns)
        .groupBy(*PARTITION_KEYS)
        .applyInPandas(_partition_top_k(k, block_rows, run_id, catalog_version), SIMILAR_ITEMS.spark_schema),
        SIMILAR_ITEMS,
    )


def stage_lists(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    state: DataFrame,
    changes: DataFrame,
    previous: DataFrame,
    run_id: str,
    catalog_version: int,
    staging_path: str,
    full: bool = False,
) -> int:
    """Write the ``similar_items`` rows that change to ``staging_path``.

    Recomputed: the lists of changed items; every list that holds a changed, moved or deleted
    item; and every list that an item new to its partition (or with a new photo or model) now
    enters. Only the partitions an item entered or left are read. Of the recomputed lists, those
    that differ from their previous version are staged whole; rows of old lists that the new
    lists do not overwrite are staged with ``_delete`` true.

    Parameters
    ----------
    state : DataFrame
        The new ``embeddings`` rows of every item.
    changes : DataFrame
        The staged embeddings changes (see ``scoring.stage_embeddings``).
    previous : DataFrame
        The published ``similar_items`` (empty for a first build).
    run_id, catalog_version
        Lineage written on recomputed rows.
    staging_path : str
        Delta folder written (overwritten) in one commit.
    full : bool
        Recompute every list (the published ones were computed under other list settings).

    Returns
    -------
    int
        Lists recomputed.
    """
    k = int(config["index"]["k"])
    changed_ids = changes.select("item_id")
    touched = (
        changes.where(~F.col(DELETE_FLAG)).select(*PARTITION_KEYS)
        .unionByName(changes.select(F.col(PREVIOUS_CATEGORY).alias("category"), F.col(PREVIOUS_BAND).alias("price_band")))
        .where(F.col("category").isNotNull())
        .distinct()
    )
    holding_changed = previous.join(changed_ids.withColumnRenamed("item_id", "neighbour_id"), "neighbour_id", "left_semi")
    must = (
        changes.where(~F.col(DELETE_FLAG)).select("item_id")
        .unionByName(holding_changed.select("item_id"))
        .distinct()
        .withColumn(MUST_RECOMPUTE, F.lit(True))
    )
    entrants = changes.where(~F.col(DELETE_FLAG) & F.col(VECTOR_CHANGED)).select("item_id").withColumn(ENTRANT, F.lit(True))
    previous_lists = previous.groupBy("item_id").agg(
        F.count("*").alias(PREVIOUS_LENGTH), F.min("score").alias(PREVIOUS_KTH)
    )
    candidates = (
        state.join(F.broadcast(touched), list(PARTITION_KEYS), "left_semi")
        .join(must, "item_id", "left")
        .join(entrants, "item_id", "left")
        .join(previous_lists, "item_id", "left")
    )
    if full:
        candidates, must = state, previous.select("item_id").distinct()
    lists = similar_items(
        candidates, k=k, block_rows=int(config["index"]["block_rows"]), run_id=run_id, catalog_version=catalog_version
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # Computed once here: the staged write reads the lists four times, and before they are
        # cached each reading stage would run the Python top-k again.
        recomputed = lists.select("item_id").distinct().count()
        replaced = must.select("item_id").unionByName(changes.where(F.col(DELETE_FLAG)).select("item_id"))
        staged = changed_list_rows(lists, previous, replaced=replaced, table=SIMILAR_ITEMS)
        staged.write.format("delta").mode("overwrite").save(staging_path)
    finally:
        lists.unpersist()
    log.info("index: %d lists recomputed (k=%d)", recomputed, k)
    return recomputed


def changed_list_rows(lists: DataFrame, previous: DataFrame, *, replaced: DataFrame, table: TableSchema) -> DataFrame:
    """The rows that make a published list table equal its new lists: changed lists whole, and deletions.

    A recomputed list is kept whole, and only if it differs from its previous version (lineage
    aside), so every row of a list carries the lineage of the run that last changed it. Old rows
    of the ``replaced`` items (and of every item with a new list) that no new row overwrites are
    kept with ``_delete`` true.

    Parameters
    ----------
    lists : DataFrame
        The recomputed lists, in ``table``'s schema (keyed by ``item_id`` and ``rank``); cache it
        first, it is read three times.
    previous : DataFrame
        The published lists.
    replaced : DataFrame
        ``item_id`` of items whose old rows go unless overwritten: recomputed and deleted items.
    table : TableSchema

    Returns
    -------
    DataFrame
        ``table``'s columns plus ``_delete``.
    """
    content = [c for c in table.column_names if c not in ("item_id", "run_id", "catalog_version")]
    new_content = _list_content(lists, content)
    old_content = _list_content(previous.join(lists.select("item_id").distinct(), "item_id", "left_semi"), content)
    changed = new_content.alias("n").join(old_content.alias("o"), "item_id", "left").where(
        ~F.col("n.list").eqNullSafe(F.col("o.list"))
    ).select("item_id")
    stale = (
        previous.join(replaced.unionByName(lists.select("item_id")).distinct(), "item_id", "left_semi")
        .join(lists.select("item_id", "rank"), ["item_id", "rank"], "left_anti")
        .withColumn(DELETE_FLAG, F.lit(True))
    )
    return lists.join(changed, "item_id", "left_semi").withColumn(DELETE_FLAG, F.lit(False)).unionByName(stale)


def _list_content(lists: DataFrame, columns: list[str]) -> DataFrame:
    """One row per item: its list rows (without lineage) as a sorted array, comparable with ``=``."""
    return lists.groupBy("item_id").agg(F.sort_array(F.collect_list(F.struct(*columns))).alias("list"))
