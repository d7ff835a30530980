"""The Keras models: shapes, the scorer's unit embeddings, and ResNet50 from a local weights file."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from lookalike import models


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_scorer_outputs_probabilities_and_unit_embeddings():
    """Probabilities sum to 1 per row; embeddings have norm 1 after standardisation."""
    classifier = models.build_classifier(num_classes=3, image_size=32, embedding_dim=8)
    _, encoder = models.build_autoencoder(image_size=32, embedding_dim=6)
    raw = encoder.predict(_pixels(16, 32), verbose=0)
    scorer = models.build_scorer(classifier, encoder, embedding_mean=raw.mean(0), embedding_variance=raw.var(0))
    out = scorer(_pixels(5, 32, seed=1), training=False)
    assert np.asarray(out["probabilities"]).shape == (5, 3)
    assert np.allclose(np.asarray(out["probabilities"]).sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(np.asarray(out["embedding"]), axis=1), 1.0, atol=1e-5)
    assert np.asarray(out["embedding"]).shape == (5, 6)


def test_penultimate_scorer_embeds_with_the_classifier_layer():
    """Without an embedder the scorer's embedding is the classifier's penultimate layer, normalised."""
    classifier = models.build_classifier(num_classes=4, image_size=32, embedding_dim=8)
    scorer = models.build_scorer(classifier)
    pixels = _pixels(4, 32)
    expected = models.penultimate_embedder(classifier).predict(pixels, verbose=0)
    expected = expected / np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
    got = np.asarray(scorer(pixels, training=False)["embedding"])
    assert np.allclose(got, expected, atol=1e-5)


def test_autoencoder_reconstructs_the_input_shape():
    """The autoencoder maps pixels to [0, 1] images of the same size; the encoder to the code size."""
    autoencoder, encoder = models.build_autoencoder(image_size=32, embedding_dim=10)
    pixels = _pixels(2, 32)
    reconstruction = autoencoder.predict(pixels, verbose=0)
    assert reconstruction.shape == (2, 32, 32, 3)
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0
    assert encoder.predict(pixels, verbose=0).shape == (2, 10)
    with pytest.raises(ValueError, match="divisible by 8"):
        models.build_autoencoder(image_size=30, embedding_dim=10)


def test_resnet50_loads_weights_from_a_local_file(tmp_path: Path):
    """The resnet50 option reads its weights from the given file: outputs match the model that saved them."""
    size = 32
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    weights = tmp_path / "resnet50_notop.weights.h5"
    reference.save_weights(weights)
    embedder = models.build_resnet50_embedder(image_size=size, weights_path=str(weights))
    pixels = _pixels(2, size)
    caffe = pixels[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    assert np.allclose(embedder.predict(pixels, verbose=0), reference.predict(caffe, verbose=0), atol=1e-3)
    with pytest.raises(ValueError, match="local .h5 weights file"):
        models.build_resnet50_embedder(image_size=size, weights_path="")


def test_lite0_embedder_gives_the_pretrained_features_and_survives_a_save(tmp_path: Path):
    """The lite0 option: ImageNet Lite0 features of the rescaled pixels, the same after a .keras save and load."""
    from lookalike import pretrained

    size = 64
    embedder = models.build_lite0_embedder(image_size=size)
    assert not any(layer.trainable for layer in embedder.layers[1:] if layer.weights)
    pixels = _pixels(2, size)
    reference = pretrained.load_pretrained_lite0(include_top=False, image_size=size)
    features = embedder.predict(pixels, verbose=0)
    assert features.shape == (2, pretrained.FEATURE_DIM)
    assert np.allclose(features, reference.predict(pretrained.preprocess(pixels), verbose=0), atol=1e-4)
    path = tmp_path / "lite0.keras"
    embedder.save(path)
    assert np.allclose(keras.models.load_model(path).predict(pixels, verbose=0), features, atol=1e-5)
    # From the 224 px ImageNet classifier converted before (as the model store keeps it): the same network.
    from_converted = models.build_lite0_embedder(image_size=size, imagenet=pretrained.load_pretrained_lite0())
    assert all(np.array_equal(a, b) for a, b in zip(from_converted.get_weights(), embedder.get_weights(), strict=True))
