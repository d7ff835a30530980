"""spark-submit.sh runs a job in its own JVM with the Delta jars, the zipped library and the conf."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from schemas import ALL_TABLES

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_submitted_publish_job_creates_and_registers_every_table(tmp_path: Path):
    """publish through spark-submit.sh (local[1]) creates every Delta table and lists them."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    result = subprocess.run(
        ["./spark-submit.sh", "--master", "local[1]", "jobs/publish.py", "--profile", "test", "--set", f"storage.root={store}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if line.startswith("`lookalike`.")]
    assert printed == [
        f"`lookalike`.`{table.name}`" for table in ALL_TABLES
    ]
    for name in (table.name for table in ALL_TABLES):
        assert (store / "tables" / name / "_delta_log" / "00000000000000000000.json").is_file()
    assert (REPO / "dist" / "lookalike.zip").is_file()


def test_spark_submit_without_a_job_file_explains_usage():
    """Called with no job, the wrapper fails with its usage line rather than a Spark stack trace."""
    result = subprocess.run(["./spark-submit.sh", "--master", "local[1]"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: ./spark-submit.sh" in result.stderr


def test_spark_sql_sees_tables_a_job_registered_in_the_derby_metastore(tmp_path: Path):
    """With storage.metastore=derby, tables registered by one process are listed by spark-sql.sh in another."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    common = ["--set", f"storage.root={store}", "--set", "storage.metastore=derby"]
    published = subprocess.run(
        ["./spark-submit.sh", "--master", "local[1]", "jobs/publish.py", "--profile", "test", *common],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert published.returncode == 0, published.stderr[-3000:]
    listed = subprocess.run(
        ["./spark-sql.sh", "--profile", "test", *common, "-e", "SHOW TABLES IN lookalike"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    assert names == sorted(table.name for table in ALL_TABLES)
    assert (store / "metastore_db").is_dir()
