"""Versioned model bundles on disk: the scorer, its manifest (classes, hashes) and its metrics.

Layout: ``<storage.root>/models/<version>/{scorer.keras, manifest.json, metrics.json}`` and
``<storage.root>/models/LATEST`` naming the newest version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from lookalike.tables import has_scheme, storage_root

SCORER_FILE = "scorer.keras"


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


def model_root(config: Mapping[str, Any]) -> Path:
    """Folder of the model store (a local or mounted path; Keras saves to local files)."""
    root = storage_root(config)
    if has_scheme(root):
        raise ValueError(f"the model store must be a local or mounted path, not {root!r}")
    return Path(root) / "models"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def save_bundle(
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
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    scorer.save(staging / SCORER_FILE)
    sha = file_sha256(staging / SCORER_FILE)
    now = datetime.now(timezone.utc)
    version = f"{now:%Y%m%dT%H%M%SZ}-{sha[:8]}"
    manifest = ModelManifest(
        version=version,
        created_at=now.isoformat(),
        image_size=int(scorer.input_shape[1]),
        embedding=embedding,
        embedding_dim=int(scorer.output["embedding"].shape[-1]) if isinstance(scorer.output, dict) else 0,
        classes=list(classes),
        scorer_sha256=sha,
    )
    (staging / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2), encoding="utf-8")
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    # A bundle appears whole or not at all: rename the finished folder into place, then move LATEST.
    os.replace(staging, root / version)
    _write_atomically(root / "LATEST", version + "\n")
    return manifest


_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def resolve_version(config: Mapping[str, Any], version: str | None = None) -> str:
    """The given version, else the one LATEST names.

    Raises
    ------
    FileNotFoundError
        If no model has been trained yet, or the version does not exist.
    ValueError
        If the version is not a plain name (a path such as ``../x`` is refused).
    """
    root = model_root(config)
    if not version:
        latest = root / "LATEST"
        if not latest.is_file():
            raise FileNotFoundError(f"no trained model in {root}: run the train job first")
        version = latest.read_text(encoding="utf-8").strip()
    if not _VERSION.match(version):
        # A version names a folder of the model store; nothing else may be loaded.
        raise ValueError(f"model version {version!r} is not a version name (e.g. 20261121T131600Z-d69b51b6)")
    if not (root / version / "manifest.json").is_file():
        raise FileNotFoundError(f"model version {version!r} not found in {root}")
    return version


def load_manifest(config: Mapping[str, Any], version: str | None = None) -> ModelManifest:
    """Read a bundle's manifest (default: LATEST)."""
    folder = model_root(config) / resolve_version(config, version)
    return ModelManifest(**json.loads((folder / "manifest.json").read_text(encoding="utf-8")))


def load_metrics(config: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """Read a bundle's metrics (default: LATEST)."""
    folder = model_root(config) / resolve_version(config, version)
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def read_scorer_bytes(config: Mapping[str, Any], manifest: ModelManifest) -> bytes:
    """The scorer file's bytes, checked against the hash recorded when it was saved.

    Raises
    ------
    ValueError
        If the file on disk is not the one that was saved.
    """
    content = (model_root(config) / manifest.version / SCORER_FILE).read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != manifest.scorer_sha256:
        raise ValueError(
            f"model {manifest.version}: scorer hash {actual[:12]} does not match the recorded {manifest.scorer_sha256[:12]}"
        )
    return content


def load_scorer_from_bytes(content: bytes) -> Any:
    """Load a Keras scorer from its file bytes, in Keras safe mode (no Lambda layers, no pickles)."""
    import keras

    with tempfile.TemporaryDirectory(prefix="lookalike-model-") as folder:
        path = Path(folder) / SCORER_FILE
        path.write_bytes(content)
        return keras.models.load_model(path, safe_mode=True, compile=False)
