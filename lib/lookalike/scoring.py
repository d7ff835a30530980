"""Embed: score new photos with a pandas UDF and stage the ``embeddings`` rows that change; undecodable photos -> quarantine."""

from __future__ import annotations

import functools
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
from lookalike.model_store import ModelManifest, check_scorer_bytes, load_scorer_from_bytes, ship_scorer
from lookalike.tables import append_quarantine, read_table
from schemas import EMBEDDINGS, IMAGES

log = logging.getLogger(__name__)

SCORE_TYPE = (
    "predicted_category string, confidence float, embedding array<float>, decode_error string"
)

# One loaded scorer per Python worker process, keyed by model version: loading TensorFlow and the
# model costs seconds, a batch milliseconds.
_SCORERS: dict[str, Any] = {}


def _scorer_for(manifest: ModelManifest, tf_threads: int) -> Any:
    """The scorer, loaded once per Python worker from the file ``ship_scorer`` sent, its hash checked."""
    if manifest.version not in _SCORERS:
        import tensorflow as tf
        from pyspark import SparkFiles

        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised in this process
            pass
        with open(SparkFiles.get(manifest.scorer_file), "rb") as handle:
            content = check_scorer_bytes(handle.read(), manifest)
        model = load_scorer_from_bytes(content)
        size = manifest.image_size
        # A graph, traced once: called op by op (eager) on 55 photos, Lite0 at 224 px held 5.5 GB and
        # scored 25 photos/s; as a graph in calls of 16, 1.0 GB and 47 photos/s (benchmarks/model_calls.py).
        _SCORERS[manifest.version] = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
        )
    return _SCORERS[manifest.version]


def arrow_batch_rows(*, image_size: int, target_bytes: int, max_rows: int, multiple_of: int = 1) -> int:
    """Rows per Arrow batch so one batch's decoded float32 tensor stays near ``target_bytes``.

    Spark's default of 10,000 rows would be ~500 MB of float32 pixels at 64x64 and far more at 224x224.
    Rounded down to a multiple of ``multiple_of`` (the photos per model call) when there is room
    for one, so that only a partition's last batch needs padding.
    """
    per_row = image_size * image_size * 3 * 4
    rows = int(max(1, min(max_rows, target_bytes // per_row)))
    return rows - rows % multiple_of if rows >= multiple_of else rows


ARROW_MAX_BYTES_KEY = "spark.sql.execution.arrow.maxBytesPerBatch"


def configure_arrow_batches(spark: SparkSession, config: Mapping[str, Any], *, image_size: int) -> int:
    """Bound the Arrow batches sent to the scoring UDF by rows and by bytes; return the rows.

    Rows come from the decoded tensor size (``arrow_batch_rows``). Rows alone do not bound a
    batch's bytes: each row also carries its photo file, and 682 rows of 5.6 MB photos would be
    3.8 GB and fail Arrow's 2 GiB vector limit. So the bytes are capped at ``embed.arrow_batch_bytes``
    too (Spark's own default, 256 MiB, is an internal setting). Measured in
    ``benchmarks/scoring_memory.py``: a worker's peak with 6000 x 4000 photos drops from 1.7 to 0.76 GiB.
    """
    rows = configured_batch_rows(config, image_size=image_size)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows))
    spark.conf.set(ARROW_MAX_BYTES_KEY, str(int(config["embed"]["arrow_batch_bytes"])))
    return rows


def configured_batch_rows(config: Mapping[str, Any], *, image_size: int) -> int:
    """Rows per Arrow batch for ``image_size`` photos under the ``embed`` section of ``config``."""
    embed_conf = config["embed"]
    return arrow_batch_rows(
        image_size=image_size,
        target_bytes=int(embed_conf["arrow_batch_bytes"]),
        max_rows=int(embed_conf["max_rows_per_batch"]),
        multiple_of=int(embed_conf["model_batch_rows"]),
    )


def score_in_calls(model: Callable[[Any], Mapping[str, Any]], images: np.ndarray, call_rows: int) -> dict[str, np.ndarray]:
    """Run ``model`` on ``images`` in calls of exactly ``call_rows`` photos, the last padded with blank images.

    Parameters
    ----------
    model : callable
        Takes a float32 ``(call_rows, size, size, 3)`` batch, returns a mapping of output tensors.
    images : numpy.ndarray
        ``(n, size, size, 3)`` decoded photos.
    call_rows : int
        Photos per call.

    Returns
    -------
    dict
        Each output, ``n`` rows (the padding's dropped).
    """
    padded = -len(images) % call_rows
    calls = np.concatenate([images, np.zeros((padded, *images.shape[1:]), images.dtype)]) if padded else images
    outputs = [model(calls[start : start + call_rows].astype(np.float32)) for start in range(0, len(calls), call_rows)]
    return {name: np.concatenate([np.asarray(out[name]) for out in outputs])[: len(images)] for name in outputs[0]}


def make_score_udf(manifest: ModelManifest, *, tf_threads: int, model_batch_rows: int = 16) -> Callable[..., Column]:
    """A scalar-iterator pandas UDF: photo bytes -> predicted category, confidence, unit embedding.

    The scorer file must have been shipped to the executors first (``model_store.ship_scorer``).

    Parameters
    ----------
    manifest : ModelManifest
        The model bundle (classes, image size, version, scorer file and its hash).
    tf_threads : int
        TensorFlow intra-op threads per Python worker.
    model_batch_rows : int
        Photos per model call: an Arrow batch is scored in slices of exactly this many, the last
        one padded with blank images. The model's activations grow with the rows of a call (at
        224 px, one Lite0 layer holds 4.8 MB per photo), and a photo's outputs depend on the
        rows of the call it is in, in the last bits, not on its neighbours in the call: with
        one call size, a photo embeds to the same bits whichever photos share its batch, so a
        refresh that scores a few photos reproduces a full build's embeddings exactly.

    Returns
    -------
    pandas UDF returning ``SCORE_TYPE``; a photo that fails to decode gets null outputs and its error.
    """
    if model_batch_rows < 1:
        raise ValueError(f"embed.model_batch_rows must be at least 1, not {model_batch_rows}")
    classes = np.array(manifest.classes, dtype=object)
    size = manifest.image_size

    @pandas_udf(SCORE_TYPE)
    def score(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        scorer = _scorer_for(manifest, tf_threads)
        for contents in batches:
            images, errors = decode_batch(contents, size)
            n = len(errors)
            category = np.full(n, None, dtype=object)
            confidence = np.full(n, np.nan, dtype=np.float32)
            embeddings: list[Any] = [None] * n
            ok = np.array([e is None for e in errors], dtype=bool)
            if ok.any():
                out = score_in_calls(scorer, images, model_batch_rows)
                probabilities, vectors = out["probabilities"], out["embedding"].astype(np.float32)
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
    """What one embed stage did: items in the catalog, photos scored, rows staged."""

    items: int
    embedded: int
    photos_scored: int = 0
    upserted: int = 0
    deleted: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    arrow_batch_rows: int = 0
    full_reembed_reason: str | None = None


# Staged change rows carry these besides the table's columns.
DELETE_FLAG = "_delete"
VECTOR_CHANGED = "_vector_changed"
PREVIOUS_CATEGORY = "_previous_category"
PREVIOUS_BAND = "_previous_band"

# Columns whose change makes an item's embeddings row change; the embedding itself follows from
# image_hash and model_version.
_COMPARED = ("category", "given_category", "predicted_category", "confidence", "price", "price_band", "image_hash", "model_version")


def score_images(
    spark: SparkSession, config: Mapping[str, Any], manifest: ModelManifest, hashes: DataFrame
) -> tuple[DataFrame, int]:
    """Score each distinct photo once with a pandas UDF; the executors read the scorer from the model store.

    Parameters
    ----------
    hashes : DataFrame
        ``image_hash`` of the photos to score (keys into ``images``).

    Returns
    -------
    (DataFrame, int)
        ``image_hash``, ``predicted_category``, ``confidence``, ``embedding``, ``decode_error``
        (persisted; the caller unpersists), and the Arrow batch rows used.
    """
    embed_conf = config["embed"]
    rows = configure_arrow_batches(spark, config, image_size=manifest.image_size)
    wanted = hashes.select("image_hash").distinct().persist(StorageLevel.MEMORY_AND_DISK)
    n = wanted.count()
    # Enough tasks to keep every core busy, but no more than there are batches: each new Python
    # worker loads TensorFlow and the model once.
    slots = max(2, spark.sparkContext.defaultParallelism * int(embed_conf.get("tasks_per_core", 2)))
    partitions = max(1, min(slots, -(-n // 64)))
    ship_scorer(spark, config, manifest)
    score = make_score_udf(
        manifest, tf_threads=int(embed_conf["tf_threads_per_task"]), model_batch_rows=int(embed_conf["model_batch_rows"])
    )
    images = read_table(spark, config, IMAGES).select("image_hash", "content")
    scored = (
        images.join(wanted, "image_hash", "left_semi")
        .repartition(partitions, "image_hash")
        # A fixed order, so a rerun scores the same photos in the same batches.
        .sortWithinPartitions("image_hash")
        .withColumn("out", score("content"))
        .select("image_hash", "out.*")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    if n:
        scored.count()
    wanted.unpersist()
    return scored, rows


def stage_embeddings(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    manifest: ModelManifest,
    catalog: DataFrame,
    previous: DataFrame,
    run_id: str,
    catalog_version: int,
    staging_path: str,
    run_seq: int | None = None,
) -> EmbedCounts:
    """Write the embeddings rows that change to ``staging_path``: new or changed items scored, the rest carried over.

    A photo already scored by the same model (in ``previous``, under any item) is not scored
    again. A new model version re-embeds every item. Photos that fail to decode go to quarantine.

    Parameters
    ----------
    catalog : DataFrame
        The ``catalog`` table at the version this run reads.
    previous : DataFrame
        The published ``embeddings`` (empty for a first build).
    run_id, catalog_version, run_seq
        Lineage written on changed rows; ``run_seq`` makes the quarantine append idempotent.
    staging_path : str
        Delta folder the changes are written to (overwritten), in one commit: the rows of the
        ``embeddings`` schema plus ``_delete`` (true: the item is gone; the row is its previous
        one), ``_vector_changed`` (new item, photo, model or partition) and
        ``_previous_category`` / ``_previous_band``.

    Returns
    -------
    EmbedCounts
    """
    items = catalog.select("item_id", F.col("category").alias("given_category"), "price", "image_hash")
    models = [r["model_version"] for r in previous.select("model_version").distinct().collect()]
    full_reason = None
    if models and models != [manifest.version]:
        full_reason = f"model version changed from {sorted(models)} to {manifest.version}: re-embedding every item"
        log.warning("embed: %s", full_reason)
    # One output per photo: a photo is scored once per model, whichever items show it.
    known = (
        previous.where(F.col("model_version") == manifest.version)
        .groupBy("image_hash")
        .agg(F.min_by(F.struct("predicted_category", "confidence", "embedding"), "item_id").alias("o"))
        .select("image_hash", "o.*")
    )
    missing = items.join(known, "image_hash", "left_anti").select("image_hash")
    scored, batch_rows = score_images(spark, config, manifest, missing)
    try:
        failed = scored.where(F.col("decode_error").isNotNull())
        refused = items.join(failed, "image_hash").select(
            "item_id",
            F.lit("undecodable_image").alias("reason"),
            F.col("decode_error").alias("detail"),
            F.to_json(F.struct("item_id", "image_hash")).alias("source_record"),
        )
        append_quarantine(config, refused, run_id=run_id, stage="embed", run_seq=run_seq)
        outputs = known.unionByName(scored.where(F.col("decode_error").isNull()).drop("decode_error"))
        state = assign_price_bands(
            items.join(outputs, "image_hash")
            .withColumn("category", F.coalesce("given_category", "predicted_category"))
            .withColumn("model_version", F.lit(manifest.version)),
            config,
        )
        changes = _diff(state, previous, run_id=run_id, catalog_version=catalog_version)
        changes.write.format("delta").mode("overwrite").save(staging_path)
        n_failed = refused.count()
        counts = EmbedCounts(
            items=items.count(),
            embedded=0,
            photos_scored=scored.count() - failed.count(),
            quarantined={"undecodable_image": n_failed} if n_failed else {},
            arrow_batch_rows=batch_rows,
            full_reembed_reason=full_reason,
        )
        counts.embedded = counts.items - n_failed
    finally:
        scored.unpersist()
    staged = spark.read.format("delta").load(staging_path)
    by_flag = {r[DELETE_FLAG]: r["count"] for r in staged.groupBy(DELETE_FLAG).count().collect()}
    counts.upserted, counts.deleted = by_flag.get(False, 0), by_flag.get(True, 0)
    log.info(
        "embed: %d items, %d photos scored, %d rows changed, %d deleted, %d quarantined (model %s)",
        counts.items, counts.photos_scored, counts.upserted, counts.deleted, n_failed, manifest.version,
    )
    return counts


def _diff(state: DataFrame, previous: DataFrame, *, run_id: str, catalog_version: int) -> DataFrame:
    new, old = state.alias("n"), previous.alias("p")
    joined = new.join(old, F.col("n.item_id") == F.col("p.item_id"), "full_outer")
    differs = functools.reduce(
        lambda a, b: a | b, [~F.col(f"n.{c}").eqNullSafe(F.col(f"p.{c}")) for c in _COMPARED]
    )
    vector_changed = (
        F.col("p.item_id").isNull()
        | ~F.col("n.image_hash").eqNullSafe(F.col("p.image_hash"))
        | ~F.col("n.model_version").eqNullSafe(F.col("p.model_version"))
        | ~F.col("n.category").eqNullSafe(F.col("p.category"))
        | ~F.col("n.price_band").eqNullSafe(F.col("p.price_band"))
    )
    lineage = {"run_id": F.lit(run_id), "catalog_version": F.lit(catalog_version).cast("long")}
    upserts = joined.where(F.col("n.item_id").isNotNull() & differs).select(
        *[lineage.get(c, F.col(f"n.{c}")).alias(c) for c in EMBEDDINGS.column_names],
        F.lit(False).alias(DELETE_FLAG),
        vector_changed.alias(VECTOR_CHANGED),
        F.col("p.category").alias(PREVIOUS_CATEGORY),
        F.col("p.price_band").alias(PREVIOUS_BAND),
    )
    deletes = joined.where(F.col("n.item_id").isNull()).select(
        *[F.col(f"p.{c}").alias(c) for c in EMBEDDINGS.column_names],
        F.lit(True).alias(DELETE_FLAG),
        F.lit(True).alias(VECTOR_CHANGED),
        F.col("p.category").alias(PREVIOUS_CATEGORY),
        F.col("p.price_band").alias(PREVIOUS_BAND),
    )
    return conform_changes(upserts.unionByName(deletes))


def conform_changes(changes: DataFrame) -> DataFrame:
    """Cast staged embeddings changes to the table's schema, followed by the change columns."""
    return changes.select(
        *[changes[c.name].cast(c.data_type).alias(c.name) for c in EMBEDDINGS.columns],
        F.col(DELETE_FLAG).cast("boolean"),
        F.col(VECTOR_CHANGED).cast("boolean"),
        F.col(PREVIOUS_CATEGORY).cast("string"),
        F.col(PREVIOUS_BAND).cast("int"),
    )
