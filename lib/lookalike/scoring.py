"""Embed: score every catalog photo with a pandas UDF -> Delta ``embeddings``; undecodable photos -> quarantine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.storagelevel import StorageLevel

from lookalike.images import decode_batch
from lookalike.model_store import ModelManifest, load_manifest, load_scorer_from_bytes, read_scorer_bytes
from lookalike.tables import append_quarantine, conform, ensure_table, read_table, table_path
from schemas import CATALOG, EMBEDDINGS, IMAGES, QUARANTINE

log = logging.getLogger(__name__)

SCORE_TYPE = (
    "predicted_category string, confidence float, embedding array<float>, decode_error string"
)

# One loaded scorer per Python worker process, keyed by model version: loading TensorFlow and the
# model costs seconds, a batch milliseconds.
_SCORERS: dict[str, Any] = {}


def _scorer_for(version: str, content: bytes, tf_threads: int) -> Any:
    if version not in _SCORERS:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised in this process
            pass
        _SCORERS[version] = load_scorer_from_bytes(content)
    return _SCORERS[version]


def arrow_batch_rows(*, image_size: int, target_bytes: int, max_rows: int) -> int:
    """Rows per Arrow batch so one batch's decoded float32 tensor stays near ``target_bytes``.

    Spark's default of 10,000 rows would be ~500 MB of float32 pixels at 64x64 and far more at 224x224.
    """
    per_row = image_size * image_size * 3 * 4
    return int(max(1, min(max_rows, target_bytes // per_row)))


def make_score_udf(manifest: ModelManifest, scorer_bytes: Any, *, tf_threads: int) -> Callable[..., Column]:
    """A scalar-iterator pandas UDF: photo bytes -> predicted category, confidence, unit embedding.

    Parameters
    ----------
    manifest : ModelManifest
        The model bundle (classes, image size, version).
    scorer_bytes : Broadcast
        Broadcast of the scorer file's bytes, already checked against the manifest's hash.
    tf_threads : int
        TensorFlow intra-op threads per Python worker.

    Returns
    -------
    pandas UDF returning ``SCORE_TYPE``; a photo that fails to decode gets null outputs and its error.
    """
    classes = np.array(manifest.classes, dtype=object)
    size, version = manifest.image_size, manifest.version

    @pandas_udf(SCORE_TYPE)
    def score(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        scorer = _scorer_for(version, scorer_bytes.value, tf_threads)
        for contents in batches:
            images, errors = decode_batch(contents, size)
            n = len(errors)
            category = np.full(n, None, dtype=object)
            confidence = np.full(n, np.nan, dtype=np.float32)
            embeddings: list[Any] = [None] * n
            ok = np.array([e is None for e in errors], dtype=bool)
            if ok.any():
                out = scorer(images.astype(np.float32), training=False)
                probabilities = np.asarray(out["probabilities"])
                vectors = np.asarray(out["embedding"], dtype=np.float32)
                best = probabilities.argmax(axis=1)
                category[ok] = classes[best]
                confidence[ok] = probabilities[np.arange(len(best)), best]
                for position, vector in zip(np.flatnonzero(ok), vectors, strict=True):
                    embeddings[position] = vector
            yield pd.DataFrame(
                {"predicted_category": category, "confidence": confidence, "embedding": embeddings, "decode_error": errors}
            )

    return score


def price_band_column(price: Column, edges: Column) -> Column:
    """Band index = how many band edges are <= price (0 = cheapest band)."""
    return F.size(F.filter(edges, lambda edge: edge <= price)).cast("int")


def assign_price_bands(df: DataFrame, config: Mapping[str, Any]) -> DataFrame:
    """Add ``price_band`` from fixed edges, or from per-category price quantiles.

    Parameters
    ----------
    df : DataFrame
        Needs ``category`` and ``price``.
    config : mapping
        ``index.price_bands`` = ``fixed`` (``index.price_band_edges``) or ``quantile``
        (``index.quantile_bands`` bands per category).
    """
    mode = str(config["index"]["price_bands"])
    if mode == "fixed":
        edges = [float(e) for e in config["index"]["price_band_edges"]]
        if edges != sorted(edges):
            raise ValueError(f"index.price_band_edges must be ascending, got {edges}")
        return df.withColumn("price_band", price_band_column(F.col("price"), F.array(*[F.lit(e) for e in edges])))
    if mode == "quantile":
        bands = int(config["index"]["quantile_bands"])
        quantiles = [i / bands for i in range(1, bands)]
        edges = df.groupBy("category").agg(F.percentile_approx("price", quantiles, 10_000).alias("_edges"))
        return (
            df.join(edges, "category")
            .withColumn("price_band", price_band_column(F.col("price"), F.col("_edges")))
            .drop("_edges")
        )
    raise ValueError(f"index.price_bands must be 'fixed' or 'quantile', not {mode!r}")


@dataclass
class EmbedCounts:
    """Items scored and quarantined by one embed run."""

    items: int
    embedded: int
    quarantined: dict[str, int] = field(default_factory=dict)
    arrow_batch_rows: int = 0


def embed_catalog(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    run_id: str,
    model_version: str | None = None,
) -> EmbedCounts:
    """Score the whole catalog and overwrite ``embeddings``; photos that fail to decode go to quarantine.

    Parameters
    ----------
    spark : SparkSession
    config : mapping
    run_id : str
        Recorded on every row written.
    model_version : str, optional
        Model bundle to use; default the latest.

    Returns
    -------
    EmbedCounts
    """
    manifest = load_manifest(config, model_version)
    scorer_bytes = spark.sparkContext.broadcast(read_scorer_bytes(config, manifest))
    ensure_table(spark, config, EMBEDDINGS)
    ensure_table(spark, config, QUARANTINE)

    embed_conf = config["embed"]
    rows = arrow_batch_rows(
        image_size=manifest.image_size,
        target_bytes=int(embed_conf["arrow_batch_bytes"]),
        max_rows=int(embed_conf["max_rows_per_batch"]),
    )
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows))
    score = make_score_udf(manifest, scorer_bytes, tf_threads=int(embed_conf["tf_threads_per_task"]))

    catalog = read_table(spark, config, CATALOG).select(
        "item_id", F.col("category").alias("given_category"), "price", "image_hash"
    )
    images = read_table(spark, config, IMAGES).select("image_hash", "content")
    # Enough tasks to keep every core busy; the images table may be a single file.
    partitions = max(2, spark.sparkContext.defaultParallelism * int(embed_conf.get("tasks_per_core", 2)))
    scored = (
        catalog.join(images, "image_hash")
        .repartition(partitions, "item_id")
        .withColumn("out", score("content"))
        .select("item_id", "given_category", "price", "image_hash", "out.*")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        failed = scored.where(F.col("decode_error").isNotNull())
        refused = failed.select(
            "item_id",
            F.lit("undecodable_image").alias("reason"),
            F.col("decode_error").alias("detail"),
            F.to_json(F.struct("item_id", "image_hash")).alias("source_record"),
        )
        append_quarantine(config, refused, run_id=run_id, stage="embed")

        good = (
            scored.where(F.col("decode_error").isNull())
            .withColumn("category", F.coalesce("given_category", "predicted_category"))
            .withColumn("model_version", F.lit(manifest.version))
            .withColumn("run_id", F.lit(run_id))
        )
        banded = assign_price_bands(good, config)
        conform(banded, EMBEDDINGS).write.format("delta").mode("overwrite").save(table_path(config, EMBEDDINGS))
        total, n_failed = scored.count(), failed.count()
    finally:
        scored.unpersist()
        scorer_bytes.destroy()
    counts = EmbedCounts(
        items=total,
        embedded=total - n_failed,
        quarantined={"undecodable_image": n_failed} if n_failed else {},
        arrow_batch_rows=rows,
    )
    log.info("embed: %d items, %d embedded, %d quarantined (model %s, %d rows per Arrow batch)",
             counts.items, counts.embedded, n_failed, manifest.version, rows)
    return counts
