"""Index: exact cosine top-k of every item among the items of its category and price band."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema
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
    n = vectors.shape[0]
    queries = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    exact = np.ascontiguousarray(vectors, dtype=np.float64)
    neighbours, scores, recomputed = top_k_of_queries(
        exact[queries], exact, min(k, n - 1), own=queries, block_rows=block_rows, extra=extra
    )
    return neighbours, scores.astype(np.float32), recomputed


def top_k_of_queries(
    queries: np.ndarray,
    candidates: np.ndarray,
    kk: int,
    *,
    own: np.ndarray,
    block_rows: int = 1024,
    extra: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact float64 top-``kk`` candidates of every query row, a query never listing its own row.

    The search of ``top_k_blocked`` for queries that need not be candidates themselves (a block
    of a partition split in blocks: see ``similar_items``).

    Parameters
    ----------
    queries : numpy.ndarray
        ``(m, d)`` L2-normalised rows.
    candidates : numpy.ndarray
        ``(n, d)`` L2-normalised rows.
    kk : int
        Entries per query, at most ``n``.
    own : numpy.ndarray
        ``(m,)`` the candidate row that is the query itself, or -1.
    block_rows : int
        Query rows per search.
    extra : int, optional
        Candidates searched beyond ``kk + 1`` (default 8).

    Returns
    -------
    neighbours : numpy.ndarray
        ``(m, kk)`` candidate rows, best first (score, then the lower row); -1 past the end of a
        short list (a query with its own row among ``n <= kk`` candidates).
    scores : numpy.ndarray
        Matching float64 similarities; ``-inf`` past the end. Every score is summed the same way
        (``numpy.einsum``), whichever pass found it, so lists from different blocks merge in the
        order one search over all the candidates would give.
    recomputed : int
        Rows that needed the full float64 pass.
    """
    import faiss

    m, n = queries.shape[0], candidates.shape[0]
    if kk <= 0 or m == 0:
        return np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.float64), 0
    exact = np.ascontiguousarray(candidates, dtype=np.float64)
    asked = np.ascontiguousarray(queries, dtype=np.float64)
    rounded = exact.astype(np.float32)
    # Bound on |float32 score - float64 score| for any pair: rounding the inputs and a d-term float32
    # sum, each at most (d + 2) units of 2^-24 of |a| |b|; doubled for safety.
    norm = float(max(np.linalg.norm(exact, axis=1).max(), np.linalg.norm(asked, axis=1).max()))
    error = 2.0 * (exact.shape[1] + 2) * 2.0**-24 * norm * norm
    found = min(n, kk + 1 + (8 if extra is None else extra))
    index = faiss.IndexFlatIP(rounded.shape[1])
    index.add(rounded)
    neighbours = np.empty((m, kk), dtype=np.int64)
    scores = np.empty((m, kk), dtype=np.float64)
    recomputed = 0
    for start in range(0, m, block_rows):
        block = np.arange(start, min(start + block_rows, m))
        bound, found_rows = index.search(asked[block].astype(np.float32), found)
        best, best_scores = _ranked(asked[block], exact, found_rows, own[block], kk)
        # Safe: every row not among the candidates scores at most bound[-1] in float32, so at most
        # bound[-1] + error in float64, below the k-th candidate's score (or every row was a candidate).
        safe = (found == n) | (best_scores[:, -1] > bound[:, -1] + error)
        neighbours[block], scores[block] = best, best_scores
        for r in np.flatnonzero(~safe):
            sims = asked[block[r] : block[r] + 1] @ exact.T
            if own[block[r]] >= 0:
                sims[0, own[block[r]]] = -np.inf  # never your own neighbour
            picked, _ = best_per_row(sims, kk)
            neighbours[block[r]], scores[block[r]] = (a[0] for a in _ranked(asked[block[r : r + 1]], exact, picked, own[block[r : r + 1]], kk))
        recomputed += int((~safe).sum())
    return neighbours, scores, recomputed


def _ranked(
    queries: np.ndarray, candidates: np.ndarray, rows: np.ndarray, own: np.ndarray, kk: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``kk`` of each query's candidate ``rows`` by float64 score, then the lower row; own row and -1 left out."""
    left_out = (rows == own[:, None]) | (rows < 0)
    rescored = np.einsum("bd,bcd->bc", queries, candidates[np.maximum(rows, 0)])
    rescored[left_out] = -np.inf
    order = np.lexsort((rows, -rescored))[:, :kk]  # score descending, then the lower index
    best = np.take_along_axis(rows, order, axis=1)
    best_scores = np.take_along_axis(rescored, order, axis=1)
    best[~np.isfinite(best_scores)] = -1
    return best, best_scores


@dataclass(frozen=True)
class ApproximateSearch:
    """Approximate search for the partitions above ``above`` items (``index.approximate_*``).

    Each candidate block gets a faiss ``IndexIVFFlat`` (inner product, ``round(sqrt(n))``
    inverted lists, 10 k-means iterations on the block); ``nprobe`` lists are searched per query and the
    ``k + 1`` found are rescored in float64. Lists can miss true neighbours; ``index_recall``
    measures how many on a sample every run.
    """

    above: int
    nprobe: int
    recall_sample: float

    @classmethod
    def from_config(cls, index: Mapping[str, Any]) -> "ApproximateSearch | None":
        """The ``[index]`` settings; None when ``approximate_above`` is 0 (every list exact)."""
        above = int(index.get("approximate_above", 0))
        if above <= 0:
            return None
        nprobe, sample = int(index["approximate_nprobe"]), float(index["recall_sample"])
        if nprobe < 1 or not 0.0 < sample <= 1.0:
            raise ValueError(f"index.approximate_nprobe must be >= 1 and index.recall_sample in (0, 1], got {nprobe}, {sample}")
        return cls(above=above, nprobe=nprobe, recall_sample=sample)


def approximate_top_k(
    queries: np.ndarray, candidates: np.ndarray, kk: int, *, own: np.ndarray, nprobe: int, block_rows: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``kk`` candidates of every query row by an IVF search, rescored in float64.

    Same arguments and result layout as ``top_k_of_queries`` (without the recomputed count);
    ``nprobe`` inverted lists of ``round(sqrt(n))`` are searched per query.
    """
    import faiss

    m, n = queries.shape[0], candidates.shape[0]
    if kk <= 0 or m == 0:
        return np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.float64)
    exact = np.ascontiguousarray(candidates, dtype=np.float64)
    asked = np.ascontiguousarray(queries, dtype=np.float64)
    d = exact.shape[1]
    lists = max(1, int(round(math.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # unit vectors: centroids normalised too
    index.cp.niter = 10  # instead of 25: measured on a 41k-item block, the same recall and 2.3x less training
    index.verbose = False
    rounded = exact.astype(np.float32)
    index.train(rounded)  # faiss samples at most 256 points per list, seeded: the same block trains the same lists
    index.add(rounded)
    index.nprobe = min(nprobe, lists)
    neighbours = np.empty((m, kk), dtype=np.int64)
    scores = np.empty((m, kk), dtype=np.float64)
    for start in range(0, m, block_rows):
        block = np.arange(start, min(start + block_rows, m))
        _, found = index.search(asked[block].astype(np.float32), min(n, kk + 1))
        neighbours[block], scores[block] = _ranked(asked[block], exact, found, own[block], kk)
    return neighbours, scores


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


def _partition_top_k(k: int, block_rows: int) -> Callable[[pa.Table], pa.Table]:
    """Lists for the rows of one (category, band) group that need them (an ``applyInArrow`` function).

    Without the incremental flags every row gets a list. With them, a row gets one if it must
    (its own item or a neighbour changed) or if an entrant (an item new to the partition or
    with a new vector) scores at least its previous k-th score, or its list was short.
    """
    def top_k(group: pa.Table) -> pa.Table:
        _use_task_cores()
        group = group.sort_by("item_id")
        vectors = _vectors(group)
        n = group.num_rows
        if MUST_RECOMPUTE in group.column_names:
            wanted = _flags(group, MUST_RECOMPUTE)
            entrants = np.flatnonzero(_flags(group, ENTRANT))
            if len(entrants):
                sims = vectors @ vectors[entrants].T
                sims[entrants, np.arange(len(entrants))] = -np.inf
                best = sims.max(axis=1).astype(np.float32)
                short = pc.fill_null(group.column(PREVIOUS_LENGTH), 0).to_numpy() < min(k, n - 1)
                kth = pc.fill_null(group.column(PREVIOUS_KTH), np.inf).to_numpy().astype(np.float32)
                wanted |= short | (best >= kth)
            rows = np.flatnonzero(wanted)
        else:
            rows = np.arange(n)
        neighbours, scores = top_k_blocked(vectors, k, block_rows=block_rows, rows=rows)
        kk = neighbours.shape[1]
        source = pa.array(np.repeat(rows, kk))
        target = pa.array(neighbours.reshape(-1))
        return pa.table(
            {
                "category": group.column("category").take(source),
                "price_band": group.column("price_band").take(source),
                "item_id": group.column("item_id").take(source),
                "rank": pa.array(np.tile(np.arange(1, kk + 1, dtype=np.int32), len(rows))),
                "neighbour_id": group.column("item_id").take(target),
                "score": pa.array(scores.reshape(-1)),
                "neighbour_price": group.column("price").take(target),
                "model_version": group.column("model_version").take(source),
            },
            schema=_LIST_ARROW,
        )

    return top_k


def _flags(table: pa.Table, name: str) -> np.ndarray:
    """A boolean column as a numpy array, null as False."""
    return pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(bool)


def _with_lineage(lists: DataFrame, run_id: str, catalog_version: int) -> DataFrame:
    """List rows in the ``similar_items`` schema: lineage added in Spark, one literal per column."""
    return conform(
        lists.withColumn("run_id", F.lit(run_id)).withColumn("catalog_version", F.lit(catalog_version).cast("long")),
        SIMILAR_ITEMS,
    )


# List rows as the Python tasks return them: run_id and catalog_version are added in Spark.
_LIST_OUTPUT = T.StructType([f for f in SIMILAR_ITEMS.spark_schema.fields if f.name not in ("run_id", "catalog_version")])
_LIST_ARROW = to_arrow_schema(_LIST_OUTPUT)


def similar_items(
    embeddings: DataFrame,
    *,
    k: int,
    block_rows: int,
    run_id: str,
    catalog_version: int = 0,
    block_items: int = 0,
    partitions: DataFrame | None = None,
    approximate: ApproximateSearch | None = None,
) -> DataFrame:
    """Top-k look-alikes per item within its (category, price band), computed per partition in parallel.

    A partition of at most ``block_items`` items is one task. A bigger one is split by item-id
    hash into ``ceil(size / block_items)`` blocks; each task scores one (query block, candidate
    block) pair, and a second pass merges each item's per-block lists. So no task holds more than
    two blocks, both cores work on a big category, and the lists are exactly those of one task
    per partition (the float64 scores are summed the same way in every block; ties go to the
    lower ``neighbour_id``). With ``approximate``, the partitions above ``approximate.above``
    items take that path too, with an approximate search in each pair (see ``ApproximateSearch``).

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
    block_items : int
        Most items of a partition scored in one task; 0: never split.
    partitions : DataFrame, optional
        Rows whose (category, price_band) counts are the partition sizes (every item of every
        partition ``embeddings`` holds, e.g. the cached ``embeddings`` state); default ``embeddings``.
    approximate : ApproximateSearch, optional
        Search the partitions above its size approximately; default: every list exact.

    Returns
    -------
    DataFrame
        In the ``similar_items`` schema.
    """
    columns = ["category", "price_band", "item_id", "embedding", "price", "model_version"]
    columns += [c for c in (MUST_RECOMPUTE, ENTRANT, PREVIOUS_LENGTH, PREVIOUS_KTH) if c in embeddings.columns]
    items = embeddings.select(*columns)
    big = _split_partitions(items if partitions is None else partitions, block_items, approximate)
    whole = items if big is None else items.join(big, list(PARTITION_KEYS), "left_anti")
    lists = whole.groupBy(*PARTITION_KEYS).applyInArrow(_partition_top_k(k, block_rows), _LIST_OUTPUT)
    if big is not None:
        split = items.join(big, list(PARTITION_KEYS))
        lists = lists.unionByName(_block_pair_lists(split, k=k, block_rows=block_rows, approximate=approximate))
    return _with_lineage(lists, run_id, catalog_version)


# Columns of the block-pair rows (see _block_pair_lists).
BLOCKS = "_blocks"
QUERY_BLOCK = "_query_block"
CANDIDATE_BLOCK = "_candidate_block"
IS_QUERY = "_is_query"
PARTITION_SIZE = "_partition_size"
APPROXIMATE = "_approximate"
MERGE_BUCKET = "_merge_bucket"
_PAIR_COLUMNS = ["category", "price_band", "item_id", "embedding", "price", "model_version", BLOCKS, APPROXIMATE]


def _split_partitions(partitions: DataFrame, block_items: int, approximate: ApproximateSearch | None) -> DataFrame | None:
    """Partitions scored block pair by block pair, broadcast; None when there are none.

    Those above ``block_items`` items, or above ``approximate.above``. Columns: category,
    price_band, ``_blocks`` (``ceil(size / block_items)``, 1 when not split), ``_partition_size``
    and ``_approximate``.
    """
    limits = [limit for limit in (block_items, approximate.above if approximate else 0) if limit > 0]
    if not limits:
        return None
    size = F.col("count")
    blocks = F.ceil(size / block_items) if block_items > 0 else F.lit(1)
    sizes = (
        partitions.groupBy(*PARTITION_KEYS).count().where(size > min(limits))
        .select(
            *PARTITION_KEYS, blocks.cast("int").alias(BLOCKS), size.cast("int").alias(PARTITION_SIZE),
            (size > approximate.above if approximate else F.lit(False)).alias(APPROXIMATE),
        )
    )
    rows = sizes.collect()
    if not rows:
        return None
    for row in rows:
        log.info(
            "index: partition %s / band %s (%d items) in %d block(s)%s", row["category"], row["price_band"],
            row[PARTITION_SIZE], row[BLOCKS], ", approximate search" if row[APPROXIMATE] else "",
        )
    return F.broadcast(partitions.sparkSession.createDataFrame(rows, sizes.schema))


def _block_pairs(items: DataFrame, *, queries: Any, candidates: Any) -> DataFrame:
    """Every item as a query of each (own block, other block) pair and a candidate of each (other, own) pair.

    ``queries`` and ``candidates`` are Column conditions choosing which items take each role.
    """
    own = F.pmod(F.xxhash64("item_id"), F.col(BLOCKS)).cast("int")
    exploded = items.withColumn("_own", own).withColumn("_other", F.explode(F.sequence(F.lit(0), F.col(BLOCKS) - 1)))
    as_query = exploded.where(queries).select(
        *_PAIR_COLUMNS, F.col("_own").alias(QUERY_BLOCK), F.col("_other").alias(CANDIDATE_BLOCK), F.lit(True).alias(IS_QUERY)
    )
    as_candidate = exploded.where(candidates).select(
        *_PAIR_COLUMNS, F.col("_other").alias(QUERY_BLOCK), F.col("_own").alias(CANDIDATE_BLOCK), F.lit(False).alias(IS_QUERY)
    )
    return as_query.unionByName(as_candidate)


def _vectors(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of an Arrow table as one ``(rows, d)`` float64 array, without a Python object per row."""
    values = pc.list_flatten(table.column("embedding").combine_chunks()).to_numpy()
    return values.astype(np.float64).reshape(table.num_rows, -1)


def _pair_top_k(kk: int, block_rows: int, approximate: ApproximateSearch | None = None) -> Callable[[pa.Table], pa.Table]:
    """Top-``kk`` candidates of each query row of one block pair, with float64 scores (an ``applyInArrow`` function).

    Pairs of a partition flagged ``_approximate`` are searched with ``approximate`` when given.
    Arrow in and out: ids are taken and returned as Arrow arrays, never as Python strings.
    """
    def top_k(group: pa.Table) -> pa.Table:
        _use_task_cores()
        is_query = group.column(IS_QUERY).combine_chunks()
        queries = group.filter(is_query).sort_by("item_id")
        candidates = group.filter(pc.invert(is_query)).sort_by("item_id")
        n = candidates.num_rows
        if queries.num_rows == 0 or n == 0:
            return _PAIR_ARROW.empty_table()
        candidate_ids = candidates.column("item_id").combine_chunks()
        own = pc.index_in(queries.column("item_id"), value_set=candidate_ids).to_numpy(zero_copy_only=False)
        own = np.nan_to_num(own, nan=-1).astype(np.int64)  # null (not a candidate) -> -1
        if approximate is not None and group.column(APPROXIMATE)[0].as_py():
            neighbours, scores = approximate_top_k(
                _vectors(queries), _vectors(candidates), min(kk, n), own=own, nprobe=approximate.nprobe, block_rows=block_rows
            )
        else:
            neighbours, scores, _ = top_k_of_queries(
                _vectors(queries), _vectors(candidates), min(kk, n), own=own, block_rows=block_rows
            )
        source, slot = np.nonzero(neighbours >= 0)
        target = pa.array(neighbours[source, slot])
        source_rows = pa.array(source)
        return pa.table(
            {
                **{name: queries.column(name).take(source_rows) for name in ("category", "price_band", QUERY_BLOCK, BLOCKS, "item_id")},
                "neighbour_id": candidate_ids.take(target),
                "score": pa.array(scores[source, slot]),
                "neighbour_price": candidates.column("price").take(target),
                "model_version": queries.column("model_version").take(source_rows),
            },
            schema=_PAIR_ARROW,
        )

    return top_k


_PAIR_OUTPUT = T.StructType(
    [SIMILAR_ITEMS.spark_schema[c] for c in ("category", "price_band")]
    + [T.StructField(QUERY_BLOCK, T.IntegerType()), T.StructField(BLOCKS, T.IntegerType())]
    + [SIMILAR_ITEMS.spark_schema[c] for c in ("item_id", "neighbour_id")]
    + [T.StructField("score", T.DoubleType())]
    + [SIMILAR_ITEMS.spark_schema[c] for c in ("neighbour_price", "model_version")]
)
_PAIR_ARROW = to_arrow_schema(_PAIR_OUTPUT)


def _merged_lists(k: int) -> Callable[[pa.Table], pa.Table]:
    """Each item's best ``k`` over its per-block lists (an ``applyInArrow`` function).

    Order: float64 score descending, then the lower ``neighbour_id``. Sorted on integer codes,
    the ids compared only where scores tie: a pandas sort on the id strings spent much of a
    1M-item run making Python strings.
    """
    def merge(pairs: pa.Table) -> pa.Table:
        item = pc.dictionary_encode(pairs.column("item_id").combine_chunks()).indices.to_numpy()
        score = pairs.column("score").to_numpy()
        order = np.lexsort((-score, item))
        by_item, by_score = item[order], score[order]
        # Equal scores of one item (duplicate photos) go to the lower neighbour_id: ids ranked only then.
        if np.any((by_item[1:] == by_item[:-1]) & (by_score[1:] == by_score[:-1])):
            neighbour = pc.rank(pairs.column("neighbour_id").combine_chunks(), sort_keys="ascending", tiebreaker="dense")
            order = np.lexsort((neighbour.to_numpy(), -score, item))
            by_item = item[order]
        first = np.r_[True, by_item[1:] != by_item[:-1]]
        starts = np.flatnonzero(first)
        rows = len(order)
        rank = np.arange(rows) - np.repeat(starts, np.diff(np.r_[starts, rows])) + 1
        keep = rank <= k
        best = pairs.take(pa.array(order[keep]))
        return pa.table(
            {
                "category": best.column("category"),
                "price_band": best.column("price_band"),
                "item_id": best.column("item_id"),
                "rank": pa.array(rank[keep].astype(np.int32)),
                "neighbour_id": best.column("neighbour_id"),
                "score": best.column("score").cast(pa.float32()),
                "neighbour_price": best.column("neighbour_price"),
                "model_version": best.column("model_version"),
            },
            schema=_LIST_ARROW,
        )

    return merge


def _block_pair_lists(items: DataFrame, *, k: int, block_rows: int, approximate: ApproximateSearch | None = None) -> DataFrame:
    """List rows (without lineage) of the partitions split in blocks (``items`` carry ``_blocks``).

    With the incremental flags, a first pass over the pairs finds each item's best score against
    the entrants, so the rows that need a list are chosen by the same rule as in
    ``_partition_top_k`` (that pass is exact: the entrants are few); only those are queries of the
    second pass, searched with ``approximate`` in the partitions it covers.
    """
    pair_keys = [*PARTITION_KEYS, QUERY_BLOCK, CANDIDATE_BLOCK]
    wanted: Any = F.lit(True)
    if MUST_RECOMPUTE in items.columns:
        best_entrant = (
            _block_pairs(items, queries=F.lit(True), candidates=F.col(ENTRANT).eqNullSafe(True))
            .groupBy(*pair_keys).applyInArrow(_pair_top_k(1, block_rows), _PAIR_OUTPUT)
            .groupBy("item_id").agg(F.max("score").cast("float").alias("_best_entrant"))
        )
        items = items.join(best_entrant, "item_id", "left")
        short = F.coalesce(F.col(PREVIOUS_LENGTH), F.lit(0)) < F.least(F.lit(k), F.col(PARTITION_SIZE) - 1)
        entered = F.col("_best_entrant").isNotNull() & (short | (F.col("_best_entrant") >= F.col(PREVIOUS_KTH)))
        wanted = F.col(MUST_RECOMPUTE).eqNullSafe(True) | F.coalesce(entered, F.lit(False))
    return (
        _block_pairs(items, queries=wanted, candidates=F.lit(True))
        .groupBy(*pair_keys).applyInArrow(_pair_top_k(k, block_rows, approximate), _PAIR_OUTPUT)
        .transform(lambda pairs: _merged(pairs, k))
    )


def _merged(pairs: DataFrame, k: int) -> DataFrame:
    """The per-block lists merged into list rows (without lineage).

    One task per (partition, query block, item-id hash bucket), ``_blocks`` buckets: each task
    merges about one block's worth of queries' ``_blocks x k`` rows, so its memory does not grow
    with the partition.
    """
    bucket = F.pmod(F.xxhash64("item_id", F.lit("merge")), F.col(BLOCKS))
    return (
        pairs.withColumn(MERGE_BUCKET, bucket)
        .groupBy(*PARTITION_KEYS, QUERY_BLOCK, MERGE_BUCKET)
        .applyInArrow(_merged_lists(k), _LIST_OUTPUT)
    )


def index_recall(
    embeddings: DataFrame,
    lists: DataFrame,
    *,
    ks: tuple[int, ...],
    block_rows: int,
    block_items: int,
    approximate: ApproximateSearch,
    partitions: DataFrame | None = None,
) -> DataFrame | None:
    """Recall@k of the approximate lists against exact lists, per approximately searched partition.

    The items sampled are those of an approximate partition that have a list in ``lists`` and
    whose id hashes into the ``approximate.recall_sample`` share (``xxhash64(item_id, "recall")``:
    the same items every run). Their exact lists are computed block pair by block pair against
    every item of the partition.

    Parameters
    ----------
    embeddings, partitions
        As for ``similar_items`` (the run's candidates, and the rows that give partition sizes).
    lists : DataFrame
        The lists ``similar_items`` computed from ``embeddings`` (``similar_items`` schema).
    ks : tuple of int
        List lengths compared, each at most the lists' k.
    block_rows, block_items : int
        As for ``similar_items``.
    approximate : ApproximateSearch
        The search the lists came from.

    Returns
    -------
    DataFrame or None
        category, price_band, partition_items, k, items_sampled, recall_at_k; None when no
        partition was searched approximately.
    """
    items = embeddings.select(*[c for c in _PAIR_COLUMNS if c not in (BLOCKS, APPROXIMATE)])
    big = _split_partitions(items if partitions is None else partitions, block_items, approximate)
    if big is None:
        return None
    approximate_partitions = big.where(F.col(APPROXIMATE))
    in_sample = F.pmod(F.xxhash64("item_id", F.lit("recall")), F.lit(1_000_000)) < int(round(approximate.recall_sample * 1_000_000))
    listed = lists.select("item_id").distinct().withColumn("_listed", F.lit(True))
    items = items.join(approximate_partitions, list(PARTITION_KEYS)).join(listed, "item_id", "left")
    longest = max(ks)
    exact = (
        _block_pairs(items, queries=in_sample & F.col("_listed").eqNullSafe(True), candidates=F.lit(True))
        .groupBy(*PARTITION_KEYS, QUERY_BLOCK, CANDIDATE_BLOCK).applyInArrow(_pair_top_k(longest, block_rows), _PAIR_OUTPUT)
        .transform(lambda pairs: _merged(pairs, longest))
        .select(*PARTITION_KEYS, "item_id", "neighbour_id", F.col("rank").alias("_exact_rank"))
    )
    found = lists.select("item_id", "neighbour_id", F.col("rank").alias("_rank"))
    pairs = exact.join(found, ["item_id", "neighbour_id"], "left")
    sizes = approximate_partitions.select(*PARTITION_KEYS, F.col(PARTITION_SIZE).cast("long").alias("partition_items"))
    per_k = []
    for k in ks:
        per_item = (
            pairs.where(F.col("_exact_rank") <= k)
            .groupBy(*PARTITION_KEYS, "item_id")
            .agg((F.count(F.when(F.col("_rank") <= k, 1)) / F.count("*")).alias("_recall"))
        )
        per_k.append(
            per_item.groupBy(*PARTITION_KEYS)
            .agg(F.count("*").alias("items_sampled"), F.avg("_recall").alias("recall_at_k"))
            .withColumn("k", F.lit(k))
        )
    recall = per_k[0]
    for more in per_k[1:]:
        recall = recall.unionByName(more)
    return recall.join(sizes, list(PARTITION_KEYS))


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
    recall_staging_path: str | None = None,
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
    recall_staging_path : str, optional
        With ``index.approximate_above`` set, the ``index_recall`` rows of the partitions searched
        approximately are written (overwritten) here first (see ``index_recall``).
    full : bool
        Recompute every list (the published ones were computed under other list settings).

    Returns
    -------
    int
        Lists recomputed.
    """
    k = int(config["index"]["k"])
    if full:
        candidates, must = state, previous.select("item_id").distinct()
    else:
        candidates, must = _incremental_candidates(state, changes, previous)
    block_rows, block_items = int(config["index"]["block_rows"]), int(config["index"]["block_items"])
    approximate = ApproximateSearch.from_config(config["index"])
    lists = similar_items(
        candidates, k=k, block_rows=block_rows, run_id=run_id, catalog_version=catalog_version,
        block_items=block_items, partitions=state, approximate=approximate,
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if approximate is not None and recall_staging_path is not None:
            ks = tuple(sorted({min(int(config["index"]["quality_k"]), k), k}))
            recall = index_recall(
                candidates, lists, ks=ks, block_rows=block_rows, block_items=block_items, approximate=approximate,
                partitions=state,
            )
            if recall is not None:
                recall.withColumn("nprobe", F.lit(approximate.nprobe)).write.format("delta").mode("overwrite").save(recall_staging_path)
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


def _incremental_candidates(state: DataFrame, changes: DataFrame, previous: DataFrame) -> tuple[DataFrame, DataFrame]:
    """The rows of the partitions an item entered or left, with the refresh's flags, and the ``_must`` items.

    Flags (see ``_partition_top_k``): ``_must`` for changed items and the items whose list holds
    one; ``_entrant`` for items with a new vector; each item's previous list length and k-th score.
    """
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
    return candidates, must


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
