"""scripts/embedding_faults.py: a killed Python worker, a killed executor and a straggler under speculation change no score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_faults_while_embedding_leave_every_score_unchanged(photo_dir: Path, tmp_path: Path):
    """Each fault hits a running task (a failed attempt, or a stopped straggler overtaken); all 240 scores stay equal."""
    report = tmp_path / "faults.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    result = subprocess.run(
        [sys.executable, "scripts/embedding_faults.py", "--photos", str(photo_dir / "images"), "--limit", "80",
         "--copies", "3", "--stall", "120", "--report", str(report)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    faults = {item["fault"]: item for item in json.loads(report.read_text(encoding="utf-8"))}
    assert sorted(faults) == ["executor", "python-worker", "speculation"]
    for item in faults.values():
        assert (item["photos"], item["differing_photos"], item["max_difference"]) == (240, 0, 0.0), item
        assert item["injected"] and item["ok"], item
    assert faults["python-worker"]["failed_tasks"] >= 1 and faults["executor"]["failed_tasks"] >= 1
    assert faults["python-worker"]["injected"].startswith("SIGKILL to Python worker")
    assert faults["executor"]["injected"].startswith("SIGKILL to executor JVM")
    # The stopped task would have held the job for 120 s; a speculative copy on the other host finished it.
    assert faults["speculation"]["faulty_seconds"] < faults["speculation"]["clean_seconds"] + 90
