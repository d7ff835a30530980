"""Scoring through the pandas UDF: results do not depend on how Spark batches the photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.model_store import save_bundle, ship_scorer
from lookalike.scoring import ARROW_MAX_BYTES_KEY, configure_arrow_batches, make_score_udf

keras = pytest.importorskip("keras")
from lookalike.models import build_classifier, build_scorer  # noqa: E402

CLASSES = ["Bags", "Shoes", "Topwear"]
PHOTOS = 130  # more than two batches of 64, not a multiple of it
MAX_BATCH_ROWS = 1024  # conf/defaults.toml embed.max_rows_per_batch
TOLERANCE = 1e-5  # float32 sums over a different batch shape differ in the last bits only


def score_with_batch_rows(spark, udf, photos, rows: int) -> dict[str, tuple]:
    """Score every photo with Arrow batches of ``rows`` rows; (category, confidence, embedding) per photo."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows))
    scored = photos.repartition(2, "name").withColumn("out", udf("content")).select("name", "out.*").collect()
    return {r["name"]: (r["predicted_category"], r["confidence"], np.array(r["embedding"])) for r in scored}


def test_embeddings_do_not_depend_on_the_batch_size(spark, make_config, photo_subset: Path):
    """Arrow batches of 1, 64 and the configured maximum give the same outputs to the last bit when the model is
    called with the same number of photos; another call size gives the same categories and outputs within 1e-5."""
    config = make_config()
    classifier = build_classifier(num_classes=len(CLASSES), image_size=32, embedding_dim=16, seed=3)
    manifest = save_bundle(spark, config, build_scorer(classifier), classes=CLASSES, embedding="classifier", metrics={})
    ship_scorer(spark, config, manifest)
    paths = sorted((photo_subset / "images").glob("*.jpg"))[:PHOTOS]
    photos = spark.createDataFrame([(p.name, p.read_bytes()) for p in paths], "name string, content binary")
    # (Arrow batch rows, photos per model call); 7 divides neither partition (65 photos each).
    settings = [(1, 64), (64, 64), (MAX_BATCH_ROWS, 64), (MAX_BATCH_ROWS, 7)]
    try:
        results = {
            (rows, call): score_with_batch_rows(
                spark, make_score_udf(manifest, tf_threads=1, model_batch_rows=call), photos, rows
            )
            for rows, call in settings
        }
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")

    reference = results[(MAX_BATCH_ROWS, 64)]
    assert len(reference) == PHOTOS
    embeddings = np.stack([reference[name][2] for name in sorted(reference)])
    assert np.unique(embeddings.round(4), axis=0).shape[0] > PHOTOS // 2  # the photos do embed differently
    for setting, tolerance in (((1, 64), 0.0), ((64, 64), 0.0), ((MAX_BATCH_ROWS, 7), TOLERANCE)):
        assert results[setting].keys() == reference.keys()
        for name, (category, confidence, embedding) in results[setting].items():
            assert category == reference[name][0]
            assert abs(confidence - reference[name][1]) <= tolerance
            assert np.abs(embedding - reference[name][2]).max() <= tolerance, (setting, name)


def test_model_batch_rows_must_be_positive(spark, make_config):
    config = make_config()
    classifier = build_classifier(num_classes=len(CLASSES), image_size=32, embedding_dim=16, seed=3)
    manifest = save_bundle(spark, config, build_scorer(classifier), classes=CLASSES, embedding="classifier", metrics={})
    with pytest.raises(ValueError, match="model_batch_rows must be at least 1, not 0"):
        make_score_udf(manifest, tf_threads=1, model_batch_rows=0)


def test_arrow_batches_are_bounded_by_tensor_rows_and_by_photo_bytes(spark, make_config):
    """64 px float32 tensors: 672 rows per 32 MiB batch (not Spark's 10,000), and photo bytes capped at the same 32 MiB."""
    config = make_config()
    try:
        rows = configure_arrow_batches(spark, config, image_size=64)
        # 682 rows of 48 KiB fit, rounded down to a multiple of embed.model_batch_rows (16).
        assert 33554432 // (64 * 64 * 3 * 4) == 682 and config["embed"]["model_batch_rows"] == 16 and rows == 672
        assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "672"
        assert spark.conf.get(ARROW_MAX_BYTES_KEY) == str(config["embed"]["arrow_batch_bytes"]) == "33554432"
        assert configure_arrow_batches(spark, config, image_size=32) == 1024  # embed.max_rows_per_batch
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
        spark.conf.unset(ARROW_MAX_BYTES_KEY)


def test_executors_load_the_scorer_from_the_shipped_file_and_check_its_hash(spark, make_config, photo_subset: Path):
    """The scorer reaches executors as a SparkFiles file (not a broadcast); a hash that does not match fails the task."""
    import dataclasses

    from pyspark.errors import PythonException

    config = make_config()
    classifier = build_classifier(num_classes=len(CLASSES), image_size=32, embedding_dim=16, seed=4)
    manifest = save_bundle(spark, config, build_scorer(classifier), classes=CLASSES, embedding="classifier", metrics={})
    ship_scorer(spark, config, manifest)
    assert any(uri.endswith(f"/{manifest.version}/{manifest.scorer_file}") for uri in spark.sparkContext.listFiles)
    photo = sorted((photo_subset / "images").glob("*.jpg"))[0]
    frame = spark.createDataFrame([(photo.read_bytes(),)], "content binary")
    scored = frame.select(make_score_udf(manifest, tf_threads=1)("content").alias("o")).first()["o"]
    assert scored["predicted_category"] in CLASSES and len(scored["embedding"]) == 16

    tampered = dataclasses.replace(manifest, version=manifest.version + "-tampered", scorer_sha256="0" * 64)
    with pytest.raises(PythonException, match="does not match the recorded 000000000000"):
        frame.select(make_score_udf(tampered, tf_threads=1)("content")).collect()
