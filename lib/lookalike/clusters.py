"""Clusters of look-alike items within each category: Spark MLlib KMeans on the published embeddings.

Merchandisers browse a category by its clusters (the kinds of item it holds). Each category is
clustered for every k in ``clusters.k_values`` with cosine distance (the embeddings are
L2-normalised, and the lists rank by cosine), and the k with the best silhouette is published.
A category with fewer than ``clusters.min_items`` items is one cluster (k = 1) and has no
silhouette row. Both tables are written from one publication and carry its run id.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.publish import Publication, published_table, require_publication
from lookalike.tables import conform, ensure_table, table_path
from schemas import CLUSTER_SILHOUETTES, EMBEDDINGS, ITEM_CLUSTERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Silhouette:
    """The silhouette of one k tried for one category."""

    category: str
    items: int
    k: int
    silhouette: float


def _chosen(scores: Sequence[Silhouette]) -> Silhouette:
    """The best silhouette; on a tie the smaller k (fewer clusters explain the same structure)."""
    return max(scores, key=lambda s: (s.silhouette, -s.k))


def cluster_categories(
    embeddings: DataFrame,
    *,
    k_values: Sequence[int],
    min_items: int,
    seed: int,
    max_iter: int = 30,
    rows_per_partition: int = 50_000,
) -> tuple[DataFrame, list[Silhouette], dict[str, int]]:
    """Cluster each category's embeddings with KMeans, choosing k by silhouette.

    Parameters
    ----------
    embeddings : DataFrame
        ``category``, ``item_id`` and ``embedding`` (L2-normalised) per item.
    k_values : sequence of int
        Cluster counts to try (each at least 2); a k not below the category's item count is skipped.
    min_items : int
        Categories with fewer items are one cluster and are not scored.
    seed, max_iter : int
        KMeans seed and iteration limit, so a rerun on the same embeddings gives the same clusters.
    rows_per_partition : int
        A category is fitted in ``items / rows_per_partition`` partitions (at least 1, at most
        the default parallelism).

    Returns
    -------
    assignments : DataFrame
        ``category``, ``item_id``, ``cluster``, ``k`` for every item of ``embeddings``.
    silhouettes : list of Silhouette
        Every (category, k) tried.
    chosen_k : dict
        The k published per category (1 for categories too small to cluster).
    """
    if any(k < 2 for k in k_values):
        raise ValueError(f"clusters.k_values must all be at least 2, got {list(k_values)}")
    vectors = embeddings.select("category", "item_id", array_to_vector("embedding").alias("features"))
    parallelism = embeddings.sparkSession.sparkContext.defaultParallelism
    sizes = {row["category"]: int(row["count"]) for row in vectors.groupBy("category").count().collect()}
    evaluator = ClusteringEvaluator(distanceMeasure="cosine", predictionCol="cluster")
    progress = iter(range(1, len(sizes) + 1))

    def cluster_one(category: str) -> tuple[list[Silhouette], int, DataFrame]:
        items = sizes[category]
        rows = vectors.where(F.col("category") == category)
        candidates = sorted({k for k in k_values if k < items})
        if items < min_items or not candidates:
            return [], 1, rows.select("category", "item_id", F.lit(0).alias("cluster"), F.lit(1).alias("k"))
        started = time.perf_counter()
        # KMeans runs one Spark job per iteration: few partitions for a small category keep the
        # per-task overhead from dominating, and caching keeps each pass from re-reading Delta.
        partitions = max(1, min(parallelism, -(-items // rows_per_partition)))
        cached = rows.repartition(partitions).cache()
        scored: list[tuple[Silhouette, DataFrame]] = []
        try:
            for k in candidates:
                model = KMeans(
                    k=k, seed=seed, maxIter=max_iter, distanceMeasure="cosine", predictionCol="cluster"
                ).fit(cached)
                silhouette = float(evaluator.evaluate(model.transform(cached)))
                # Kept lazy on the uncached rows: the chosen model's assignments are computed once, at the write.
                scored.append((Silhouette(category, items, k, silhouette), model.transform(rows)))
        finally:
            cached.unpersist()
        best = _chosen([s for s, _ in scored])
        predictions = next(p for s, p in scored if s is best)
        log.info(
            "clusters: %d/%d categories, %s: %d items, k=%d (silhouette %.3f), %.1f s",
            next(progress), len(sizes), category, items, best.k, best.silhouette, time.perf_counter() - started,
        )
        return [s for s, _ in scored], best.k, predictions.select("category", "item_id", "cluster", F.lit(best.k).alias("k"))

    # Categories are fitted side by side: each KMeans iteration is a short Spark job, and
    # concurrent jobs keep the executors busy while the driver schedules the next one.
    with ThreadPoolExecutor(max_workers=max(2, parallelism)) as pool:
        results = dict(zip(sorted(sizes), pool.map(cluster_one, sorted(sizes))))
    silhouettes = [s for category in sorted(results) for s in results[category][0]]
    chosen_k = {category: result[1] for category, result in results.items()}
    parts = [result[2] for result in results.values()]
    assignments = functools.reduce(DataFrame.unionByName, parts) if parts else \
        embeddings.sparkSession.createDataFrame([], "category string, item_id string, cluster int, k int")
    return assignments, silhouettes, chosen_k


@dataclass(frozen=True)
class ClusterRun:
    """What one clustering run published."""

    run_id: str
    items: int
    chosen_k: dict[str, int]
    silhouettes: list[Silhouette]


def publish_clusters(
    spark: SparkSession, config: Mapping[str, Any], *, publication: Publication | None = None
) -> ClusterRun:
    """Cluster the published embeddings and write ``item_clusters`` (replaced) and ``cluster_silhouettes`` (appended).

    Both writes are Delta idempotent writes keyed by the publication's sequence number, so
    clustering the same publication again adds no table version.

    Parameters
    ----------
    publication : Publication, optional
        Run to cluster; default the published one.

    Raises
    ------
    RuntimeError
        If nothing has been published yet.
    """
    publication = require_publication(spark, config, publication)
    # Cached: every k of every category reads its category's rows again.
    embeddings = published_table(spark, config, EMBEDDINGS, publication).select("category", "item_id", "embedding").cache()
    try:
        return _write_clusters(spark, config, publication, embeddings)
    finally:
        embeddings.unpersist()


def _write_clusters(
    spark: SparkSession, config: Mapping[str, Any], publication: Publication, embeddings: DataFrame
) -> ClusterRun:
    settings = config["clusters"]
    assignments, silhouettes, chosen_k = cluster_categories(
        embeddings, k_values=[int(k) for k in settings["k_values"]], min_items=int(settings["min_items"]),
        seed=int(settings["seed"]), max_iter=int(settings["max_iter"]),
    )
    model_version = publication.model_version or ""
    lineage = {"model_version": F.lit(model_version), "run_id": F.lit(publication.run_id)}
    for table in (ITEM_CLUSTERS, CLUSTER_SILHOUETTES):
        ensure_table(spark, config, table)
    (
        conform(assignments.withColumns(lineage), ITEM_CLUSTERS).write.format("delta").mode("overwrite")
        .option("txnAppId", "lookalike.item_clusters").option("txnVersion", int(publication.run_seq))
        .save(table_path(config, ITEM_CLUSTERS))
    )
    scores = spark.createDataFrame(
        [(s.category, s.items, s.k, s.silhouette, s.k == chosen_k[s.category]) for s in silhouettes],
        "category string, items long, k int, silhouette double, chosen boolean",
    ).withColumns({**lineage, "measured_at": F.current_timestamp()})
    (
        conform(scores, CLUSTER_SILHOUETTES).write.format("delta").mode("append")
        .option("txnAppId", "lookalike.cluster_silhouettes").option("txnVersion", int(publication.run_seq))
        .save(table_path(config, CLUSTER_SILHOUETTES))
    )
    items = embeddings.count()
    log.info("clusters: %d items of run %s in %d categories", items, publication.run_id, len(chosen_k))
    return ClusterRun(publication.run_id, items, chosen_k, silhouettes)


__all__ = ["ClusterRun", "Silhouette", "cluster_categories", "publish_clusters"]
