"""Train the classifier and the embedding model on catalog photos fed from Spark through Petastorm."""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from lookalike.images import ImageDecodeError, decode_image
from lookalike.model_store import ModelManifest, save_bundle
from lookalike.tables import has_scheme, read_table, storage_root
from schemas import CATALOG, IMAGES

log = logging.getLogger(__name__)

# Petastorm's pyarrow 14 calls raise FutureWarnings on every batch; they are harmless.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow\..*")


def pixels_udf(image_size: int) -> Callable[..., Column]:
    """A pandas UDF: image bytes -> raw RGB uint8 pixels (``image_size``² x 3 bytes), null if undecodable.

    Decoding once in Spark, before Petastorm, means each epoch only reshapes bytes.
    """

    @pandas_udf("binary")
    def to_pixels(contents: pd.Series) -> pd.Series:
        out = []
        for content in contents:
            try:
                out.append(decode_image(content, image_size).tobytes())
            except ImageDecodeError:
                out.append(None)
        return pd.Series(out, dtype=object)

    return to_pixels


def assign_split(df: DataFrame, *, holdout_fraction: float, validation_fraction: float, seed: int) -> DataFrame:
    """Add ``split`` (train / validation / holdout), a deterministic function of item_id and seed."""
    bucket = F.pmod(F.xxhash64(F.col("item_id"), F.lit(seed)), F.lit(10_000)) / 10_000.0
    return df.withColumn(
        "split",
        F.when(bucket < holdout_fraction, "holdout")
        .when(bucket < holdout_fraction + validation_fraction, "validation")
        .otherwise("train"),
    )


def training_frame(spark: SparkSession, config: Mapping[str, Any]) -> DataFrame:
    """Catalog rows joined with their photos, decoded to pixels, with a deterministic split.

    Returns
    -------
    DataFrame
        ``item_id``, ``category`` (null when unlabelled), ``split``, ``pixels``; rows whose photo
        does not decode are left out (the embed job quarantines them).
    """
    model = config["model"]
    catalog = read_table(spark, config, CATALOG).select("item_id", "category", "image_hash")
    images = read_table(spark, config, IMAGES).select("image_hash", "content")
    frame = catalog.join(images, "image_hash").select(
        "item_id", "category", pixels_udf(int(model["image_size"]))("content").alias("pixels")
    )
    frame = frame.where(F.col("pixels").isNotNull())
    return assign_split(
        frame,
        holdout_fraction=float(model["holdout_fraction"]),
        validation_fraction=float(model["validation_fraction"]),
        seed=int(model["seed"]),
    )


def choose_classes(labelled: DataFrame, *, min_count: int) -> list[str]:
    """Categories with at least ``min_count`` training items, sorted; the classifier learns these."""
    counts = labelled.where("split = 'train'").groupBy("category").count().where(F.col("count") >= min_count)
    classes = sorted(r["category"] for r in counts.collect())
    if len(classes) < 2:
        raise ValueError(f"need at least 2 categories with >= {min_count} labelled training items, found {classes}")
    return classes


@contextmanager
def petastorm_dataset(
    spark: SparkSession,
    config: Mapping[str, Any],
    df: DataFrame,
    *,
    with_labels: bool,
    shuffle: bool,
    epochs: int | None = None,
) -> Iterator[tuple[Any, int]]:
    """A ``tf.data`` dataset over ``df`` through Petastorm's Spark converter.

    Yields
    ------
    (tf.data.Dataset, int)
        Batches of ``(pixels, label)`` (or ``(pixels, pixels / 255)`` without labels) and the row count.
    """
    import tensorflow as tf
    from petastorm import TransformSpec
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    size = int(config["model"]["image_size"])
    batch_size = int(config["train"]["batch_size"])
    cache = storage_root(config) + "/cache/petastorm"
    cache_url = cache if has_scheme(cache) else "file://" + cache  # storage_root made it absolute
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_url)

    fields = ["pixels", "label"] if with_labels else ["pixels"]

    def to_arrays(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf["pixels"] = [np.frombuffer(b, np.uint8).reshape(size, size, 3).astype(np.float32) for b in pdf["pixels"]]
        return pdf

    spec = TransformSpec(to_arrays, edit_fields=[("pixels", np.float32, (size, size, 3), False)], selected_fields=fields)
    converter = make_spark_converter(df.select(*fields))
    try:
        with converter.make_tf_dataset(
            batch_size=batch_size,
            num_epochs=epochs,
            workers_count=int(config["train"]["petastorm_workers"]),
            shuffling_queue_capacity=4 * batch_size if shuffle else 0,
            transform_spec=spec,
        ) as dataset:
            if with_labels:
                dataset = dataset.map(lambda row: (row.pixels, row.label))
            else:
                dataset = dataset.map(lambda row: (row.pixels, row.pixels / 255.0))
            yield dataset.prefetch(tf.data.AUTOTUNE), len(converter)
    finally:
        converter.delete()


def _pixels_array(column: pd.Series, size: int) -> np.ndarray:
    """Raw pixel bytes -> ``(n, size, size, 3)`` float32 array."""
    if not len(column):
        return np.zeros((0, size, size, 3), dtype=np.float32)
    return np.stack([np.frombuffer(b, np.uint8).reshape(size, size, 3) for b in column]).astype(np.float32)


def _class_weights(labels: pd.Series, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, clipped so tiny classes do not dominate."""
    counts = labels.value_counts().reindex(range(num_classes), fill_value=0).to_numpy(dtype=float)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return {i: float(np.clip(w, 0.5, 5.0)) for i, w in enumerate(weights)}


def evaluate_classifier(classifier: Any, pixels: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall) and confusion matrix on a split the model never saw."""
    predicted = np.argmax(classifier.predict(pixels, verbose=0), axis=1) if len(labels) else np.array([], int)
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = {
        name: {"items": int(matrix[i].sum()), "accuracy": float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None}
        for i, name in enumerate(classes)
    }
    return {
        "holdout_items": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else None,
        "per_class": per_class,
        "confusion_matrix": {"labels": classes, "rows_true_columns_predicted": matrix.tolist()},
    }


def train_models(spark: SparkSession, config: Mapping[str, Any]) -> tuple[ModelManifest, dict[str, Any]]:
    """Train the category classifier and the configured embedding model, and save them as one bundle.

    Parameters
    ----------
    spark : SparkSession
    config : mapping
        ``model`` and ``train`` sections choose the models and their training.

    Returns
    -------
    (ModelManifest, dict)
        The saved bundle and its metrics (holdout accuracy, per-class accuracy, confusion matrix,
        training curves).
    """
    import keras

    from lookalike import models

    model_conf, train_conf = config["model"], config["train"]
    size, dim, seed = int(model_conf["image_size"]), int(model_conf["embedding_dim"]), int(model_conf["seed"])
    frame = training_frame(spark, config).cache()
    try:
        labelled = frame.where(F.col("category").isNotNull())
        classes = choose_classes(labelled, min_count=int(model_conf["min_class_count"]))
        label_of = F.create_map(*[x for i, name in enumerate(classes) for x in (F.lit(name), F.lit(i))])
        learnable = labelled.withColumn("label", label_of[F.col("category")]).where(F.col("label").isNotNull())
        counts = {r["split"]: r["count"] for r in learnable.groupBy("split").count().collect()}
        log.info("classifier: %d classes, items per split %s", len(classes), counts)

        classifier = models.build_classifier(num_classes=len(classes), image_size=size, embedding_dim=dim, seed=seed)
        classifier.compile(
            optimizer=keras.optimizers.Adam(float(train_conf["learning_rate"])),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        train_labels = learnable.where("split = 'train'").select("label").toPandas()["label"]
        batch_size = int(train_conf["batch_size"])
        with petastorm_dataset(spark, config, learnable.where("split = 'train'"), with_labels=True, shuffle=True) as (
            train_ds,
            n_train,
        ), petastorm_dataset(spark, config, learnable.where("split = 'validation'"), with_labels=True, shuffle=False) as (
            val_ds,
            n_val,
        ):
            history = classifier.fit(
                train_ds,
                steps_per_epoch=max(1, math.ceil(n_train / batch_size)),
                epochs=int(train_conf["classifier_epochs"]),
                validation_data=val_ds if n_val else None,
                validation_steps=max(1, math.ceil(n_val / batch_size)) if n_val else None,
                class_weight=_class_weights(train_labels, len(classes)),
                # Keep the epoch that did best on the validation split (the holdout stays unseen).
                callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)]
                if n_val
                else [],
                verbose=2,
            )
        curves = {"classifier": {k: [float(v) for v in vals] for k, vals in history.history.items()}}

        holdout = learnable.where("split = 'holdout'").select("pixels", "label").toPandas()
        holdout_pixels = _pixels_array(holdout["pixels"], size)
        evaluation = evaluate_classifier(classifier, holdout_pixels, holdout["label"].to_numpy(dtype=int), classes)
        log.info("classifier holdout accuracy %.3f on %d items", evaluation["accuracy"] or float("nan"), evaluation["holdout_items"])

        embedding = str(model_conf["embedding"])
        embedder = None
        if embedding == "autoencoder":
            autoencoder, embedder = models.build_autoencoder(image_size=size, embedding_dim=dim, seed=seed)
            autoencoder.compile(optimizer=keras.optimizers.Adam(float(train_conf["learning_rate"])), loss="mse")
            unlabelled_too = frame
            limit = int(train_conf.get("max_autoencoder_items") or 0)
            if limit:
                unlabelled_too = unlabelled_too.orderBy(F.xxhash64("item_id")).limit(limit)
            with petastorm_dataset(spark, config, unlabelled_too, with_labels=False, shuffle=True) as (ae_ds, n_ae):
                ae_history = autoencoder.fit(
                    ae_ds,
                    steps_per_epoch=max(1, math.ceil(n_ae / batch_size)),
                    epochs=int(train_conf["autoencoder_epochs"]),
                    verbose=2,
                )
            curves["autoencoder"] = {k: [float(v) for v in vals] for k, vals in ae_history.history.items()}
        elif embedding == "resnet50":
            embedder = models.build_resnet50_embedder(image_size=size, weights_path=str(model_conf["resnet50_weights"]))
        elif embedding == "lite0":
            embedder = models.build_lite0_embedder(image_size=size)
        elif embedding != "classifier":
            raise ValueError(f"model.embedding must be autoencoder, classifier, resnet50 or lite0, not {embedding!r}")

        sample = frame.orderBy(F.xxhash64("item_id")).limit(int(train_conf.get("statistics_sample", 2048)))
        sample_pixels = _pixels_array(sample.select("pixels").toPandas()["pixels"], size)
        raw = (embedder or models.penultimate_embedder(classifier)).predict(sample_pixels, batch_size=256, verbose=0)
        scorer = models.build_scorer(
            classifier, embedder, embedding_mean=raw.mean(axis=0), embedding_variance=raw.var(axis=0)
        )
        metrics = {"classifier": evaluation, "training_curves": curves, "items_per_split": counts, "classes": classes}
        manifest = save_bundle(spark, config, scorer, classes=classes, embedding=embedding, metrics=metrics)
    finally:
        frame.unpersist()
    log.info("saved model %s (%s embedding, %d classes)", manifest.version, manifest.embedding, len(classes))
    return manifest, metrics
