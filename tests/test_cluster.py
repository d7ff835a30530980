"""scripts/cluster_check.py: the jobs on a real standalone cluster (one worker killed mid-run) equal a local[*] run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from lookalike.config import load_config
from lookalike.publish import PUBLISHED_TABLES, published_snapshot

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_cluster_run_with_a_worker_killed_publishes_the_tables_of_a_local_run(spark, photo_dir: Path, tmp_path: Path):
    """Ingest, refresh (worker killed while scoring), train and an incremental refresh on spark://: tables equal local[*]."""
    work, report_path = tmp_path / "work", tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    result = subprocess.run(
        [sys.executable, "scripts/cluster_check.py", "--items", "100", "--source-dir", str(photo_dir), "--port", "7078",
         "--work", str(work), "--report", str(report_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    jobs = {job["name"]: job for job in report["jobs"]}
    assert sorted(jobs) == sorted(["local-ingest", "local-train", "local-night-1", "local-night-2", "cluster-ingest",
                                   "cluster-night-1", "cluster-train", "cluster-night-2"])
    assert all(job["exit_code"] == 0 for job in jobs.values())
    assert jobs["cluster-night-1"]["master"] == "spark://127.0.0.1:7078"
    kill = report["kill"]
    assert kill["stage"] == "embed" and kill["busy_python_worker"] in kill["killed_pids"]
    # From the job's Spark event log: the kill landed on a running task, which ran again elsewhere.
    assert kill["lost_tasks"] >= 1 and kill["executors_removed"] >= 1
    every_table = {table.name: 0 for table in PUBLISHED_TABLES} | {"publications": 0}
    assert report["differences"] == {label: every_table for label in ("night-1", "night-2")}
    assert report["rows"]["night-2"]["similar_items"] > 0

    # The published tables of both stores after night-2, compared here as whole DataFrames too.
    def tables(store: Path) -> dict:
        config = load_config("test", [f"storage.root={store}"], conf_dir=REPO / "conf")
        return published_snapshot(spark, config)[1]

    local, cluster = tables(work / "local-after-night-2"), tables(work / "cluster-after-night-2")
    for name in (table.name for table in PUBLISHED_TABLES if table.name != "catalog"):
        assertDataFrameEqual(cluster[name], local[name], rtol=0, atol=0)
    assertDataFrameEqual(cluster["catalog"].drop("ingested_at"), local["catalog"].drop("ingested_at"))
