"""Training-data preparation and held-out metrics, on tiny frames."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pyspark.testing import assertDataFrameEqual

from lookalike.holdout import split_of
from lookalike.training import _class_weights, assign_split, choose_classes, evaluate_classifier, pixels_udf


def _jpeg(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_split_is_fixed_by_item_id_and_agrees_with_the_evaluation_split(spark):
    """Spark's split equals ``split_of`` (the evaluation command's) id by id; shares near 20/10/70."""
    ids = [str(i) for i in range(10000, 12000)] + ["ITEM-é", ""]
    frame = spark.createDataFrame([(i,) for i in ids], "item_id string")
    split = assign_split(frame, holdout_fraction=0.2, validation_fraction=0.1)
    expected = spark.createDataFrame(
        [(i, split_of(i, holdout_fraction=0.2, validation_fraction=0.1)) for i in ids], "item_id string, split string"
    )
    assertDataFrameEqual(split, expected)
    shares = {r["split"]: r["count"] / len(ids) for r in split.groupBy("split").count().collect()}
    assert shares["holdout"] == pytest.approx(0.20, abs=0.03)
    assert shares["validation"] == pytest.approx(0.10, abs=0.03)
    assert shares["train"] == pytest.approx(0.70, abs=0.03)
    with pytest.raises(ValueError, match="add up to at most 1"):
        split_of("1", holdout_fraction=0.8, validation_fraction=0.3)


def test_classes_are_those_with_enough_training_items(spark):
    """Only train-split counts matter; classes come back sorted; fewer than two classes is an error."""
    rows = [("Shoes", "train")] * 3 + [("Bags", "train")] * 2 + [("Belts", "train")] + [("Belts", "holdout")] * 5
    labelled = spark.createDataFrame(rows, "category string, split string")
    assert choose_classes(labelled, min_count=2) == ["Bags", "Shoes"]
    with pytest.raises(ValueError, match="at least 2 categories"):
        choose_classes(labelled, min_count=3)


def test_pixels_udf_decodes_in_spark_and_nulls_bad_bytes(spark):
    """Good JPEGs become size*size*3 raw bytes of the right colour; undecodable bytes become null."""
    frame = spark.createDataFrame(
        [("red", _jpeg((255, 0, 0))), ("bad", b"not an image"), ("blue", _jpeg((0, 0, 255)))], "name string, content binary"
    )
    rows = {r["name"]: r["pixels"] for r in frame.select("name", pixels_udf(8)("content").alias("pixels")).collect()}
    assert rows["bad"] is None
    red = np.frombuffer(rows["red"], np.uint8).reshape(8, 8, 3)
    blue = np.frombuffer(rows["blue"], np.uint8).reshape(8, 8, 3)
    assert red[..., 0].min() > 240 and red[..., 2].max() < 15
    assert blue[..., 2].min() > 240 and blue[..., 0].max() < 15


class _FixedPredictions:
    """Stands in for a Keras model: returns given probabilities, to check the metric arithmetic."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def predict(self, pixels: np.ndarray, verbose: int = 0) -> np.ndarray:
        assert len(pixels) == len(self.probabilities)
        return self.probabilities


def test_held_out_metrics_add_up():
    """Accuracy, per-class accuracy and the confusion matrix from known predictions."""
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    probabilities = np.eye(3)[predicted]
    metrics = evaluate_classifier(_FixedPredictions(probabilities), np.zeros((5, 4, 4, 3)), labels, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["per_class"] == {
        "a": {"items": 2, "accuracy": 0.5},
        "b": {"items": 2, "accuracy": 1.0},
        "c": {"items": 1, "accuracy": 0.0},
    }
    assert metrics["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_class_weights_favour_rare_classes_within_bounds():
    """Inverse frequency n / (classes * count), clipped to [0.5, 5]; an absent class gets the cap."""
    import pandas as pd

    weights = _class_weights(pd.Series([0] * 80 + [1] * 20), 3)
    assert weights[0] == pytest.approx(0.5)  # 100 / 240, raised to the floor
    assert weights[1] == pytest.approx(100 / 60)
    assert weights[2] == pytest.approx(5.0)
