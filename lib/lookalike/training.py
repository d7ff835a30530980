"""Train the classifier and the embedding model on catalog photos fed from Spark through Petastorm."""

from __future__ import annotations

import logging
import math
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from lookalike.holdout import SPLIT_RULE, retrieval_metrics, split_column
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


def assign_split(df: DataFrame, *, holdout_fraction: float, validation_fraction: float) -> DataFrame:
    """Add ``split`` (train / validation / holdout), a fixed function of item_id (``lookalike.holdout``).

    The split does not depend on the model's seed, so every model version is measured on the same
    holdout items, and none of them ever trained on one.
    """
    return df.withColumn(
        "split", split_column(holdout_fraction=holdout_fraction, validation_fraction=validation_fraction)
    )


def training_frame(spark: SparkSession, config: Mapping[str, Any]) -> DataFrame:
    """Catalog rows joined with their photos, decoded to pixels, with a deterministic split.

    Returns
    -------
    DataFrame
        ``item_id``, ``category`` and ``article_type`` (null when unlabelled), ``split``,
        ``pixels``; rows whose photo does not decode are left out (the embed job quarantines them).
    """
    model = config["model"]
    catalog = read_table(spark, config, CATALOG).select("item_id", "category", "article_type", "image_hash")
    images = read_table(spark, config, IMAGES).select("image_hash", "content")
    frame = catalog.join(images, "image_hash").select(
        "item_id", "category", "article_type", pixels_udf(int(model["image_size"]))("content").alias("pixels")
    )
    frame = frame.where(F.col("pixels").isNotNull())
    return assign_split(
        frame,
        holdout_fraction=float(model["holdout_fraction"]),
        validation_fraction=float(model["validation_fraction"]),
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
    targets: Mapping[str, tuple[str, str]] | None = None,
    batch_size: int | None = None,
) -> Iterator[tuple[Any, int]]:
    """A ``tf.data`` dataset over ``df`` through Petastorm's Spark converter.

    Parameters
    ----------
    targets : mapping, optional
        For a model with named outputs: output name -> (label column, sample-weight column).
        Batches are then ``(pixels, {output: label}, {output: weight})``.
    batch_size : int, optional
        Rows per batch (default: ``train.batch_size``).

    Yields
    ------
    (tf.data.Dataset, int)
        Batches of ``(pixels, label)`` (or ``(pixels, pixels / 255)`` without labels, or the
        ``targets`` form) and the row count.
    """
    import tensorflow as tf
    from petastorm import TransformSpec
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    size = int(config["model"]["image_size"])
    batch_size = int(batch_size or config["train"]["batch_size"])
    cache = storage_root(config) + "/cache/petastorm"
    cache_url = cache if has_scheme(cache) else "file://" + cache  # storage_root made it absolute
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_url)

    if targets:
        fields = ["pixels", *dict.fromkeys(c for pair in targets.values() for c in pair)]
    else:
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
            if targets:
                dataset = dataset.map(
                    lambda row: (
                        row.pixels,
                        {name: getattr(row, label) for name, (label, _) in targets.items()},
                        {name: getattr(row, weight) for name, (_, weight) in targets.items()},
                    )
                )
            elif with_labels:
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
    return _weights_from_counts(labels.value_counts().to_dict(), num_classes)


def _weights_from_counts(counts: Mapping[int, int], num_classes: int) -> dict[int, float]:
    """``_class_weights`` from per-class item counts (classes absent from ``counts`` have none)."""
    per_class = np.array([counts.get(i, 0) for i in range(num_classes)], dtype=float)
    weights = per_class.sum() / (num_classes * np.maximum(per_class, 1.0))
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


EMBEDDINGS = ("autoencoder", "classifier", "resnet50", "lite0", "lite0_finetuned")


def _fit_curves(history: Any) -> dict[str, list[float]]:
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _index_column(values: list[str], column: str) -> Column:
    """The position of ``column``'s value in ``values``; null when it is not one of them."""
    return F.create_map(*[x for i, name in enumerate(values) for x in (F.lit(name), F.lit(i))])[F.col(column)]


def _weight_column(counts: Mapping[int, int], num_classes: int, label: str) -> Column:
    """Per-row inverse-frequency weight of ``label`` (``_class_weights``); 0 where the label is null."""
    weights = _weights_from_counts(counts, num_classes)
    return F.coalesce(F.create_map(*[x for i, w in weights.items() for x in (F.lit(i), F.lit(w))])[F.col(label)], F.lit(0.0))


def _train_small_classifier(
    spark: SparkSession, config: Mapping[str, Any], learnable: DataFrame, classes: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The small CNN category classifier, trained through Petastorm with early stopping on validation."""
    import keras

    from lookalike import models

    model_conf, train_conf = config["model"], config["train"]
    classifier = models.build_classifier(
        num_classes=len(classes), image_size=int(model_conf["image_size"]),
        embedding_dim=int(model_conf["embedding_dim"]), seed=int(model_conf["seed"]),
    )
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
    return classifier, {"classifier": _fit_curves(history)}


def _finetune_lite0(
    spark: SparkSession, config: Mapping[str, Any], learnable: DataFrame, classes: list[str]
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune pretrained Lite0 on category and articleType, fed through Petastorm.

    Tail classes: an articleType with fewer than ``train.min_article_type_count`` training items
    gets no head of its own (its items still train the category head, with articleType weight 0),
    and inverse-frequency weights, clipped to [0.5, 5], keep small classes from being ignored
    without letting a handful of photos dominate.
    """
    import keras

    from lookalike import models

    model_conf, train_conf = config["model"], config["train"]
    train_rows = learnable.where("split = 'train'")
    type_counts = train_rows.where(F.col("article_type").isNotNull()).groupBy("article_type").count().collect()
    min_type = int(train_conf["min_article_type_count"])
    article_types = sorted(r["article_type"] for r in type_counts if r["count"] >= min_type)
    if not article_types:
        raise ValueError(f"lite0_finetuned needs articleTypes with >= {min_type} labelled training items, found none")
    with_types = learnable.withColumn("article_label", _index_column(article_types, "article_type"))
    label_counts = {r["label"]: r["count"] for r in train_rows.groupBy("label").count().collect()}
    type_label_counts = {
        r["article_label"]: r["count"]
        for r in with_types.where("split = 'train' AND article_label IS NOT NULL").groupBy("article_label").count().collect()
    }
    weighted = with_types.select(
        "split", "pixels", "label",
        F.coalesce(F.col("article_label"), F.lit(0)).alias("article_label"),  # weight 0 below: any valid index
        _weight_column(label_counts, len(classes), "label").cast("float").alias("label_weight"),
        _weight_column(type_label_counts, len(article_types), "article_label").cast("float").alias("article_weight"),
    )
    log.info("lite0_finetuned: %d categories, %d articleTypes with >= %d training items", len(classes), len(article_types), min_type)

    trainer, classifier = models.build_lite0_finetune(
        num_classes=len(classes), num_article_types=len(article_types), image_size=int(model_conf["image_size"]),
        embedding_dim=int(model_conf["embedding_dim"]), train_from_block=int(train_conf["finetune_from_block"]),
        seed=int(model_conf["seed"]),
    )
    batch_size, epochs = int(train_conf["finetune_batch_size"]), int(train_conf["finetune_epochs"])
    targets = {"category": ("label", "label_weight"), "article_type": ("article_label", "article_weight")}
    with petastorm_dataset(spark, config, weighted.where("split = 'train'"), with_labels=True, shuffle=True, targets=targets,
                           batch_size=batch_size) as (
        train_ds,
        n_train,
    ), petastorm_dataset(spark, config, weighted.where("split = 'validation'"), with_labels=True, shuffle=False, targets=targets,
                           batch_size=batch_size) as (
        val_ds,
        n_val,
    ):
        steps = max(1, math.ceil(n_train / batch_size))
        # Cosine decay over the whole run: large steps while the new heads settle, small ones at the end.
        schedule = keras.optimizers.schedules.CosineDecay(float(train_conf["finetune_learning_rate"]), steps * epochs)
        smoothing = float(train_conf["finetune_label_smoothing"])
        trainer.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss={
                "category": models.sparse_crossentropy(len(classes), label_smoothing=smoothing),
                "article_type": models.sparse_crossentropy(len(article_types), label_smoothing=smoothing),
            },
            weighted_metrics={"category": ["accuracy"], "article_type": ["accuracy"]},
        )
        history = trainer.fit(
            train_ds,
            steps_per_epoch=steps,
            epochs=epochs,
            validation_data=val_ds if n_val else None,
            validation_steps=max(1, math.ceil(n_val / batch_size)) if n_val else None,
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)]
            if n_val
            else [],
            verbose=2,
        )
    curves = _fit_curves(history)
    curves["article_types"] = article_types  # the articleType head's classes, for reading the curves
    return classifier, {"lite0_finetuned": curves}


def embedding_quality(scorer: Any, labelled: pd.DataFrame, size: int, *, batch_size: int = 64) -> dict[str, Any]:
    """Retrieval metrics of a scorer's embeddings on the fixed holdout (``lookalike.holdout``).

    Parameters
    ----------
    scorer : keras.Model
        Outputs ``embedding`` (L2-normalised).
    labelled : pandas.DataFrame
        ``pixels``, ``category``, ``article_type`` and ``split`` of labelled items; holdout items
        are the queries, the others the candidates.
    size : int
        Image side of ``pixels``.

    Returns
    -------
    dict
        :func:`lookalike.holdout.retrieval_metrics`, plus ``embed_images_per_s`` (model only, on
        this driver; decode not included) and ``candidates``.
    """
    pixels = _pixels_array(labelled["pixels"], size)
    start = time.perf_counter()
    vectors = scorer.predict(pixels, batch_size=batch_size, verbose=0)["embedding"]
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = retrieval_metrics(
        vectors, labelled["category"].to_numpy(), labelled["article_type"].fillna("").to_numpy(),
        (labelled["split"] == "holdout").to_numpy(),
    )
    metrics["candidates"] = int((labelled["split"] != "holdout").sum())
    metrics["embed_images_per_s"] = float(len(pixels) / seconds) if seconds else None
    return metrics


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
        training curves, and ``evaluation``: the embedding's retrieval metrics on the holdout).

    Raises
    ------
    ValueError
        If ``model.embedding`` is not one of ``EMBEDDINGS``.
    """
    import keras

    from lookalike import models

    model_conf, train_conf = config["model"], config["train"]
    embedding = str(model_conf["embedding"])
    if embedding not in EMBEDDINGS:
        raise ValueError(f"model.embedding must be one of {', '.join(EMBEDDINGS)}, not {embedding!r}")
    size, dim, seed = int(model_conf["image_size"]), int(model_conf["embedding_dim"]), int(model_conf["seed"])
    frame = training_frame(spark, config).cache()
    try:
        labelled = frame.where(F.col("category").isNotNull())
        # The pretrained backbone learns a category from a few photos; the small CNNs need many.
        min_count = train_conf["finetune_min_class_count"] if embedding == "lite0_finetuned" else model_conf["min_class_count"]
        classes = choose_classes(labelled, min_count=int(min_count))
        learnable = labelled.withColumn("label", _index_column(classes, "category")).where(F.col("label").isNotNull())
        counts = {r["split"]: r["count"] for r in learnable.groupBy("split").count().collect()}
        log.info("classifier: %d classes, items per split %s", len(classes), counts)

        if embedding == "lite0_finetuned":
            classifier, curves = _finetune_lite0(spark, config, learnable, classes)
        else:
            classifier, curves = _train_small_classifier(spark, config, learnable, classes)

        holdout = learnable.where("split = 'holdout'").select("pixels", "label").toPandas()
        holdout_pixels = _pixels_array(holdout["pixels"], size)
        evaluation = evaluate_classifier(classifier, holdout_pixels, holdout["label"].to_numpy(dtype=int), classes)
        log.info("classifier holdout accuracy %.3f on %d items", evaluation["accuracy"] or float("nan"), evaluation["holdout_items"])

        embedder = None
        if embedding == "autoencoder":
            autoencoder, embedder = models.build_autoencoder(image_size=size, embedding_dim=dim, seed=seed)
            autoencoder.compile(optimizer=keras.optimizers.Adam(float(train_conf["learning_rate"])), loss="mse")
            unlabelled_too = frame
            limit = int(train_conf.get("max_autoencoder_items") or 0)
            if limit:
                unlabelled_too = unlabelled_too.orderBy(F.xxhash64("item_id")).limit(limit)
            batch_size = int(train_conf["batch_size"])
            with petastorm_dataset(spark, config, unlabelled_too, with_labels=False, shuffle=True) as (ae_ds, n_ae):
                ae_history = autoencoder.fit(
                    ae_ds,
                    steps_per_epoch=max(1, math.ceil(n_ae / batch_size)),
                    epochs=int(train_conf["autoencoder_epochs"]),
                    verbose=2,
                )
            curves["autoencoder"] = _fit_curves(ae_history)
        elif embedding == "resnet50":
            embedder = models.build_resnet50_embedder(image_size=size, weights_path=str(model_conf["resnet50_weights"]))
        elif embedding == "lite0":
            embedder = models.build_lite0_embedder(image_size=size)

        sample = frame.orderBy(F.xxhash64("item_id")).limit(int(train_conf.get("statistics_sample", 2048)))
        sample_pixels = _pixels_array(sample.select("pixels").toPandas()["pixels"], size)
        raw = (embedder or models.penultimate_embedder(classifier)).predict(sample_pixels, batch_size=256, verbose=0)
        scorer = models.build_scorer(
            classifier, embedder, embedding_mean=raw.mean(axis=0), embedding_variance=raw.var(axis=0)
        )
        quality = None
        evaluated = labelled.where(F.col("article_type").isNotNull())
        limit = int(train_conf["evaluation_items"])
        if limit:
            evaluated = evaluated.orderBy(F.xxhash64("item_id")).limit(limit)
        evaluated_rows = evaluated.select("pixels", "category", "article_type", "split").toPandas()
        if evaluated_rows["split"].eq("holdout").any() and evaluated_rows["split"].ne("holdout").any():
            quality = embedding_quality(scorer, evaluated_rows, size)
            quality["classifier_accuracy"] = evaluation["accuracy"]
            log.info("embedding holdout: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()})
        metrics = {
            "classifier": evaluation, "training_curves": curves, "items_per_split": counts, "classes": classes,
            "evaluation": quality,
            "split": {
                "rule": SPLIT_RULE,
                "holdout_fraction": float(model_conf["holdout_fraction"]),
                "validation_fraction": float(model_conf["validation_fraction"]),
            },
        }
        manifest = save_bundle(spark, config, scorer, classes=classes, embedding=embedding, metrics=metrics)
    finally:
        frame.unpersist()
    log.info("saved model %s (%s embedding, %d classes)", manifest.version, manifest.embedding, len(classes))
    return manifest, metrics
