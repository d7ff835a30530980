"""Job configuration: ``conf/defaults.toml``, then a profile, then command-line overrides."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

DEFAULT_CONF_DIR = Path("conf")


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_value(text: str) -> Any:
    """Read an override value as TOML/JSON where it parses (numbers, booleans, lists), else as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn ``"section.key=value"`` into ``{"section": {"key": value}}``.

    Spark settings keep their dots: ``spark.spark.sql.shuffle.partitions=4`` sets
    ``[spark] "spark.sql.shuffle.partitions"``.
    """
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form section.key=value")
    dotted, raw = assignment.split("=", 1)
    section, _, key = dotted.strip().partition(".")
    if not section or not key:
        raise ValueError(f"override {assignment!r} must name a section and a key, e.g. index.k=10")
    if section == "spark":
        return {"spark": {key: raw}}
    value: Any = _parse_value(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return {section: value}


def shipped_conf_dir(conf_dir: Path) -> Path:
    """``conf_dir`` if it holds ``defaults.toml``, else the working directory if that does.

    Raises
    ------
    FileNotFoundError
        If neither holds ``defaults.toml``.
    """
    for folder in (conf_dir, Path.cwd()):
        if (folder / "defaults.toml").is_file():
            return folder
    raise FileNotFoundError(f"no defaults.toml in {conf_dir} nor in the working directory {Path.cwd()}")


def load_config(
    profile: str | None = None,
    overrides: Iterable[str] = (),
    *,
    conf_dir: Path | str = DEFAULT_CONF_DIR,
) -> dict[str, Any]:
    """Load the merged configuration.

    Parameters
    ----------
    profile : str, optional
        Name of a file ``<conf_dir>/<profile>.toml`` merged over the defaults.
    overrides : iterable of str
        ``section.key=value`` assignments applied last.
    conf_dir : path-like
        Directory holding ``defaults.toml`` and the profiles. If it has no ``defaults.toml`` but
        the working directory has, the working directory is used: a driver started in cluster
        deploy mode (YARN, Kubernetes) finds there the files ``spark-submit.sh`` shipped with ``--files``.

    Returns
    -------
    dict
        Nested configuration; sections as in ``conf/defaults.toml``.
    """
    conf_dir = shipped_conf_dir(Path(conf_dir))
    with open(conf_dir / "defaults.toml", "rb") as handle:
        config = tomllib.load(handle)
    if profile:
        profile_path = conf_dir / f"{profile}.toml"
        if not profile_path.is_file():
            available = sorted(p.stem for p in conf_dir.glob("*.toml") if p.stem != "defaults")
            raise FileNotFoundError(f"no profile {profile!r} in {conf_dir}; available: {available}")
        with open(profile_path, "rb") as handle:
            config = _deep_merge(config, tomllib.load(handle))
    for assignment in overrides:
        config = _deep_merge(config, parse_override(assignment))
    return config
