"""Train the classifier and the embedding model on catalog photos fed from Spark through Petastorm."""

from __future__ import annotations

import logging
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from lookalike.holdout import SPLIT_RULE, retrieval_metrics, split_column
from lookalike.images import ImageDecodeError, decode_image
from lookalike.label_audit import title_label_conflicts
from lookalike.model_store import (
    ModelManifest, load_manifest, load_scorer_from_bytes, pretrained_lite0, read_scorer_bytes, save_bundle,
)
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


def reader_options(config: Mapping[str, Any]) -> dict[str, int | None]:
    """Petastorm reader arguments: seeded and single-threaded when ``train.reproducible`` is set.

    Petastorm shuffles its row groups with an unseeded generator, and with several reader threads
    the order they are handed over in can change at the start of each pass, so two runs of the same
    job fed the network different batches. One thread reading row groups in an order drawn from
    ``model.seed`` (from a sorted file list) makes the batches, and with them the trained weights,
    the same in every run; TensorFlow's CPU kernels and the seeded augmentation already are.

    Parameters
    ----------
    config : mapping
        ``train.reproducible``, ``train.petastorm_workers`` and ``model.seed``.

    Returns
    -------
    dict
        ``workers_count`` and ``seed`` for ``make_tf_dataset``.
    """
    if bool(config["train"]["reproducible"]):
        # Petastorm takes a seed of 0 for none.
        return {"workers_count": 1, "seed": int(config["model"]["seed"]) + 1}
    return {"workers_count": int(config["train"]["petastorm_workers"]), "seed": None}


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
    ids: str | None = None,
) -> Iterator[tuple[Any, int]]:
    """A ``tf.data`` dataset over ``df`` through Petastorm's Spark converter.

    Parameters
    ----------
    shuffle : bool
        For training: the rows in a random order (fixed by ``model.seed``), and Petastorm's row
        groups and shuffling queue on top of it each epoch (seeded too with ``train.reproducible``;
        see ``reader_options``).
    epochs : int, optional
        Passes over ``df``, each row once in each (default: endless, for ``fit`` with
        ``steps_per_epoch``). A finite read is read by one Petastorm thread.
    targets : mapping, optional
        For a model with named outputs: output name -> (target column, sample-weight column).
        Batches are then ``(pixels, {output: target}, {output: weight})``.
    batch_size : int, optional
        Rows per batch (default: ``train.batch_size``).
    ids : str, optional
        A key column: batches are then ``(pixels, key)``, for scoring rows whatever order they come in.

    Yields
    ------
    (tf.data.Dataset, int)
        Batches of ``(pixels, label)`` (or ``(pixels, pixels / 255)`` without labels, or the
        ``targets`` or ``ids`` form) and the row count.
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
    elif ids:
        fields = ["pixels", ids]
    else:
        fields = ["pixels", "label"] if with_labels else ["pixels"]

    def to_arrays(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf["pixels"] = [np.frombuffer(b, np.uint8).reshape(size, size, 3).astype(np.float32) for b in pdf["pixels"]]
        return pdf

    spec = TransformSpec(to_arrays, edit_fields=[("pixels", np.float32, (size, size, 3), False)], selected_fields=fields)
    rows = df.select(*fields)
    if shuffle:
        # Petastorm shuffles whole row groups, then rows in a queue of a few batches: rows stored in
        # runs (labelled rows in other files than pseudo-labelled ones; items by id, which run in
        # categories) would make batches of one kind. A random order first makes every batch a sample.
        rows = rows.orderBy(F.rand(int(config["model"]["seed"])))
    options = reader_options(config)
    if epochs is not None:
        # Petastorm 0.13.1's thread pool can end a finite read early: it asks whether its workers are
        # idle before asking whether its ventilator is done, and row groups ventilated between the two
        # questions are never read (half the rows, in a third of the reads of eight row groups). An
        # endless read cannot end early; one thread hands its passes over whole and in order, so the
        # first passes' rows are cut from it.
        options = {**options, "workers_count": 1}
    converter = make_spark_converter(rows)
    # Spark lists the converter's files in no fixed order, and the reader's seeded order is of that list.
    converter.file_urls = sorted(converter.file_urls)
    try:
        with converter.make_tf_dataset(
            batch_size=batch_size, num_epochs=None, shuffling_queue_capacity=0, transform_spec=spec, **options
        ) as dataset:
            if epochs is not None:
                dataset = dataset.unbatch().take(len(converter) * epochs)
                if not shuffle:
                    dataset = dataset.batch(batch_size)
            if shuffle:
                # Petastorm's own queue would draw from TensorFlow's global seed: this one draws from the reader's.
                rows_read = dataset if epochs is not None else dataset.unbatch()
                dataset = rows_read.shuffle(4 * batch_size, seed=options["seed"]).batch(batch_size)
            if targets:
                dataset = dataset.map(
                    lambda row: (
                        row.pixels,
                        {name: getattr(row, label) for name, (label, _) in targets.items()},
                        {name: getattr(row, weight) for name, (_, weight) in targets.items()},
                    )
                )
            elif ids:
                dataset = dataset.map(lambda row: (row.pixels, getattr(row, ids)))
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


def evaluate_classifier(
    classifier: Any, pixels: np.ndarray, labels: np.ndarray, classes: list[str], *,
    item_ids: np.ndarray | None = None, disputed: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall) and confusion matrix on a split the model never saw.

    With ``item_ids``, also ``title_consistent``: :func:`title_consistent_accuracy` with ``disputed``.
    """
    predicted = np.argmax(classifier.predict(pixels, verbose=0), axis=1) if len(labels) else np.array([], int)
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = {
        name: {"items": int(matrix[i].sum()), "accuracy": float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None}
        for i, name in enumerate(classes)
    }
    metrics: dict[str, Any] = {
        "holdout_items": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else None,
        "per_class": per_class,
        "confusion_matrix": {"labels": classes, "rows_true_columns_predicted": matrix.tolist()},
    }
    if item_ids is not None:
        metrics["title_consistent"] = title_consistent_accuracy(predicted, labels, item_ids, disputed)
    return metrics


EMBEDDINGS = ("autoencoder", "classifier", "resnet50", "lite0", "lite0_finetuned")


def disputed_labels(spark: SparkSession, config: Mapping[str, Any]) -> DataFrame:
    """The catalog's labelled items whose own title contradicts their category (``lookalike.label_audit``).

    Thresholds: ``train.label_audit_min_items`` and ``train.label_audit_min_share``.
    """
    catalog = read_table(spark, config, CATALOG).select("item_id", "category", "article_type", "title")
    train_conf = config["train"]
    return title_label_conflicts(catalog, min_items=int(train_conf["label_audit_min_items"]),
                                 min_share=float(train_conf["label_audit_min_share"]))


def title_consistent_accuracy(predicted: np.ndarray, labels: np.ndarray, item_ids: np.ndarray, disputed: set[str]) -> dict[str, Any]:
    """Holdout accuracy over the queries whose label their title does not contradict.

    Parameters
    ----------
    predicted, labels : numpy.ndarray
        Predicted and labelled class indices of the holdout queries.
    item_ids : numpy.ndarray
        Their item ids.
    disputed : set of str
        Item ids whose label the audit disputes (:func:`disputed_labels`).

    Returns
    -------
    dict
        ``holdout_items`` and ``accuracy`` over the undisputed queries; ``disputed`` (the
        left-out queries' ids, sorted) and ``disputed_correct`` (how many of them the model
        matched to their disputed label anyway).
    """
    undisputed = ~np.isin(item_ids, sorted(disputed))
    hits = predicted == labels
    return {
        "holdout_items": int(undisputed.sum()),
        "accuracy": float(hits[undisputed].mean()) if undisputed.any() else None,
        "disputed": sorted(str(i) for i in item_ids[~undisputed]),
        "disputed_correct": int(hits[~undisputed].sum()),
    }


def _holdout_arrays(learnable: DataFrame, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, class indices and item ids of the holdout rows of ``learnable`` (``split``, ``label``), on the driver."""
    holdout = learnable.where("split = 'holdout'").select("item_id", "pixels", "label").toPandas()
    return (_pixels_array(holdout["pixels"], size), holdout["label"].to_numpy(dtype=int),
            holdout["item_id"].to_numpy(dtype=str))


class _ScorerProbabilities:
    """A saved scorer seen as a classifier: ``predict`` gives its category probabilities."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def predict(self, pixels: np.ndarray, verbose: int = 0) -> np.ndarray:
        return self.scorer.predict(pixels, batch_size=32, verbose=verbose)["probabilities"]


def reevaluate_classifier(spark: SparkSession, config: Mapping[str, Any], version: str) -> dict[str, Any]:
    """A stored version's classifier measured again on today's catalog holdout, with the label audit.

    The split is the config's ``model.holdout_fraction`` and ``model.validation_fraction`` (those
    the version was trained with, unless changed since: its ``metrics.json`` records them).

    Returns
    -------
    dict
        :func:`evaluate_classifier` over the holdout queries of the version's classes, with
        ``title_consistent``, and ``disputed_labels`` (catalog-wide).
    """
    manifest = load_manifest(spark, config, version)
    scorer = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    frame = training_frame(spark, {**config, "model": {**config["model"], "image_size": manifest.image_size}})
    learnable = frame.withColumn("label", _index_column(manifest.classes, "category")).where(F.col("label").isNotNull())
    pixels, labels, item_ids = _holdout_arrays(learnable, manifest.image_size)
    disputed = {r["item_id"] for r in disputed_labels(spark, config).select("item_id").collect()}
    evaluation = evaluate_classifier(_ScorerProbabilities(scorer), pixels, labels, manifest.classes,
                                     item_ids=item_ids, disputed=disputed)
    evaluation["disputed_labels"] = len(disputed)
    return evaluation


def _fit_curves(history: Any) -> dict[str, list[float]]:
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _index_column(values: list[str], column: str) -> Column:
    """The position of ``column``'s value in ``values``; null when it is not one of them."""
    return F.create_map(*[x for i, name in enumerate(values) for x in (F.lit(name), F.lit(i))])[F.col(column)]


CLASS_WEIGHTINGS = ("inverse", "none")


def _weight_column(counts: Mapping[int, int], num_classes: int, label: str, weighting: str) -> Column:
    """Per-row weight of ``label``: inverse frequency (``_class_weights``) or 1; 0 where the label is null."""
    if weighting == "none":
        return F.when(F.col(label).isNotNull(), F.lit(1.0)).otherwise(F.lit(0.0))
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


def _one_hot_column(index: Column, size: int) -> Column:
    """A float array of ``size`` with 1 at ``index``; all zeros where ``index`` is null."""
    return F.array(*[F.when(index == i, F.lit(1.0)).otherwise(F.lit(0.0)).cast("float") for i in range(size)])


def _top_class(target: str) -> Column:
    """The index of the largest value of a target array (0-based): a soft target's class, for its weight."""
    return (F.array_position(F.col(target), F.array_max(F.col(target))) - 1).cast("int")


def _with_target_weights(rows: DataFrame, num_classes: int, num_article_types: int, weighting: str = "inverse") -> DataFrame:
    """Add ``category_weight`` and ``type_weight``: the weights of each row's top class.

    With ``weighting = "inverse"``, inverse-frequency weights counted over the train split; with
    ``"none"``, 1 for every row. Either way a row whose articleType target is all zeros (no
    articleType of the head) gets articleType weight 0.
    """
    with_top = rows.withColumn("category_top", _top_class("category_target")).withColumn(
        "type_top", F.when(F.array_max("type_target") > 0, _top_class("type_target"))
    )
    train = with_top.where("split = 'train'")
    category_counts: dict[int, int] = {}
    type_counts: dict[int, int] = {}
    if weighting == "inverse":
        category_counts = {r[0]: r[1] for r in train.groupBy("category_top").count().collect()}
        type_counts = {r[0]: r[1] for r in train.where("type_top IS NOT NULL").groupBy("type_top").count().collect()}
    return with_top.select(
        *rows.columns,
        _weight_column(category_counts, num_classes, "category_top", weighting).cast("float").alias("category_weight"),
        _weight_column(type_counts, num_article_types, "type_top", weighting).cast("float").alias("type_weight"),
    )


@dataclass
class FittedLite0:
    """One trained fine-tuned Lite0: the two-headed trainer, its category classifier, its training
    curves, and how many rows it trained on."""

    trainer: Any
    classifier: Any
    curves: dict[str, list[float]]
    items: int


def _fit_lite0(
    spark: SparkSession, config: Mapping[str, Any], rows: DataFrame, *, num_classes: int, num_article_types: int, epochs: int,
    imagenet: Any,
) -> FittedLite0:
    """Train one fine-tuned Lite0 on ``rows``' train split, with curves on its validation split.

    With ``train.finetune_early_stopping_patience`` > 0 it stops early on the validation loss and
    restores the best epoch; with 0 it runs the whole cosine schedule to a learning rate of 0, and
    with ``train.finetune_train_on_validation`` the validation items train too (nothing is chosen
    on them then; the curves have no validation figures).

    ``rows`` holds ``split``, ``pixels`` and the probability targets ``category_target`` and
    ``type_target`` (one-hot for labelled items, a teacher's probabilities for pseudo-labelled ones).

    Returns
    -------
    FittedLite0
    """
    import keras

    from lookalike import models

    model_conf, train_conf = config["model"], config["train"]
    patience = int(train_conf["finetune_early_stopping_patience"])
    if bool(train_conf["finetune_train_on_validation"]):
        rows = rows.withColumn("split", F.when(F.col("split") == "validation", "train").otherwise(F.col("split")))
    weighted = _with_target_weights(rows, num_classes, num_article_types, str(train_conf["finetune_class_weights"]))
    trainer, classifier = models.build_lite0_finetune(
        num_classes=num_classes, num_article_types=num_article_types, image_size=int(model_conf["image_size"]),
        embedding_dim=int(model_conf["embedding_dim"]), train_from_block=int(train_conf["finetune_from_block"]),
        seed=int(model_conf["seed"]), imagenet=imagenet,
    )
    batch_size = int(train_conf["finetune_batch_size"])
    targets = {"category": ("category_target", "category_weight"), "article_type": ("type_target", "type_weight")}
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
        # Stopping early restores a mid-schedule epoch, taken at a learning rate still near its start.
        trainer.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss={
                "category": keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                "article_type": keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
            },
            weighted_metrics={"category": ["categorical_accuracy"], "article_type": ["categorical_accuracy"]},
        )
        history = trainer.fit(
            train_ds,
            steps_per_epoch=steps,
            epochs=epochs,
            validation_data=val_ds if n_val else None,
            validation_steps=max(1, math.ceil(n_val / batch_size)) if n_val else None,
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)]
            if n_val and patience
            else [],
            verbose=2,
        )
    return FittedLite0(trainer, classifier, _fit_curves(history), n_train)


def pseudo_labels(
    spark: SparkSession, config: Mapping[str, Any], teacher: Any, unlabelled: DataFrame, *, threshold: float
) -> DataFrame:
    """A teacher's category and articleType probabilities for the unlabelled photos it is confident about.

    The photos come through Petastorm, like the training data, and are scored on the driver.

    Parameters
    ----------
    teacher : keras.Model
        A trainer of :func:`lookalike.models.build_lite0_finetune`.
    unlabelled : DataFrame
        ``item_id`` and ``pixels``.
    threshold : float
        Least top category probability for a photo to be kept: many unlabelled photos are of
        kinds no learnt category covers, and a teacher's guesses on them would teach noise.

    Returns
    -------
    DataFrame
        ``item_id``, ``category_target`` and ``type_target`` (float arrays, the probabilities).
    """
    scored: list[tuple[str, list[float], list[float]]] = []
    seen: set[str] = set()
    with petastorm_dataset(spark, config, unlabelled.select("item_id", "pixels"), with_labels=False, shuffle=False,
                           epochs=1, ids="item_id") as (dataset, count):
        for pixels, item_ids in dataset:
            out = teacher.predict_on_batch(pixels)
            category, article_type = out["category"], out["article_type"]
            for item_id, p_category, p_type in zip(item_ids.numpy(), category, article_type):
                seen.add(item_id.decode("utf-8"))
                if p_category.max() >= threshold:
                    scored.append((item_id.decode("utf-8"), p_category.tolist(), p_type.tolist()))
    if len(seen) != count:
        raise RuntimeError(f"the Petastorm reader gave {len(seen)} distinct unlabelled photos of {count}")
    return spark.createDataFrame(scored, "item_id string, category_target array<float>, type_target array<float>")


@dataclass
class Finetuned:
    """What fine-tuning Lite0 produced.

    Attributes
    ----------
    classifier : keras.Model
        The bundle's network (the last student, with self-training).
    curves : dict
        Its training curves.
    article_types : list of str
        The articleType heads' classes.
    items : int
        Rows the bundle's network trained on (labelled and pseudo-labelled).
    teachers : list of keras.Model
        With self-training: each round's teacher, the first trained on the labelled items alone.
    self_training : dict or None
        With self-training: unlabelled photos scored, the threshold, the students' epochs, and per
        round (``rounds``) the photos pseudo-labelled and the teacher's training curves.
    """

    classifier: Any
    curves: dict[str, list[float]]
    article_types: list[str]
    items: int
    teachers: list[Any] = field(default_factory=list)
    self_training: dict[str, Any] | None = None


def _finetune_lite0(
    spark: SparkSession, config: Mapping[str, Any], learnable: DataFrame, classes: list[str], unlabelled: DataFrame,
    imagenet: Any,
) -> Finetuned:
    """Fine-tune pretrained Lite0 on category and articleType, fed through Petastorm; then, by default, self-train.

    Tail classes: an articleType with fewer than ``train.min_article_type_count`` training items
    gets no head of its own (its items still train the category head, with articleType weight 0).
    Rows count alike (``train.finetune_class_weights = "none"``, the default, which ranks better)
    or by their class's inverse frequency, clipped to [0.5, 5] (``"inverse"``).

    Self-training (``train.self_training_rounds`` > 0): the network trained on the labelled items
    is the first teacher. It scores the catalog's unlabelled photos (``unlabelled``: ``item_id``,
    ``pixels``), and a student, from the same pretrained start, trains for
    ``train.self_training_epochs`` on the labelled items plus the unlabelled photos whose top
    category probability reaches ``train.pseudo_label_threshold``, with the teacher's
    probabilities as their targets. Each further round's teacher is the previous round's student.
    Every network starts from ``imagenet``, the converted Lite0 of the model store
    (``lookalike.model_store.pretrained_lite0``).
    """
    train_conf = config["train"]
    train_rows = learnable.where("split = 'train'")
    type_counts = train_rows.where(F.col("article_type").isNotNull()).groupBy("article_type").count().collect()
    min_type = int(train_conf["min_article_type_count"])
    article_types = sorted(r["article_type"] for r in type_counts if r["count"] >= min_type)
    if not article_types:
        raise ValueError(f"lite0_finetuned needs articleTypes with >= {min_type} labelled training items, found none")
    labelled = learnable.select(
        "split", "pixels",
        _one_hot_column(F.col("label"), len(classes)).alias("category_target"),
        # All zeros (articleType weight 0) for a type without a head output of its own.
        _one_hot_column(_index_column(article_types, "article_type"), len(article_types)).alias("type_target"),
    )
    log.info("lite0_finetuned: %d categories, %d articleTypes with >= %d training items", len(classes), len(article_types), min_type)
    sizes = {"num_classes": len(classes), "num_article_types": len(article_types), "imagenet": imagenet}
    fitted = _fit_lite0(spark, config, labelled, **sizes, epochs=int(train_conf["finetune_epochs"]))
    rounds, student_epochs = int(train_conf["self_training_rounds"]), int(train_conf["self_training_epochs"])
    if not (rounds and student_epochs):
        return Finetuned(fitted.classifier, fitted.curves, article_types, fitted.items)

    limit = int(train_conf["max_pseudo_label_items"])
    if limit:
        unlabelled = unlabelled.orderBy(F.xxhash64("item_id")).limit(limit)
    unlabelled = unlabelled.select("item_id", "pixels")  # of the cached training frame
    threshold = float(train_conf["pseudo_label_threshold"])
    record: dict[str, Any] = {"unlabelled": unlabelled.count(), "threshold": threshold, "epochs": student_epochs, "rounds": []}
    teachers = []
    for round_number in range(1, rounds + 1):
        confident = pseudo_labels(spark, config, fitted.trainer, unlabelled, threshold=threshold).cache()
        try:
            pseudo_labelled = confident.count()
            log.info("self-training round %d of %d: %d of %d unlabelled photos pseudo-labelled (teacher probability >= %s)",
                     round_number, rounds, pseudo_labelled, record["unlabelled"], threshold)
            record["rounds"].append({"pseudo_labelled": pseudo_labelled, "teacher_curves": fitted.curves,
                                     "teacher_items": fitted.items})
            teachers.append(fitted.classifier)
            pseudo = confident.join(unlabelled, "item_id").select(
                F.lit("train").alias("split"), "pixels", "category_target", "type_target"
            )
            fitted = _fit_lite0(spark, config, labelled.unionByName(pseudo), **sizes, epochs=student_epochs)
        finally:
            confident.unpersist()
    return Finetuned(fitted.classifier, fitted.curves, article_types, fitted.items, teachers=teachers, self_training=record)


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
        training curves, ``evaluation``: the embedding's retrieval metrics on the holdout, and
        ``pretrained``: for the Lite0 embeddings, the source of the ImageNet weights they start from).

    Raises
    ------
    ValueError
        If ``model.embedding`` is not one of ``EMBEDDINGS``, ``train.finetune_class_weights`` not one
        of ``CLASS_WEIGHTINGS``, or early stopping is asked for with the validation items training too.
    """
    import keras

    from lookalike import models

    model_conf, train_conf = config["model"], config["train"]
    embedding = str(model_conf["embedding"])
    if embedding not in EMBEDDINGS:
        raise ValueError(f"model.embedding must be one of {', '.join(EMBEDDINGS)}, not {embedding!r}")
    if str(train_conf["finetune_class_weights"]) not in CLASS_WEIGHTINGS:
        raise ValueError(f"train.finetune_class_weights must be one of {', '.join(CLASS_WEIGHTINGS)}, "
                         f"not {train_conf['finetune_class_weights']!r}")
    if embedding == "lite0_finetuned" and train_conf["finetune_train_on_validation"] and int(train_conf["finetune_early_stopping_patience"]):
        raise ValueError("train.finetune_early_stopping_patience needs held-out validation items: "
                         "set train.finetune_train_on_validation = false, or the patience to 0")
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

        finetuned = None
        # Converted from its checkpoint once, then read from the model store.
        imagenet, pretrained = pretrained_lite0(spark, config) if embedding in ("lite0", "lite0_finetuned") else (None, None)
        if embedding == "lite0_finetuned":
            finetuned = _finetune_lite0(spark, config, learnable, classes, frame.where(F.col("category").isNull()), imagenet)
            classifier, curves = finetuned.classifier, {"lite0_finetuned": finetuned.curves}
        else:
            classifier, curves = _train_small_classifier(spark, config, learnable, classes)

        holdout_pixels, holdout_labels, holdout_ids = _holdout_arrays(learnable, size)
        disputed = {r["item_id"] for r in disputed_labels(spark, config).select("item_id").collect()}
        audit = {"item_ids": holdout_ids, "disputed": disputed}
        evaluation = evaluate_classifier(classifier, holdout_pixels, holdout_labels, classes, **audit)
        evaluation["disputed_labels"] = len(disputed)
        log.info("classifier holdout accuracy %.3f on %d items; %.3f on the %d whose title does not dispute their label",
                 evaluation["accuracy"] or float("nan"), evaluation["holdout_items"],
                 evaluation["title_consistent"]["accuracy"] or float("nan"), evaluation["title_consistent"]["holdout_items"])
        self_training = finetuned.self_training if finetuned else None
        if self_training:
            for number, (teacher, record) in enumerate(zip(finetuned.teachers, self_training["rounds"]), start=1):
                teacher_evaluation = evaluate_classifier(teacher, holdout_pixels, holdout_labels, classes, **audit)
                record["teacher_accuracy"] = teacher_evaluation["accuracy"]
                record["teacher_accuracy_title_consistent"] = teacher_evaluation["title_consistent"]["accuracy"]
                log.info("self-training round %d: its teacher's holdout accuracy was %.3f", number,
                         record["teacher_accuracy"] or float("nan"))

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
            embedder = models.build_lite0_embedder(image_size=size, imagenet=imagenet)

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
            quality["classifier_accuracy_title_consistent"] = evaluation["title_consistent"]["accuracy"]
            log.info("embedding holdout: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()})
        metrics = {
            "classifier": evaluation, "training_curves": curves, "items_per_split": counts, "classes": classes,
            "evaluation": quality, "self_training": self_training, "trained_items": finetuned.items if finetuned else None,
            "article_types": finetuned.article_types if finetuned else None,
            "pretrained": pretrained,
            # How this version was trained, so the registry can tell versions of different settings apart.
            "settings": {"model": dict(model_conf), "train": dict(train_conf)},
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
