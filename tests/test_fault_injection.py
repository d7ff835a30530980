"""scripts/fault_injection.py at CI size: killed night-2 refreshes, rerun, end equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.publish import PUBLISHED_TABLES

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_killed_refreshes_rerun_to_the_clean_result(photo_dir: Path, tmp_path: Path):
    """Two iterations (the second also kills its first rerun): every rerun exits 0 with tables equal, no duplicates."""
    report = tmp_path / "report.json"
    # Keep the CI run short: one epoch per model is enough, the model only has to exist and be the same everywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    result = subprocess.run(
        [sys.executable, "scripts/fault_injection.py", "--kills", "2", "--items", "120", "--seed", "1",
         "--second-kill-probability", "0.5", "--source-dir", str(photo_dir), "--work", str(tmp_path / "work"),
         "--report", str(report), "--set", "train.classifier_epochs=1", "--set", "train.autoencoder_epochs=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 reruns equal to the clean run, 0 with duplicates" in result.stdout

    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["passed"] is True
    assert summary["clean_checks"]["publications"] == ["night-1", "night-2"]
    assert not any(summary["clean_checks"]["duplicates"].values())
    iterations = summary["iterations"]
    assert [i["iteration"] for i in iterations] == [1, 2]
    assert len(iterations[1]["kills"]) == 2  # seed 1 draws a second kill for iteration 2
    for item in iterations:
        assert item["rerun_exit"] == 0
        assert item["differences"] == {table.name: 0 for table in PUBLISHED_TABLES}  # every published table compared
        assert item["equal"] and item["ok"]
        assert not any(item["duplicates"].values()), item["duplicates"]
        assert item["publications"] == ["night-1", "night-2"]
        assert item["staging_leftover"] == []
