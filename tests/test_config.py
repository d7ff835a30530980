"""Configuration loading: defaults, profile merge, command-line overrides."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from lookalike.config import load_config, parse_override

REPO = Path(__file__).resolve().parents[1]

DEFAULTS = textwrap.dedent(
    """
    [storage]
    root = "data"
    database = "lookalike"

    [index]
    k = 20
    block_rows = 1024
    price_band_edges = [500.0, 1000.0]

    [train]
    batch_size = 64
    learning_rate = 0.001

    [spark]
    "spark.sql.shuffle.partitions" = "8"
    "spark.ui.showConsoleProgress" = "false"
    """
)

PROFILE = textwrap.dedent(
    """
    [index]
    k = 5

    [train]
    batch_size = 32

    [spark]
    "spark.sql.shuffle.partitions" = "2"
    "spark.driver.host" = "127.0.0.1"
    """
)


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A conf folder with known defaults and two profiles, independent of the repository's conf/."""
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "defaults.toml").write_text(DEFAULTS, encoding="utf-8")
    (folder / "small.toml").write_text(PROFILE, encoding="utf-8")
    (folder / "other.toml").write_text("[storage]\nroot = \"elsewhere\"\n", encoding="utf-8")
    return folder


def test_no_profile_gives_defaults_unchanged(conf_dir):
    """Without a profile or overrides the result is exactly defaults.toml."""
    config = load_config(None, conf_dir=conf_dir)
    assert config == {
        "storage": {"root": "data", "database": "lookalike"},
        "index": {"k": 20, "block_rows": 1024, "price_band_edges": [500.0, 1000.0]},
        "train": {"batch_size": 64, "learning_rate": 0.001},
        "spark": {"spark.sql.shuffle.partitions": "8", "spark.ui.showConsoleProgress": "false"},
    }


def test_profile_merges_key_by_key_over_defaults(conf_dir):
    """A profile replaces only the keys it names; sibling keys and other sections keep their defaults."""
    config = load_config("small", conf_dir=conf_dir)
    assert config["index"] == {"k": 5, "block_rows": 1024, "price_band_edges": [500.0, 1000.0]}
    assert config["train"] == {"batch_size": 32, "learning_rate": 0.001}
    assert config["storage"] == {"root": "data", "database": "lookalike"}
    assert config["spark"] == {
        "spark.sql.shuffle.partitions": "2",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
    }


def test_overrides_apply_after_profile_in_order(conf_dir):
    """Overrides win over the profile, and a later override wins over an earlier one."""
    config = load_config(
        "small",
        ["index.k=7", "index.k=9", "storage.root=/tmp/x", "spark.spark.sql.shuffle.partitions=3"],
        conf_dir=conf_dir,
    )
    assert config["index"]["k"] == 9
    assert config["index"]["block_rows"] == 1024
    assert config["storage"] == {"root": "/tmp/x", "database": "lookalike"}
    assert config["spark"]["spark.sql.shuffle.partitions"] == "3"
    assert config["spark"]["spark.driver.host"] == "127.0.0.1"


def test_override_list_replaces_whole_list(conf_dir):
    """A list override replaces the default list rather than merging element-wise."""
    config = load_config(None, ["index.price_band_edges=[10, 20, 30]"], conf_dir=conf_dir)
    assert config["index"]["price_band_edges"] == [10, 20, 30]


def test_loading_twice_does_not_leak_overrides(conf_dir):
    """Overrides in one call do not change what a later call returns (no shared mutable state)."""
    first = load_config("small", ["index.k=99", "train.extra=[1, 2]"], conf_dir=conf_dir)
    first["index"]["block_rows"] = -1
    second = load_config("small", conf_dir=conf_dir)
    assert second["index"] == {"k": 5, "block_rows": 1024, "price_band_edges": [500.0, 1000.0]}
    assert "extra" not in second["train"]


def test_repository_test_profile_overrides_defaults():
    """The real conf/test.toml lowers k below the default while keeping untouched default keys."""
    defaults = load_config(None, conf_dir=REPO / "conf")
    test = load_config("test", conf_dir=REPO / "conf")
    assert test["index"]["k"] < defaults["index"]["k"]
    assert test["index"]["block_rows"] == defaults["index"]["block_rows"]
    assert set(defaults) <= set(test)


def test_unknown_profile_raises_listing_available(conf_dir):
    """An unknown profile raises FileNotFoundError naming the profiles that do exist (not defaults)."""
    with pytest.raises(FileNotFoundError) as info:
        load_config("nope", conf_dir=conf_dir)
    message = str(info.value)
    assert "'nope'" in message
    assert "['other', 'small']" in message
    assert "defaults" not in message.split("available")[-1]


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("index.k=10", {"index": {"k": 10}}),
        ("train.learning_rate=0.0005", {"train": {"learning_rate": 0.0005}}),
        ("train.learning_rate=1e-3", {"train": {"learning_rate": 0.001}}),
        ("index.k=-3", {"index": {"k": -3}}),
        ("model.flag=true", {"model": {"flag": True}}),
        ("index.price_band_edges=[100, 250.5]", {"index": {"price_band_edges": [100, 250.5]}}),
        ("index.price_band_edges=[]", {"index": {"price_band_edges": []}}),
        ("model.embedding=classifier", {"model": {"embedding": "classifier"}}),
        ("storage.root=/data/look alike", {"storage": {"root": "/data/look alike"}}),
        ("storage.root=hdfs://nn:8020/x", {"storage": {"root": "hdfs://nn:8020/x"}}),
        ("model.resnet50_weights=", {"model": {"resnet50_weights": ""}}),
        ("catalog.image_root=a=b", {"catalog": {"image_root": "a=b"}}),
        ("model.a.b=1", {"model": {"a": {"b": 1}}}),
    ],
)
def test_parse_override_values(assignment, expected):
    """Numbers, booleans and lists parse to their types; anything else stays the literal string."""
    assert parse_override(assignment) == expected


def test_parse_override_number_types():
    """Integers stay int and decimals become float (so index.k is usable as a count)."""
    assert type(parse_override("index.k=10")["index"]["k"]) is int
    assert type(parse_override("index.k=10.0")["index"]["k"]) is float


@pytest.mark.parametrize(
    "assignment, key, value",
    [
        ("spark.spark.sql.shuffle.partitions=4", "spark.sql.shuffle.partitions", "4"),
        ("spark.spark.executor.memory=2g", "spark.executor.memory", "2g"),
        ("spark.spark.sql.execution.arrow.pyspark.enabled=false", "spark.sql.execution.arrow.pyspark.enabled", "false"),
    ],
)
def test_parse_override_spark_keys_keep_dots(assignment, key, value):
    """Spark settings keep their dotted key whole and their value as the literal string."""
    assert parse_override(assignment) == {"spark": {key: value}}


@pytest.mark.parametrize("assignment", ["index.k", "", "index=5", "=5", ".k=5", "index.=5", "spark=4"])
def test_parse_override_bad_input_raises(assignment):
    """Assignments without '=', a section or a key raise ValueError quoting the input."""
    with pytest.raises(ValueError, match=re.escape(repr(assignment))):
        parse_override(assignment)


def test_bad_override_fails_load_config(conf_dir):
    """load_config surfaces a malformed override as ValueError instead of ignoring it."""
    with pytest.raises(ValueError):
        load_config(None, ["index.k"], conf_dir=conf_dir)


@pytest.mark.parametrize("profile", ["local", "test", "cluster", "gpu"])
def test_every_shipped_profile_loads_and_only_sets_known_sections(profile):
    """Each profile in conf/ parses and adds no section or key the defaults do not know (a typo would)."""
    repo_conf = Path(__file__).resolve().parents[1] / "conf"
    defaults = load_config(conf_dir=repo_conf)
    merged = load_config(profile, conf_dir=repo_conf)
    for section, values in merged.items():
        assert section in defaults, f"{profile}: unknown section [{section}]"
        if section != "spark":
            assert set(values) <= set(defaults[section]), f"{profile}: unknown keys {set(values) - set(defaults[section])}"


def test_files_shipped_into_the_working_directory_are_found(conf_dir, tmp_path, monkeypatch):
    """In cluster deploy mode the conf folder is absent and --files put the .toml files in the working directory."""
    driver_dir = tmp_path / "container"
    driver_dir.mkdir()
    for name in ("defaults.toml", "small.toml"):
        (driver_dir / name).write_text((conf_dir / name).read_text())
    monkeypatch.chdir(driver_dir)
    assert load_config("small", conf_dir="conf") == load_config("small", conf_dir=conf_dir)


def test_no_defaults_anywhere_names_both_places(tmp_path, monkeypatch):
    """Without defaults.toml in the conf folder or the working directory, the error names both."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"no defaults.toml in conf nor in the working directory {tmp_path}"):
        load_config(None, conf_dir="conf")
