"""EfficientNet-Lite0 port: the restricted checkpoint reader and the Keras model's ImageNet predictions."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lookalike import model_store, pretrained
from lookalike.images import decode_image

# ImageNet-1k standard class indices (the order of the usual synset list) for the photos below.
JERSEY_TSHIRT = 610  # 'jersey, T-shirt, tee shirt'
JEAN = 608  # 'jean, blue jean, denim'
RUNNING_SHOE = 770  # 'running shoe'
BACKPACK = 414  # 'backpack, back pack, knapsack, packsack, rucksack, haversack'
SWEATSHIRT = 841  # 'sweatshirt'
DIGITAL_WATCH = 531  # 'digital watch'
SUNGLASS = 836  # 'sunglass' (the lens sense; the model prefers it for product shots of sunglasses)
SUNGLASSES = 837  # 'sunglasses, dark glasses, shades'

# Catalog photo id -> (articleType in labels.csv, expected top-1 class). Each was checked by eye and
# is predicted with softmax probability > 0.8.
TOP1_PHOTOS = {
    10030: ("Tshirts", JERSEY_TSHIRT),
    11244: ("Jeans", JEAN),
    10097: ("Sports Shoes", RUNNING_SHOE),
    15273: ("Backpacks", BACKPACK),
    12536: ("Sweatshirts", SWEATSHIRT),
    10135: ("Watches", DIGITAL_WATCH),
    16086: ("Sunglasses", SUNGLASS),
}
TSHIRTS = (10030, 10007)
WATCH = 10135


def _load_photos(photo_dir: Path, ids: list[int]) -> np.ndarray:
    photos = [(photo_dir / "images" / f"{i}.jpg").read_bytes() for i in ids]
    return np.stack([decode_image(content, pretrained.IMAGE_SIZE) for content in photos])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return pretrained.read_torch_state_dict(pretrained.lite0_weights_path())


# --- the restricted unpickler ---------------------------------------------------------------------


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval], ids=["os.system", "builtins.eval"])
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path: Path, payload: type, layout: str) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps({"_conv_stem.weight": payload(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", data)
            archive.writestr("evil/version", "3\n")
    else:
        path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global .*(system|eval)"):
        pretrained.read_torch_state_dict(path)
    assert not marker.exists()


def _handmade_checkpoint() -> bytes:
    """data.pkl for {'w': a 2x3 float tensor stored transposed at storage offset 1}, as torch writes it."""
    out = io.BytesIO()

    def text(s: str) -> None:
        raw = s.encode()
        out.write(b"X" + struct.pack("<I", len(raw)) + raw)  # BINUNICODE

    def integer(n: int) -> None:
        out.write(b"J" + struct.pack("<i", n))  # BININT

    out.write(b"\x80\x02")  # PROTO 2
    out.write(b"ccollections\nOrderedDict\n)R")  # OrderedDict()
    out.write(b"(")  # MARK for SETITEMS
    text("w")
    out.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")
    out.write(b"(")  # persistent id tuple
    text("storage")
    out.write(b"ctorch\nFloatStorage\n")
    text("0")
    text("cpu")
    integer(7)
    out.write(b"tQ")  # TUPLE, BINPERSID
    integer(1)  # storage offset
    out.write(b"(")
    integer(2)
    integer(3)
    out.write(b"t(")  # size (2, 3), then stride (1, 2): column-major
    integer(1)
    integer(2)
    out.write(b"t\x89")  # NEWFALSE: requires_grad
    out.write(b"ccollections\nOrderedDict\n)R")  # backward hooks
    out.write(b"tR")  # TUPLE, REDUCE -> tensor
    out.write(b"u.")  # SETITEMS, STOP
    return out.getvalue()


def test_reader_honours_offset_and_strides(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    storage = np.arange(7, dtype="<f4")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("small/data.pkl", _handmade_checkpoint())
        archive.writestr("small/data/0", storage.tobytes())
    state = pretrained.read_torch_state_dict(path)
    expected = storage[1:7].reshape(3, 2).T  # element [i, j] at 1 + i*1 + j*2
    np.testing.assert_array_equal(state["w"], expected)
    assert state["w"].flags["C_CONTIGUOUS"] and state["w"].flags["OWNDATA"]


# --- the shipped checkpoint -----------------------------------------------------------------------


def test_state_dict_names_and_shapes(state_dict: dict[str, np.ndarray]) -> None:
    # 16 blocks; no squeeze-excitation tensors, no conv biases.
    assert len(state_dict) == 296
    assert not [name for name in state_dict if "_se_" in name]
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_fc.bias"].shape == (1000,)
    assert state_dict["_bn0.running_var"].dtype == np.float32
    assert state_dict["_bn0.num_batches_tracked"].shape == ()


# --- the Keras port -------------------------------------------------------------------------------


def test_pretrained_lite0_predicts_imagenet_classes(photo_dir: Path) -> None:
    ids = list(TOP1_PHOTOS)
    with open(photo_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        articles = {int(row["id"]): row["articleType"] for row in csv.DictReader(handle)}
    assert {i: articles[i] for i in ids} == {i: article for i, (article, _) in TOP1_PHOTOS.items()}
    model = pretrained.load_pretrained_lite0(include_top=True)
    probs = _softmax(model.predict(pretrained.preprocess(_load_photos(photo_dir, ids)), verbose=0))
    assert probs.shape == (len(ids), 1000)
    for row, photo_id in enumerate(ids):
        article, expected = TOP1_PHOTOS[photo_id]
        top5 = list(np.argsort(-probs[row])[:5])
        assert top5[0] == expected, f"{photo_id} ({article}): top-5 {top5}, expected {expected}"
        # A correct port is confident on clean product shots; a broken one is near-uniform.
        assert probs[row, expected] > 0.5, f"{photo_id} ({article}): p={probs[row, expected]:.2f}"
    sunglasses_row = ids.index(16086)
    assert SUNGLASSES in np.argsort(-probs[sunglasses_row])[:5]


def test_feature_model_groups_like_items(photo_dir: Path) -> None:
    model = pretrained.load_pretrained_lite0(include_top=False)
    features = model.predict(pretrained.preprocess(_load_photos(photo_dir, [*TSHIRTS, WATCH])), verbose=0)
    assert features.shape == (3, pretrained.FEATURE_DIM)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    tshirt_tshirt = float(unit[0] @ unit[1])
    tshirt_watch = float(unit[0] @ unit[2])
    assert tshirt_tshirt > tshirt_watch


def test_preprocess_scales_to_unit_range() -> None:
    pixels = np.array([[0, 127, 255]], dtype=np.uint8)
    out = pretrained.preprocess(pixels)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-127 / 128, 0.0, 1.0]])


def test_weights_with_wrong_shape_are_rejected(state_dict: dict[str, np.ndarray]) -> None:
    broken = dict(state_dict)
    broken["_fc.weight"] = np.zeros((10, 1280), dtype=np.float32)
    with pytest.raises(ValueError, match="_fc.weight"):
        pretrained.efficientnet_lite0(broken)


# --- the conversion kept in the model store --------------------------------------------------------


def test_the_model_store_converts_the_checkpoint_once_and_keeps_it(spark, make_config, monkeypatch):
    """The first call converts and stores; later calls read the store (and check its hash), never the checkpoint."""
    config = make_config()
    converted, source = model_store.pretrained_lite0(spark, config)
    fresh = pretrained.load_pretrained_lite0(include_top=True)
    assert all(np.array_equal(a, b) for a, b in zip(converted.get_weights(), fresh.get_weights(), strict=True))
    folder = Path(model_store.model_root(config)) / source["folder"]
    stem = pretrained.lite0_weights_path().stem
    assert source["folder"] == f"pretrained/{stem}"
    assert sorted(path.name for path in folder.iterdir()) == [f"{stem}.keras", "source.json"]
    record = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    assert {key: record[key] for key in source} == source
    assert source["checkpoint_sha256"] == model_store.file_sha256(pretrained.lite0_weights_path())
    assert model_store.list_versions(spark, config) == []  # not taken for a trained version

    def converting(*_):
        raise AssertionError("the checkpoint was read again")

    monkeypatch.setattr(pretrained, "read_torch_state_dict", converting)
    again, same_source = model_store.pretrained_lite0(spark, config)
    assert same_source == source
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), fresh.get_weights(), strict=True))

    stored = folder / f"{stem}.keras"
    stored.write_bytes(stored.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="its hash differs"):
        model_store.pretrained_lite0(spark, config)
