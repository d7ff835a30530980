"""Training-data preparation and held-out metrics, on tiny frames."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pyspark.testing import assertDataFrameEqual

from lookalike.training import _class_weights, assign_split, choose_classes, evaluate_classifier, pixels_udf


def _jpeg(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_split_is_deterministic_and_near_the_configured_fractions(spark):
    """The same ids and seed always give the same split; shares are near 15/15/70 over 2,000 ids."""
    ids = spark.createDataFrame([(str(i),) for i in range(2000)], "item_id string")
    first = assign_split(ids, holdout_fraction=0.15, validation_fraction=0.15, seed=7)
    second = assign_split(ids, holdout_fraction=0.15, validation_fraction=0.15, seed=7)
    assertDataFrameEqual(first, second)
    shares = {r["split"]: r["count"] / 2000 for r in first.groupBy("split").count().collect()}
    assert shares["holdout"] == pytest.approx(0.15, abs=0.03)
    assert shares["validation"] == pytest.approx(0.15, abs=0.03)
    assert shares["train"] == pytest.approx(0.70, abs=0.03)
    other_seed = assign_split(ids, holdout_fraction=0.15, validation_fraction=0.15, seed=8)
    assert other_seed.join(first, ["item_id", "split"]).count() < 2000


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
