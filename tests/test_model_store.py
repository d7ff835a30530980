"""Versioned model bundles: save, LATEST, manifests, tamper detection, and loading the scorer back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.model_store import (
    SCORER_FILE,
    differing_settings,
    load_manifest,
    load_metrics,
    load_scorer_from_bytes,
    model_root,
    read_scorer_bytes,
    registry,
    resolve_version,
    save_bundle,
    seed_groups,
)

keras = pytest.importorskip("keras")
from lookalike.models import build_classifier, build_scorer  # noqa: E402

IMAGE_SIZE = 16  # a strided convolution and three 2x max-pools: 16 -> 8 -> 4 -> 2 -> 1
CLASSES = ["Bags", "Shoes", "Topwear"]
EMBEDDING_DIM = 8


def tiny_scorer(seed: int, *, standardise: bool = False):
    """A small untrained classifier wrapped as a scorer (probabilities + unit embedding)."""
    classifier = build_classifier(num_classes=len(CLASSES), image_size=IMAGE_SIZE, embedding_dim=EMBEDDING_DIM, seed=seed)
    if not standardise:
        return build_scorer(classifier)
    rng = np.random.default_rng(seed)
    return build_scorer(
        classifier,
        embedding_mean=rng.normal(size=EMBEDDING_DIM).astype(np.float32),
        embedding_variance=rng.uniform(0.5, 2.0, size=EMBEDDING_DIM).astype(np.float32),
    )


def pixels(n: int = 4, seed: int = 0) -> np.ndarray:
    """Random uint8-range pixels as float32, shaped like decoded photos."""
    return np.random.default_rng(seed).integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


@pytest.fixture
def config(make_config):
    """A config whose storage root is a fresh temp folder."""
    return make_config()


def test_save_bundle_writes_manifest_metrics_and_latest(spark, config):
    """A saved bundle has the scorer file with the recorded hash, its manifest and metrics, and LATEST names it."""
    metrics = {"holdout_accuracy": 0.5, "classes": 3}
    manifest = save_bundle(spark, config, tiny_scorer(0), classes=CLASSES, embedding="classifier", metrics=metrics)
    root = Path(model_root(config))
    folder = root / manifest.version
    assert manifest.scorer_file == f"{manifest.version}.keras"
    digest = hashlib.sha256((folder / manifest.scorer_file).read_bytes()).hexdigest()

    assert manifest.scorer_sha256 == digest
    assert manifest.version.endswith("-" + digest[:8])
    assert (manifest.image_size, manifest.embedding_dim, manifest.classes, manifest.embedding) == (
        IMAGE_SIZE, EMBEDDING_DIM, CLASSES, "classifier"
    )
    assert json.loads((folder / "manifest.json").read_text()) == dataclasses.asdict(manifest)
    assert load_metrics(spark, config) == metrics
    assert (root / "LATEST").read_text().strip() == manifest.version
    assert sorted(p.name for p in root.iterdir()) == sorted(["LATEST", manifest.version])  # no staging left behind
    assert sorted(p.name for p in folder.iterdir()) == sorted([manifest.scorer_file, "manifest.json", "metrics.json"])


def test_latest_moves_and_old_versions_stay_loadable(spark, config):
    """A second save moves LATEST; the first version still resolves and loads by name."""
    first = save_bundle(spark, config, tiny_scorer(1), classes=CLASSES, embedding="classifier", metrics={"run": 1})
    time.sleep(1.1)  # versions are stamped to the second
    second = save_bundle(
        spark, config, tiny_scorer(2), classes=CLASSES[:2] + ["Watches"], embedding="classifier", metrics={"run": 2}
    )

    assert first.version != second.version
    assert second.version > first.version  # versions sort by time
    assert resolve_version(spark, config) == second.version
    assert resolve_version(spark, config, first.version) == first.version
    assert load_manifest(spark, config) == second
    assert load_manifest(spark, config, first.version) == first
    assert load_metrics(spark, config, first.version) == {"run": 1}
    assert load_metrics(spark, config) == {"run": 2}


def test_best_is_the_version_with_the_best_holdout_evaluation(spark, make_config):
    """model.version = best ranks evaluated versions by within-category P@10, then unrestricted P@10,
    then accuracy, newest on ties; unevaluated bundles never win; latest and a name still work."""
    config = make_config()
    assert config["model"]["version"] == "best"  # the shipped default

    def evaluation(within: float, unrestricted: float, accuracy: float) -> dict:
        return {"evaluation": {"at_p10_in_subcat": within, "at_p10": unrestricted, "classifier_accuracy": accuracy}}

    unevaluated = save_bundle(spark, config, tiny_scorer(11), classes=CLASSES, embedding="classifier", metrics={})
    assert resolve_version(spark, config) == unevaluated.version  # nothing evaluated yet: the latest
    saved = {}
    for name, seed, metrics in [
        ("good", 12, evaluation(0.80, 0.70, 0.90)),
        ("tie_older", 13, evaluation(0.85, 0.72, 0.91)),
        ("tie_newer", 14, evaluation(0.85, 0.72, 0.91)),
        ("better_unrestricted", 15, evaluation(0.85, 0.71, 0.99)),
    ]:
        time.sleep(1.1)  # versions are stamped to the second
        saved[name] = save_bundle(spark, config, tiny_scorer(seed), classes=CLASSES, embedding="classifier", metrics=metrics)
    time.sleep(1.1)
    newest = save_bundle(spark, config, tiny_scorer(16), classes=CLASSES, embedding="autoencoder", metrics={"evaluation": None})

    assert resolve_version(spark, config) == saved["tie_newer"].version
    assert load_manifest(spark, config) == saved["tie_newer"]
    assert resolve_version(spark, make_config("model.version=latest")) == newest.version
    assert resolve_version(spark, make_config(f"model.version={saved['good'].version}")) == saved["good"].version
    # An explicit version wins over the configured one.
    assert resolve_version(spark, config, saved["good"].version) == saved["good"].version

    listed = registry(spark, make_config("model.version=latest"))
    assert [row["version"] for row in listed] == [unevaluated.version, *(m.version for m in saved.values()), newest.version]
    flags = {row["version"]: {k for k in ("latest", "best", "selected") if row[k]} for row in listed}
    assert flags[newest.version] == {"latest", "selected"} and flags[saved["tie_newer"].version] == {"best"}
    assert sum(map(len, flags.values())) == 3
    assert listed[2]["evaluation"]["at_p10"] == 0.72 and listed[0]["evaluation"] is None


def trained_with(seed: int, class_weights: str, *figures: tuple[str, float], splits: dict | None = None) -> dict:
    """The metrics a train job records: its settings, split sizes and holdout figures."""
    return {
        "settings": {"model": {"seed": seed, "version": "best", "image_size": 224},
                     "train": {"finetune_class_weights": class_weights}},
        "items_per_split": splits or {"train": 1650, "validation": 242, "holdout": 497},
        "evaluation": dict(figures),
    }


def test_seed_groups_summarise_versions_trained_alike_apart_from_the_seed():
    """Versions equal in all settings but the seed (and the version runs use) are one group, with each figure's spread."""
    rows = [
        {"version": "v1", **trained_with(7, "none", ("classifier_accuracy", 0.5), ("at_p10", 0.25))},
        {"version": "v2", **trained_with(8, "inverse", ("classifier_accuracy", 0.625))},
        {"version": "v3", **trained_with(9, "none", ("classifier_accuracy", 0.75), ("at_p10", 0.5))},
        {"version": "v4", "settings": None, "items_per_split": None, "evaluation": {"classifier_accuracy": 1.0}},
        {"version": "v5", **trained_with(10, "none", ("classifier_accuracy", 1.0), ("at_p10", None))},
        {"version": "v6", **trained_with(11, "none", ("classifier_accuracy", 0.0), splits={"train": 10, "holdout": 3})},
        {"version": "v7", **trained_with(12, "none"), "evaluation": None},
    ]
    groups = seed_groups(rows, ["classifier_accuracy", "at_p10", "subcat_1nn"])
    same_settings = {"model.image_size": 224, "train.finetune_class_weights": "none"}
    assert groups == [
        {
            "versions": ["v1", "v3", "v5"], "seeds": [7, 9, 10], "settings": same_settings,
            "figures": {
                "classifier_accuracy": {"n": 3, "mean": 0.75, "sd": 0.25, "min": 0.5, "max": 1.0},
                "at_p10": {"n": 2, "mean": 0.375, "sd": pytest.approx(0.1767767), "min": 0.25, "max": 0.5},
            },
        },
        {
            "versions": ["v2"], "seeds": [8], "settings": {**same_settings, "train.finetune_class_weights": "inverse"},
            "figures": {"classifier_accuracy": {"n": 1, "mean": 0.625, "sd": None, "min": 0.625, "max": 0.625}},
        },
        {  # the same settings on another catalog
            "versions": ["v6"], "seeds": [11], "settings": same_settings,
            "figures": {"classifier_accuracy": {"n": 1, "mean": 0.0, "sd": None, "min": 0.0, "max": 0.0}},
        },
    ]
    assert differing_settings(groups) == ["train.finetune_class_weights"]
    assert differing_settings(groups[:1]) == [] and seed_groups([], ["at_p10"]) == []


def test_registry_rows_carry_the_settings_that_group_versions_by_seed(spark, config):
    """The registry reads back each version's recorded settings and split sizes, and versions group by them."""
    for seed, weights, accuracy in [(7, "none", 0.5), (8, "none", 1.0), (9, "inverse", 0.25)]:
        metrics = trained_with(seed, weights, ("classifier_accuracy", accuracy))
        save_bundle(spark, config, tiny_scorer(seed), classes=CLASSES, embedding="classifier", metrics=metrics)
        time.sleep(1.1)  # versions are stamped to the second
    older = save_bundle(spark, config, tiny_scorer(10), classes=CLASSES, embedding="classifier", metrics={"evaluation": None})
    rows = registry(spark, config)
    assert [row["settings"] and row["settings"]["model"]["seed"] for row in rows] == [7, 8, 9, None]
    assert rows[-1]["version"] == older.version and rows[-1]["items_per_split"] is None
    assert rows[0]["items_per_split"] == {"train": 1650, "validation": 242, "holdout": 497}
    groups = seed_groups(rows, ["classifier_accuracy"])
    assert [(g["seeds"], g["figures"]["classifier_accuracy"]["mean"]) for g in groups] == [([7, 8], 0.75), ([9], 0.25)]


def test_no_model_yet_raises(spark, config):
    """Asking for the latest model before any was saved raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        resolve_version(spark, config)
    with pytest.raises(FileNotFoundError):
        load_manifest(spark, config)


def test_unknown_version_raises(spark, config):
    """A version that was never saved raises FileNotFoundError naming it, even when others exist."""
    save_bundle(spark, config, tiny_scorer(3), classes=CLASSES, embedding="classifier", metrics={})
    with pytest.raises(FileNotFoundError, match="20000101T000000Z-deadbeef"):
        resolve_version(spark, config, "20000101T000000Z-deadbeef")
    with pytest.raises(FileNotFoundError):
        load_manifest(spark, config, "20000101T000000Z-deadbeef")


def test_read_scorer_bytes_detects_tampering(spark, config):
    """The untouched file reads back; a file changed by one byte (or replaced) raises ValueError."""
    manifest = save_bundle(spark, config, tiny_scorer(4), classes=CLASSES, embedding="classifier", metrics={})
    path = Path(model_root(config)) / manifest.version / manifest.scorer_file
    original = path.read_bytes()
    assert read_scorer_bytes(spark, config, manifest) == original

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=manifest.version):
        read_scorer_bytes(spark, config, manifest)

    path.write_bytes(original + b"\0")
    with pytest.raises(ValueError):
        read_scorer_bytes(spark, config, manifest)


@pytest.mark.parametrize("standardise", [False, True])
def test_scorer_round_trips_through_bytes(spark, config, standardise):
    """The scorer loaded from its saved bytes predicts what the original predicts, in safe mode."""
    scorer = tiny_scorer(5, standardise=standardise)
    manifest = save_bundle(spark, config, scorer, classes=CLASSES, embedding="classifier", metrics={})
    loaded = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))

    x = pixels()
    before = scorer(x, training=False)
    after = loaded(x, training=False)
    assert set(after) == {"probabilities", "embedding"}
    for name in ("probabilities", "embedding"):
        assert np.allclose(np.asarray(before[name]), np.asarray(after[name]), atol=1e-6)
    # Outputs are what scoring relies on: a distribution per row and a unit embedding per row.
    probabilities = np.asarray(after["probabilities"])
    assert probabilities.shape == (4, len(CLASSES))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(np.asarray(after["embedding"]), axis=1), 1.0, atol=1e-5)


def test_loaded_scorer_differs_from_another_model(spark, config):
    """Round-trip equality is not vacuous: a differently seeded model predicts differently."""
    manifest = save_bundle(spark, config, tiny_scorer(6), classes=CLASSES, embedding="classifier", metrics={})
    loaded = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    other = tiny_scorer(7)
    x = pixels(seed=1)
    assert not np.allclose(np.asarray(loaded(x, training=False)["embedding"]), np.asarray(other(x, training=False)["embedding"]))


def test_model_store_lives_at_any_hadoop_path(spark, make_config, tmp_path):
    """With storage.root a file: URI the store is written and read through Hadoop's FileSystem: save, LATEST, load."""
    config = make_config(f"storage.root=file://{tmp_path}/uri-store")
    assert model_root(config) == f"file:{tmp_path}/uri-store/models"  # in Hadoop's qualified form
    manifest = save_bundle(spark, config, tiny_scorer(9), classes=CLASSES, embedding="classifier", metrics={"m": 1})
    folder = tmp_path / "uri-store" / "models" / manifest.version
    assert sorted(p.name for p in folder.iterdir()) == sorted([manifest.scorer_file, "manifest.json", "metrics.json"])
    assert load_manifest(spark, config) == manifest and load_metrics(spark, config) == {"m": 1}
    assert read_scorer_bytes(spark, config, manifest) == (folder / manifest.scorer_file).read_bytes()


def test_bundle_saved_before_scorer_files_carried_the_version_still_loads(spark, config):
    """A manifest without scorer_file (older stores) means scorer.keras, and loads and checks as before."""
    manifest = save_bundle(spark, config, tiny_scorer(10), classes=CLASSES, embedding="classifier", metrics={})
    folder = Path(model_root(config)) / manifest.version
    (folder / manifest.scorer_file).rename(folder / SCORER_FILE)
    old = {k: v for k, v in dataclasses.asdict(manifest).items() if k != "scorer_file"}
    (folder / "manifest.json").write_text(json.dumps(old))
    loaded = load_manifest(spark, config)
    assert loaded == dataclasses.replace(manifest, scorer_file=SCORER_FILE)
    assert hashlib.sha256(read_scorer_bytes(spark, config, loaded)).hexdigest() == manifest.scorer_sha256


def test_manifest_naming_a_path_as_scorer_file_is_refused(spark, config):
    """A manifest whose scorer_file leads out of its folder is refused before anything is read."""
    manifest = save_bundle(spark, config, tiny_scorer(11), classes=CLASSES, embedding="classifier", metrics={})
    folder = Path(model_root(config)) / manifest.version
    (folder / "manifest.json").write_text(json.dumps({**dataclasses.asdict(manifest), "scorer_file": "../../x.keras"}))
    with pytest.raises(ValueError, match="not a file name"):
        load_manifest(spark, config)


@pytest.mark.parametrize("version", ["../../etc", "/tmp/elsewhere", "..", "a/b"])
def test_version_that_is_a_path_is_refused(spark, config, version):
    """A model version names a folder of the store; a path leading anywhere else is refused with ValueError."""
    save_bundle(spark, config, tiny_scorer(8), classes=CLASSES, embedding="classifier", metrics={})
    with pytest.raises(ValueError, match="not a version name"):
        load_manifest(spark, config, version)


def keras_file_bytes(model, tmp_path) -> bytes:
    """A model saved as a .keras file, as bytes."""
    path = tmp_path / "model.keras"
    model.save(path)
    return path.read_bytes()


def test_scorer_with_a_lambda_layer_is_refused(tmp_path):
    """A .keras file holding a Lambda layer (arbitrary Python code) is refused by safe mode, not run."""
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    content = keras_file_bytes(keras.Model(inputs, outputs), tmp_path)
    with pytest.raises(ValueError, match="(?i)lambda|safe_mode"):
        load_scorer_from_bytes(content)


class _TouchOnUnpickle:
    """Unpickling this calls ``pathlib.Path.touch`` on a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_scorer_file_that_is_a_pickle_is_refused_unloaded(tmp_path):
    """A pickle put where the scorer file belongs raises and is never unpickled."""
    import pickle

    marker = tmp_path / "pickle-ran"
    with pytest.raises(Exception):  # noqa: B017 - Keras's exact error for a non-zip file is not ours to pin
        load_scorer_from_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    assert not marker.exists()
