"""Benchmark: our exact per-partition top-k in Spark against faiss, scikit-learn and MLlib LSH.

    ./spark-submit.sh benchmarks/index_search.py [--items 10000 100000] [--k 20]
        [--plot docs/index_search.png] [--report lookalike-data/benchmark-index/report.json]

Embeddings "synthesised from the real ones": ``--photos`` real photos of ``--source-dir`` (every
n-th file by id) are embedded once with the project's pretrained EfficientNet-Lite0 embedder at
``--image-size`` px and cached under ``--work`` (git-ignored). Those 1,280-d features are
standardised per dimension (as the scorer does) and projected on their first ``--dim`` principal
components (128 = ``model.embedding_dim``). A catalog of N items then takes, per item, one real
vector plus Gaussian noise (norm ``--noise`` relative to the unit vector), L2-normalised, a
category (one holds 40 % of the items exactly, the other ``--categories - 1`` a Zipf tail) and a
price band (5 bands, each half as likely as the one below). Everything is seeded.

Methods, on the SAME vectors and the SAME (category, price_band) partitions, exact inner-product
top-k with the item itself left out:

- ``ours``: :func:`lookalike.neighbours.similar_items` on a DataFrame read from a Parquet file
  written beforehand, its rows written to Parquet: the time includes Spark's reading, shuffle,
  Arrow transfer and writing every list row (partitions above ``--block-items`` are scored block
  pair by block pair); the peak resident memory of the JVM and of the Python workers is sampled;
- ``faiss_flat``: ``faiss.IndexFlatIP`` per partition, one process, ``--threads`` OpenMP threads,
  on float32 arrays already in memory (split by partition beforehand, untimed);
- ``sklearn_brute``: ``NearestNeighbors(algorithm="brute", metric="cosine", n_jobs=--threads)``
  per partition, same arrays;
- ``mllib_lsh``: ``BucketedRandomProjectionLSH`` + ``approxSimilarityJoin`` (a self-join). MLlib
  joins on the hash buckets only, so the partition id is added to every hash value (the
  precomputed ``hashes`` column, which ``approxSimilarityJoin`` uses as given): only items of
  the same partition can meet. The distance threshold is the largest exact k-th neighbour
  distance (LSH is given the best threshold there is); the top k per item come from a window
  over the joined pairs; persisted and counted. Run only up to ``--lsh-max-items``
  items (it is very slow), once per ``--lsh`` configuration ``bucketLength:numHashTables``;
  recall@k against the exact lists.

Each method runs ``--repeats`` times per size (best time kept), after a warm-up of every
method on a small catalog. Ours' and faiss's score lists are compared (within 1e-5, so tie order
does not matter). It prints a table, the ratios against the targets (ours >= 0.5 x faiss flat
throughput; ours >= 20 x MLlib LSH at recall 1.0), writes a JSON report and, with ``--plot``,
a PNG of seconds against catalog size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("lookalike.benchmarks.index_search")

TOP_SHARE = 0.40                 # share of items in the biggest category
BANDS = 5
BAND_RATIO = 0.5                 # each price band is this times as likely as the one below
BAND_EDGES = (0.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)
MODEL_VERSION = "bench"
SCORE_TOLERANCE = 1e-5
FAISS_TARGET = 0.5
LSH_TARGET = 20.0
METHODS = ("ours", "faiss_flat", "sklearn_brute", "mllib_lsh")


# ---------------------------------------------------------------------------------------------
# Real vectors and the synthetic catalog
# ---------------------------------------------------------------------------------------------


def real_photo_paths(source_dir: Path, photos: int) -> list[Path]:
    """Every n-th photo of ``source_dir/images`` by numeric id, ``photos`` of them.

    Parameters
    ----------
    source_dir : pathlib.Path
        Folder with ``images/<id>.jpg``.
    photos : int
        How many to take.

    Returns
    -------
    list of pathlib.Path
        Deterministic: the same folder gives the same list.
    """
    paths = sorted((source_dir / "images").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if not paths:
        raise FileNotFoundError(f"no photos in {source_dir / 'images'}")
    step = max(1, len(paths) // photos)
    return paths[::step][:photos]


def lite0_features(source_dir: Path, *, photos: int, image_size: int, cache_dir: Path, batch_size: int = 32) -> np.ndarray:
    """Pretrained Lite0 pooled features (1,280-d, not normalised) of real photos, cached as ``.npy``.

    Parameters
    ----------
    source_dir : pathlib.Path
        The photo folder (``images/<id>.jpg``).
    photos, image_size : int
        Photos embedded, and their side in pixels.
    cache_dir : pathlib.Path
        Where ``lite0-<size>px-<photos>.npy`` is kept; reused when present.
    batch_size : int
        Photos per inference call.

    Returns
    -------
    numpy.ndarray
        ``(photos, 1280)`` float32.
    """
    cache = cache_dir / f"lite0-{image_size}px-{photos}.npy"
    if cache.is_file():
        return np.load(cache)
    import tensorflow as tf

    from lookalike.images import decode_image
    from lookalike.models import build_lite0_embedder

    paths = real_photo_paths(source_dir, photos)
    start = time.perf_counter()
    model = build_lite0_embedder(image_size=image_size)
    chunks = []
    for i in range(0, len(paths), batch_size):
        batch = np.stack([decode_image(p.read_bytes(), image_size) for p in paths[i : i + batch_size]])
        chunks.append(model(tf.constant(batch, tf.float32), training=False).numpy())
    features = np.concatenate(chunks).astype(np.float32)
    log.info("embedded %d real photos with Lite0 at %d px in %.1f s", len(paths), image_size, time.perf_counter() - start)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, features)
    return features


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32."""
    x = np.asarray(x, dtype=np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def project(features: np.ndarray, dim: int) -> np.ndarray:
    """Standardise every dimension, keep the first ``dim`` principal components, L2-normalise.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n, D)`` raw features.
    dim : int
        Output dimension; at most ``min(n, D)``; 0 keeps the standardised features whole.

    Returns
    -------
    numpy.ndarray
        ``(n, dim)`` unit float32 rows.
    """
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    if dim:
        if dim > min(x.shape):
            raise ValueError(f"--dim {dim} exceeds min(photos, features) = {min(x.shape)}")
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:dim].T
    return l2_normalise(x)


@dataclass
class Catalog:
    """A synthetic catalog: item ``i`` has id ``item_ids[i]`` (zero-padded, so string order = index order).

    Attributes
    ----------
    vectors : numpy.ndarray
        ``(n, d)`` L2-normalised float32 embeddings.
    category : numpy.ndarray
        ``(n,)`` category names; ``cat-00`` holds ``TOP_SHARE`` of the items.
    price_band : numpy.ndarray
        ``(n,)`` int32 band, 0 the cheapest and most common.
    price : numpy.ndarray
        ``(n,)`` float64 price inside the band's range.
    """

    vectors: np.ndarray
    category: np.ndarray
    price_band: np.ndarray
    price: np.ndarray

    @property
    def size(self) -> int:
        """Number of items."""
        return int(self.vectors.shape[0])

    @property
    def item_ids(self) -> np.ndarray:
        """``i0000000``-style ids."""
        return np.char.add("i", np.char.zfill(np.arange(self.size).astype(str), 8))


def category_counts(n: int, categories: int, top_share: float = TOP_SHARE) -> np.ndarray:
    """Items per category: the first holds ``round(top_share * n)``, the others a Zipf (1/rank) tail.

    Parameters
    ----------
    n, categories : int
        Items, and categories (at least 2).
    top_share : float
        Share of the biggest category.

    Returns
    -------
    numpy.ndarray
        ``(categories,)`` int counts summing to ``n`` (largest remainders get the rounding).
    """
    tail = 1.0 / np.arange(1, categories)
    shares = np.concatenate([[top_share], (1.0 - top_share) * tail / tail.sum()])
    raw = shares * n
    counts = np.floor(raw).astype(np.int64)
    counts[0] = int(round(top_share * n))
    rest = n - counts.sum()
    order = 1 + np.argsort(-(raw[1:] - np.floor(raw[1:])), kind="stable")
    counts[order[: max(rest, 0)]] += 1
    return counts


def synthesise_catalog(
    real: np.ndarray, n: int, *, seed: int, categories: int = 20, noise: float = 0.6
) -> Catalog:
    """``n`` items: a real vector each plus Gaussian noise, with skewed categories and price bands.

    Parameters
    ----------
    real : numpy.ndarray
        ``(r, d)`` unit real vectors; each item copies one, drawn uniformly.
    n : int
        Items.
    seed : int
        The same seed and inputs give the same catalog.
    categories : int
        Number of categories; ``cat-00`` holds 40 % of items exactly, the rest a Zipf tail.
    noise : float
        Expected norm of the noise added to the unit vector before normalising.

    Returns
    -------
    Catalog
        Items in random category/band order (ids say nothing about partitions).
    """
    rng = np.random.default_rng(seed)
    d = real.shape[1]
    base = rng.integers(0, real.shape[0], size=n)
    vectors = l2_normalise(real[base] + rng.standard_normal((n, d)).astype(np.float32) * (noise / np.sqrt(d)))
    counts = category_counts(n, categories)
    names = np.array([f"cat-{c:02d}" for c in range(categories)])
    category = rng.permutation(np.repeat(names, counts))
    band_p = BAND_RATIO ** np.arange(BANDS)
    price_band = rng.choice(BANDS, size=n, p=band_p / band_p.sum()).astype(np.int32)
    low, high = np.array(BAND_EDGES[:-1]), np.array(BAND_EDGES[1:])
    price = np.round(low[price_band] + rng.uniform(0.01, 1.0, size=n) * (high - low)[price_band], 2)
    return Catalog(vectors, category, price_band, price)


def partition_rows(catalog: Catalog) -> list[np.ndarray]:
    """Row indices of every (category, price_band) partition, ascending within each.

    Returns
    -------
    list of numpy.ndarray
        Partitions by (category, band), biggest first.
    """
    keys = np.char.add(np.char.add(catalog.category.astype(str), "/"), catalog.price_band.astype(str))
    order = np.argsort(keys, kind="stable")
    _, starts = np.unique(keys[order], return_index=True)
    parts = [np.sort(p) for p in np.split(order, starts[1:])]
    return sorted(parts, key=len, reverse=True)


def sum_squared_sizes(parts: Sequence[np.ndarray]) -> int:
    """Sum over partitions of the partition size squared: the pairs an exact search scores."""
    return int(sum(len(p) ** 2 for p in parts))


def write_parquet(catalog: Catalog, path: Path) -> None:
    """The catalog as rows of the ``embeddings`` columns ``similar_items`` reads, one Parquet file.

    Parameters
    ----------
    catalog : Catalog
        Items.
    path : pathlib.Path
        File written (replaced).
    """
    n, d = catalog.vectors.shape
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(catalog.vectors.reshape(-1), pa.float32()), d)
    table = pa.table({
        "item_id": pa.array(catalog.item_ids),
        "category": pa.array(catalog.category.astype(str)),
        "price_band": pa.array(catalog.price_band, pa.int32()),
        "embedding": embedding.cast(pa.list_(pa.float32())),
        "price": pa.array(catalog.price, pa.float64()),
        "model_version": pa.array([MODEL_VERSION] * n),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=65536)


# ---------------------------------------------------------------------------------------------
# Neighbour lists: ``(n, k)`` global row indices (-1 padded) and scores (NaN padded)
# ---------------------------------------------------------------------------------------------


@dataclass
class Lists:
    """Every item's neighbour list, most similar first.

    Attributes
    ----------
    neighbours : numpy.ndarray
        ``(n, k)`` int64 row indices into the catalog; -1 where the list is shorter than k.
    scores : numpy.ndarray
        ``(n, k)`` float32 inner products; NaN where the list is shorter.
    """

    neighbours: np.ndarray
    scores: np.ndarray


def empty_lists(n: int, k: int) -> Lists:
    """Lists of ``n`` items, all empty."""
    return Lists(np.full((n, k), -1, dtype=np.int64), np.full((n, k), np.nan, dtype=np.float32))


def lists_from_pairs(n: int, k: int, item: np.ndarray, rank: np.ndarray, neighbour: np.ndarray, score: np.ndarray) -> Lists:
    """Lists from flat (item row, 1-based rank, neighbour row, score) rows."""
    lists = empty_lists(n, k)
    keep = rank <= k
    lists.neighbours[item[keep], rank[keep] - 1] = neighbour[keep]
    lists.scores[item[keep], rank[keep] - 1] = score[keep]
    return lists


def drop_self(rows: np.ndarray, found: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From ``k + 1`` results per query (its own row among them, as a rule), keep ``k`` others.

    Parameters
    ----------
    rows : numpy.ndarray
        ``(m,)`` the queries' own local indices.
    found, scores : numpy.ndarray
        ``(m, k + 1)`` local indices (-1 for none) and scores from a search of the partition.
    k : int
        List length wanted (at most ``m - 1``).

    Returns
    -------
    tuple of numpy.ndarray
        ``(m, k)`` indices and scores, in the order found.
    """
    own = found == rows[:, None]
    # A query whose own row is missing (ties pushed it out) loses its last result instead.
    own[~own.any(axis=1), -1] = True
    keep = ~own
    return found[keep].reshape(len(rows), -1)[:, :k], scores[keep].reshape(len(rows), -1)[:, :k]


def faiss_lists(catalog: Catalog, parts: Sequence[np.ndarray], k: int, *, threads: int) -> Lists:
    """Exact top-k per partition with ``faiss.IndexFlatIP`` (one index per partition).

    Parameters
    ----------
    catalog : Catalog
        Items.
    parts : sequence of numpy.ndarray
        Partition row indices.
    k : int
        List length (shorter in partitions of ``k`` items or fewer).
    threads : int
        OpenMP threads faiss may use.

    Returns
    -------
    Lists
        In catalog row space.
    """
    import faiss

    faiss.omp_set_num_threads(threads)
    lists = empty_lists(catalog.size, k)
    for rows in parts:
        kk = min(k, len(rows) - 1)
        if kk <= 0:
            continue
        x = np.ascontiguousarray(catalog.vectors[rows])
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        scores, found = index.search(x, kk + 1)
        found, scores = drop_self(np.arange(len(rows)), found, scores, kk)
        lists.neighbours[rows, :kk] = rows[found]
        lists.scores[rows, :kk] = scores
    return lists


def sklearn_lists(catalog: Catalog, parts: Sequence[np.ndarray], k: int, *, threads: int) -> Lists:
    """Exact top-k per partition with scikit-learn ``NearestNeighbors(algorithm="brute", metric="cosine")``.

    Parameters are those of :func:`faiss_lists`; ``threads`` is ``n_jobs``. Scores are
    ``1 - cosine distance``.
    """
    from sklearn.neighbors import NearestNeighbors

    lists = empty_lists(catalog.size, k)
    for rows in parts:
        kk = min(k, len(rows) - 1)
        if kk <= 0:
            continue
        x = catalog.vectors[rows]
        search = NearestNeighbors(n_neighbors=kk + 1, algorithm="brute", metric="cosine", n_jobs=threads).fit(x)
        distances, found = search.kneighbors(x)
        found, distances = drop_self(np.arange(len(rows)), found, distances, kk)
        lists.neighbours[rows, :kk] = rows[found]
        lists.scores[rows, :kk] = 1.0 - distances
    return lists


def row_of(item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Catalog rows of ``i00000123``-style ids."""
    return np.char.lstrip(np.asarray(item_ids).astype(str), "i").astype(np.int64)


def ours_lists(
    spark, parquet_path: Path, n: int, k: int, *, block_rows: int, block_items: int, out_path: Path, approximate=None
) -> tuple[float, Lists, dict[str, float]]:
    """Run :func:`lookalike.neighbours.similar_items` on the Parquet rows and write its rows to Parquet.

    Parameters
    ----------
    spark : SparkSession
        The session.
    parquet_path : pathlib.Path
        Written by :func:`write_parquet`.
    n, k, block_rows, block_items : int
        Items, list length, BLAS block rows and ``index.block_items`` (partitions above it are
        scored block pair by block pair).
    out_path : pathlib.Path
        Parquet folder the list rows are written to (overwritten).
    approximate : lookalike.neighbours.ApproximateSearch, optional
        Search the partitions above its size approximately (default: every list exact).

    Returns
    -------
    seconds : float
        Read, shuffle, top-k in the Python workers, and every list row written to ``out_path``:
        the index stage end to end, less the Delta commit.
    lists : Lists
        The result, read back from ``out_path`` by the driver's Python (untimed; not through the JVM).
    peak_mb : dict
        Peak memory seen during the timed part (see :class:`PeakMemory`): of the JVM (driver and
        executors, local mode) and of the largest single Python worker.
    """
    from lookalike.neighbours import similar_items

    with PeakMemory() as peak:
        start = time.perf_counter()
        similar_items(
            spark.read.parquet(str(parquet_path)), k=k, block_rows=block_rows, run_id="bench", catalog_version=0,
            block_items=block_items, approximate=approximate,
        ).write.mode("overwrite").parquet(str(out_path))
        seconds = time.perf_counter() - start
    frame = pq.read_table(out_path, columns=["item_id", "rank", "neighbour_id", "score"]).to_pandas()
    log.info("ours: %d list rows in %.2f s, peak memory %s MB", len(frame), seconds, peak.megabytes)
    lists = lists_from_pairs(
        n, k, row_of(frame["item_id"].to_numpy()), frame["rank"].to_numpy(np.int64),
        row_of(frame["neighbour_id"].to_numpy()), frame["score"].to_numpy(np.float32),
    )
    return seconds, lists, peak.megabytes


class PeakMemory:
    """Samples the memory of the JVM and of Spark's Python workers (this driver left out).

    ``megabytes`` after the block: for ``jvm`` (the ``java`` process) and ``python_worker`` (the
    largest Python process under it), the peak resident set (``*_rss``) and its anonymous part
    (``*_anon``: ``RssAnon`` of ``/proc/<pid>/status``, the heap and other private memory;
    the rest of the resident set is file pages, e.g. memory-mapped shuffle files, which the
    kernel can drop). Sampled every ``interval`` seconds, so a shorter peak can be missed.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.megabytes: dict[str, float] = {f"{kind}_{part}": 0.0 for kind in ("jvm", "python_worker") for part in ("rss", "anon")}
        self._stop = None
        self._thread = None

    @staticmethod
    def _anonymous_mb(pid: int) -> float:
        """``RssAnon`` of a process in MB (0 where /proc does not give it)."""
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        # Under spark-submit the JVM started this driver; under pytest this process started the JVM.
        root = me.parent() if me.parent() is not None and "java" in me.parent().name() else me
        while not self._stop.wait(self.interval):
            for child in [root, *root.children(recursive=True)]:
                if child.pid == me.pid:
                    continue
                try:
                    kind = "jvm" if "java" in child.name() else "python_worker" if "python" in child.name() else None
                    if kind:
                        rss = child.memory_info().rss / 2**20
                        self.megabytes[f"{kind}_rss"] = max(self.megabytes[f"{kind}_rss"], rss)
                        self.megabytes[f"{kind}_anon"] = max(self.megabytes[f"{kind}_anon"], self._anonymous_mb(child.pid))
                except psutil.Error:  # the process ended between listing and reading it
                    continue

    def __enter__(self) -> "PeakMemory":
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.megabytes = {key: round(value) for key, value in self.megabytes.items()}


def lsh_lists(
    spark, parquet_path: Path, n: int, k: int, *, bucket_length: float, tables: int, threshold: float, seed: int = 7
) -> tuple[float, Lists]:
    """MLlib ``BucketedRandomProjectionLSH`` + ``approxSimilarityJoin`` within partitions, top k per item.

    Euclidean distance between unit vectors is ``sqrt(2 - 2 cos)``, monotone in the cosine, so
    the k nearest are the k most similar. The partition id is added (times a large offset) to
    every hash value of the precomputed ``hashes`` column, which ``approxSimilarityJoin`` joins
    on as given, so items of different partitions never collide.

    Parameters
    ----------
    spark : SparkSession
        The session.
    parquet_path : pathlib.Path
        Written by :func:`write_parquet`.
    n, k : int
        Items and list length.
    bucket_length : float
        Width of a hash bucket (in projection units; unit vectors project into [-1, 1]).
    tables : int
        Hash tables (OR-amplification: a pair is a candidate if it shares a bucket in any).
    threshold : float
        Largest Euclidean distance kept from the join.
    seed : int
        Random projections' seed.

    Returns
    -------
    seconds : float
        Fit, hashing, join, top-k window and materialisation (persist + count).
    lists : Lists
        The approximate lists (scores = ``1 - dist² / 2``).
    """
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.storagelevel import StorageLevel

    # |hash| <= 1 / bucket_length for unit vectors and unit projections; keep partitions apart.
    offset = float(2 ** int(np.ceil(np.log2(4.0 / bucket_length + 4.0))))
    start = time.perf_counter()
    frame = spark.read.parquet(str(parquet_path))
    keys = frame.select("category", "price_band").distinct().withColumn(
        "_pid", F.row_number().over(Window.orderBy("category", "price_band")).cast("double")
    )
    items = frame.join(F.broadcast(keys), ["category", "price_band"]).select(
        "item_id", "_pid", array_to_vector("embedding").alias("features")
    )
    model = BucketedRandomProjectionLSH(
        inputCol="features", outputCol="hashes", bucketLength=bucket_length, numHashTables=tables, seed=seed
    ).fit(items)
    hashed = model.transform(items).withColumn(
        "hashes",
        F.transform("hashes", lambda h: array_to_vector(F.array(vector_to_array(h)[0] + F.col("_pid") * offset))),
    )
    pairs = model.approxSimilarityJoin(hashed, hashed, threshold, distCol="dist").select(
        F.col("datasetA.item_id").alias("item_id"), F.col("datasetB.item_id").alias("neighbour_id"), "dist",
        (F.col("datasetA._pid") == F.col("datasetB._pid")).alias("same"),
    ).where(F.col("item_id") != F.col("neighbour_id"))
    ranked = pairs.withColumn(
        "rank", F.row_number().over(Window.partitionBy("item_id").orderBy("dist", "neighbour_id"))
    ).where(F.col("rank") <= k).persist(StorageLevel.MEMORY_AND_DISK)
    rows = ranked.count()
    seconds = time.perf_counter() - start
    try:
        result = ranked.toPandas()
    finally:
        ranked.unpersist()
    if not result["same"].all():
        raise AssertionError("LSH join paired items of different partitions")
    log.info("mllib_lsh bucketLength=%g tables=%d: %d list rows in %.2f s", bucket_length, tables, rows, seconds)
    dist = result["dist"].to_numpy(np.float64)
    return seconds, lists_from_pairs(
        n, k, row_of(result["item_id"].to_numpy()), result["rank"].to_numpy(np.int64),
        row_of(result["neighbour_id"].to_numpy()), (1.0 - dist**2 / 2.0).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------


def recall_at_k(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over items of |approximate list ∩ exact list| / |exact list| (items with an empty exact list left out).

    Parameters
    ----------
    exact, approx : numpy.ndarray
        ``(n, k)`` neighbour rows, -1 padded.

    Returns
    -------
    float
        In [0, 1]; 1.0 when every exact neighbour was found. NaN if no item has a list.
    """
    exact, approx = np.asarray(exact), np.asarray(approx)
    recalls = []
    for want, got in zip(exact, approx):
        want = want[want >= 0]
        if len(want):
            recalls.append(len(np.intersect1d(want, got[got >= 0])) / len(want))
    return float(np.mean(recalls)) if recalls else float("nan")


def compare_lists(a: Lists, b: Lists) -> dict[str, float]:
    """How two exact results agree: score lists within a tolerance, and identical id lists.

    Returns
    -------
    dict
        ``max_score_difference`` (over every rank; lengths must match), ``scores_equal`` (within
        ``SCORE_TOLERANCE``), ``share_same_ids`` (items whose neighbour ids match in order).
    """
    same_length = bool(np.array_equal(a.neighbours >= 0, b.neighbours >= 0))
    listed = a.neighbours >= 0
    difference = float(np.max(np.abs(a.scores[listed] - b.scores[listed]), initial=0.0)) if same_length else float("inf")
    return {
        "max_score_difference": difference,
        "scores_equal": bool(same_length and difference <= SCORE_TOLERANCE),
        "share_same_ids": float(np.mean(np.all(a.neighbours == b.neighbours, axis=1))),
    }


def timed(function: Callable[[], Lists]) -> tuple[float, Lists]:
    """Wall seconds of one call and its result."""
    start = time.perf_counter()
    lists = function()
    return time.perf_counter() - start, lists


def parse_lsh(configs: str) -> list[tuple[float, int]]:
    """``"1.0:4,2.0:8"`` -> ``[(1.0, 4), (2.0, 8)]`` (bucketLength:numHashTables)."""
    out = []
    for part in filter(None, (p.strip() for p in configs.split(","))):
        length, tables = part.split(":")
        out.append((float(length), int(tables)))
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def measure_size(
    spark, real: np.ndarray, n: int, args: argparse.Namespace, *, lsh: Sequence[tuple[float, int]], repeats: int
) -> dict:
    """Every method on one synthetic catalog of ``n`` items; seconds are the best of ``repeats``."""
    catalog = synthesise_catalog(real, n, seed=args.seed, categories=args.categories, noise=args.noise)
    parts = partition_rows(catalog)
    path = Path(args.work).resolve() / f"catalog-{n}.parquet"
    write_parquet(catalog, path)
    k = args.k
    seconds: dict[str, float] = {}
    best_ours = best_faiss = None
    peak_mb: dict[str, float] = {}
    sk = None
    for _ in range(repeats):
        s, lists, peak = ours_lists(
            spark, path, n, k, block_rows=args.block_rows, block_items=args.block_items,
            out_path=Path(args.work).resolve() / f"lists-{n}.parquet",
        )
        peak_mb = {key: max(value, peak_mb.get(key, 0.0)) for key, value in peak.items()}
        if s < seconds.get("ours", np.inf):
            seconds["ours"], best_ours = s, lists
        s, lists = timed(lambda: faiss_lists(catalog, parts, k, threads=args.threads))
        if s < seconds.get("faiss_flat", np.inf):
            seconds["faiss_flat"], best_faiss = s, lists
        if n <= args.sklearn_max_items:
            s, sk = timed(lambda: sklearn_lists(catalog, parts, k, threads=args.threads))
            seconds["sklearn_brute"] = min(s, seconds.get("sklearn_brute", np.inf))
    agreement = compare_lists(best_ours, best_faiss)
    sklearn_agreement = compare_lists(best_ours, sk) if sk is not None else None
    exact_kth = best_ours.scores[np.arange(n), np.maximum((best_ours.neighbours >= 0).sum(axis=1) - 1, 0)]
    lsh_runs = []
    if n <= args.lsh_max_items:
        listed = (best_ours.neighbours >= 0).any(axis=1)
        threshold = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(np.nanmin(exact_kth[listed]))))) * 1.0001 + 1e-6
        for length, tables in lsh:
            s, approx = lsh_lists(spark, path, n, k, bucket_length=length, tables=tables, threshold=threshold)
            lsh_runs.append({
                "bucket_length": length, "hash_tables": tables, "threshold": round(threshold, 4),
                "seconds": s, "recall_at_k": recall_at_k(best_ours.neighbours, approx.neighbours),
            })
        best = max(lsh_runs, key=lambda r: (r["recall_at_k"], -r["seconds"])) if lsh_runs else None
        if best:
            seconds["mllib_lsh"] = best["seconds"]
    approximate_runs = []
    for above in args.approximate_above if n >= args.approximate_min_items else []:
        from lookalike.neighbours import ApproximateSearch

        in_approximate = np.zeros(n, dtype=bool)
        for rows in parts:
            in_approximate[rows] = len(rows) > above
        if not in_approximate.any():
            log.info("no partition above %d items at %d items: no approximate run", above, n)
            continue
        for nprobe in args.nprobe:
            search = ApproximateSearch(above=above, nprobe=nprobe, recall_sample=0.01)
            s, approx, peak = ours_lists(
                spark, path, n, k, block_rows=args.block_rows, block_items=args.block_items,
                out_path=Path(args.work).resolve() / f"lists-{n}-approx.parquet", approximate=search,
            )
            recalls = {
                f"recall_at_{depth}": recall_at_k(best_ours.neighbours[in_approximate, :depth], approx.neighbours[in_approximate, :depth])
                for depth in sorted({10, k})
            }
            approximate_runs.append({
                "nprobe": nprobe, "above": above, "seconds": s, "speedup_vs_exact": seconds["ours"] / s,
                "items_searched_approximately": int(in_approximate.sum()), "peak_mb": peak, **recalls,
            })
            log.info("ours approximate above %d, nprobe %d: %.2f s, %s", above, nprobe, s, recalls)
    squares = sum_squared_sizes(parts)
    result = {
        "items": n,
        "partitions": len(parts),
        "largest_partition": int(len(parts[0])),
        "top_category_share": float(np.mean(catalog.category == "cat-00")),
        "sum_squared_partition_sizes": squares,
        "catalog_squared": n * n,
        "squares_over_catalog_squared": squares / (n * n),
        "seconds": seconds,
        "items_per_s": {m: n / s for m, s in seconds.items()},
        "ours_vs_faiss": agreement,
        "ours_vs_sklearn": sklearn_agreement,
        "lsh_runs": lsh_runs,
        "ratio_ours_faiss": seconds["faiss_flat"] / seconds["ours"],
        "ratio_ours_sklearn": seconds["sklearn_brute"] / seconds["ours"] if "sklearn_brute" in seconds else None,
        "ours_peak_mb": peak_mb,
        "approximate_runs": approximate_runs,
        "ratio_ours_lsh": seconds["mllib_lsh"] / seconds["ours"] if "mllib_lsh" in seconds else None,
        "lsh_recall": max((r["recall_at_k"] for r in lsh_runs), default=None),
    }
    log.info("size %d done: %s", n, json.dumps(result["seconds"]))
    return result


def print_table(results: Sequence[dict]) -> str:
    """Markdown table of the results, one row per size, plus the ratio lines; returned and printed."""
    lines = [
        "| items | partitions | largest | Σ size² / N² | ours s | faiss_flat s | sklearn_brute s | mllib_lsh s "
        "| ours items/s | faiss items/s | ours/faiss | ours/sklearn | ours/LSH | LSH recall@k |",
        "|" + "---|" * 14,
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    for r in results:
        s = r["seconds"]
        lines.append(
            f"| {r['items']:,} | {r['partitions']} | {r['largest_partition']:,} | {r['squares_over_catalog_squared']:.3f} "
            f"| {s['ours']:.2f} | {s['faiss_flat']:.2f} | {fmt(s.get('sklearn_brute'), '.2f')} | {fmt(s.get('mllib_lsh'), '.1f')} "
            f"| {r['items_per_s']['ours']:,.0f} | {r['items_per_s']['faiss_flat']:,.0f} "
            f"| {r['ratio_ours_faiss']:.2f} | {fmt(r['ratio_ours_sklearn'], '.2f')} | {fmt(r['ratio_ours_lsh'], '.1f')} "
            f"| {fmt(r['lsh_recall'], '.3f')} |"
        )
    for r in results:
        lines.append("")
        lines.append(f"{r['items']:,} items:")
        met = "met" if r["ratio_ours_faiss"] >= FAISS_TARGET else "NOT met"
        lines.append(f"ratio ours/faiss_flat = {r['ratio_ours_faiss']:.2f} (target >= {FAISS_TARGET}: {met})")
        if r["ratio_ours_lsh"] is not None:
            if r["ratio_ours_lsh"] < LSH_TARGET:
                met = "NOT met"
            elif r["lsh_recall"] >= 1.0:
                met = "met"
            else:
                # More hash tables (same seed: the same first tables plus more) only add candidate
                # pairs, so LSH at recall 1.0 would take longer still: the ratio is a lower bound.
                met = "met as a lower bound: LSH at recall 1.0 needs more hash tables, so more time"
            lines.append(
                f"ratio ours/mllib_lsh = {r['ratio_ours_lsh']:.1f} at LSH recall@k {r['lsh_recall']:.3f} "
                f"(target >= {LSH_TARGET:.0f} at recall 1.0: {met})"
            )
            for run in r["lsh_runs"]:
                lines.append(
                    f"  LSH bucketLength={run['bucket_length']:g} numHashTables={run['hash_tables']} "
                    f"threshold={run['threshold']}: {run['seconds']:.1f} s, recall@k {run['recall_at_k']:.3f}"
                )
        a = r["ours_vs_faiss"]
        lines.append(
            f"ours == faiss_flat: scores within {SCORE_TOLERANCE:g}: {a['scores_equal']} "
            f"(max difference {a['max_score_difference']:.2e}; identical id lists for {100 * a['share_same_ids']:.2f} % of items)"
        )
        for run in r["approximate_runs"]:
            recalls = ", ".join(f"{key.replace('_', ' ').replace('recall at ', 'recall@')} {value:.4f}" for key, value in run.items() if key.startswith("recall_at_"))
            lines.append(
                f"ours approximate (IVF, nprobe {run['nprobe']}, partitions above {run['above']:,} items: "
                f"{run['items_searched_approximately']:,} items): {run['seconds']:.2f} s, "
                f"ratio exact/approximate = {run['speedup_vs_exact']:.2f} (target >= 5 at recall@10 >= 0.99), {recalls}"
            )
        peak = r["ours_peak_mb"]
        lines.append(
            f"ours peak memory: JVM resident {peak['jvm_rss']:,.0f} MB (anonymous {peak['jvm_anon']:,.0f} MB), "
            f"largest Python worker resident {peak['python_worker_rss']:,.0f} MB (anonymous {peak['python_worker_anon']:,.0f} MB)"
        )
        lines.append(
            f"sum of squared partition sizes = {r['sum_squared_partition_sizes']:,} = "
            f"{r['squares_over_catalog_squared']:.3f} x catalog² ({r['catalog_squared']:,}); "
            f"ours {1e9 * r['seconds']['ours'] / r['sum_squared_partition_sizes']:.1f} s per 1e9 pairs"
        )
    text = "\n".join(lines)
    print(text)
    return text


def plot(results: Sequence[dict], path: Path, *, title: str) -> None:
    """Seconds against catalog size (log-log), one line per method; beside it, against Σ partition size²."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, marker in zip(METHODS, "osD^"):
        points = [(r["items"], r["sum_squared_partition_sizes"], r["seconds"][method]) for r in results if method in r["seconds"]]
        if not points:
            continue
        sizes, squares, secs = zip(*points)
        axes[0].plot(sizes, secs, marker=marker, label=method)
        axes[1].plot(squares, secs, marker=marker, label=method)
    for ax, label in zip(axes, ("catalog size N (items)", "Σ (partition size)² (pairs scored)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds (wall)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10000, 100000], help="catalog sizes")
    parser.add_argument("--k", type=int, default=20, help="neighbours per item (index.k)")
    parser.add_argument("--block-rows", type=int, default=1024, help="index.block_rows for ours")
    parser.add_argument("--block-items", type=int, default=50000, help="index.block_items for ours (0: never split)")
    parser.add_argument("--approximate-above", type=int, nargs="*", default=[], help="also run ours with index.approximate_above = each of these")
    parser.add_argument("--approximate-min-items", type=int, default=100000, help="... only on catalogs of at least this size")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16], help="index.approximate_nprobe values tried")
    parser.add_argument("--sklearn-max-items", type=int, default=100000, help="run scikit-learn only on catalogs up to this size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads for faiss and scikit-learn")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method and size (best kept)")
    parser.add_argument("--lsh", default="0.5:4", help="MLlib LSH configs, bucketLength:numHashTables,...")
    parser.add_argument("--lsh-max-items", type=int, default=10000, help="run LSH only on catalogs up to this size")
    parser.add_argument("--source-dir", default="../shared/data/fashion-products")
    parser.add_argument("--photos", type=int, default=512, help="real photos embedded")
    parser.add_argument("--image-size", type=int, default=128, help="Lite0 input side in pixels")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension (PCA of the Lite0 features; 0: all 1280)")
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.6, help="noise norm added to each real unit vector")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--work", default="lookalike-data/benchmark-index", help="cache and Parquet files")
    parser.add_argument("--report", default=None, help="JSON report (default: <work>/report.json)")
    parser.add_argument("--plot", default=None, help="PNG of seconds against catalog size")
    parser.add_argument("--profile", default="local")
    parser.add_argument("--conf-dir", default="conf")
    args = parser.parse_args()

    from lookalike.cli import setup_logging
    from lookalike.config import load_config
    from lookalike.session import build_spark

    setup_logging()
    work = Path(args.work).resolve()
    features = lite0_features(Path(args.source_dir).resolve(), photos=args.photos, image_size=args.image_size, cache_dir=work)
    real = project(features, args.dim)
    log.info("real vectors: %d x %d", *real.shape)

    spark = build_spark("lookalike-benchmark-index", load_config(args.profile, [f"storage.root={work / 'store'}"], conf_dir=args.conf_dir))
    spark.sparkContext.setLogLevel("WARN")
    cores = spark.sparkContext.defaultParallelism
    lsh = parse_lsh(args.lsh)
    # Warm-up: JVM, Python workers, faiss and scikit-learn once each, on a small catalog (untimed).
    measure_size(spark, real, 2000, argparse.Namespace(**{**vars(args), "lsh_max_items": 2000}), lsh=lsh[:1], repeats=1)
    results = [measure_size(spark, real, n, args, lsh=lsh, repeats=args.repeats) for n in sorted(args.items)]
    import faiss
    import sklearn

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Spark local with {cores} cores",
        "versions": {"faiss-cpu": faiss.__version__, "scikit-learn": sklearn.__version__},
        "settings": {key: value for key, value in vars(args).items() if key not in ("report", "plot")},
        "real_vectors": list(real.shape),
        "results": results,
    }
    report["table"] = print_table(results)
    report_path = Path(args.report) if args.report else work / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    log.info("report written to %s", report_path)
    if args.plot:
        plot(results, Path(args.plot), title=f"exact top-{args.k} per (category, price band), d={real.shape[1]}; {report['date']}, {report['machine']}")
        log.info("plot written to %s", args.plot)
    spark.stop()


if __name__ == "__main__":
    main()
