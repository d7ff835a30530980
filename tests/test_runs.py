"""Per-stage progress logging: items done / total, rate, and heartbeats while Spark works."""

from __future__ import annotations

import logging
import re
import time

import pytest

from lookalike.runs import StageTimer


def test_a_stage_logs_items_done_of_total_and_its_rate(caplog: pytest.LogCaptureFixture):
    timer = StageTimer()
    with caplog.at_level(logging.INFO, logger="lookalike.runs"):
        with timer.stage("embed", total=10, unit="photos") as progress:
            time.sleep(0.2)
            progress.done(8)
        with timer.stage("publish"):
            pass
    assert timer.items == {"embed": 8} and set(timer.seconds) == {"embed", "publish"}
    messages = [r.getMessage() for r in caplog.records]
    assert "stage embed: started (10 photos to do)" in messages
    finished = next(m for m in messages if m.startswith("stage embed: 8/10 photos in"))
    seconds, rate = map(float, re.search(r"in ([\d.]+) s \(([\d.]+) photos/s\)", finished).groups())
    assert seconds >= 0.2 and rate == pytest.approx(8 / timer.seconds["embed"], rel=0.05)
    assert any(re.fullmatch(r"stage publish: [\d.]+ s", m) for m in messages)


def test_a_long_stage_logs_heartbeats_with_spark_task_progress(spark, caplog: pytest.LogCaptureFixture):
    timer = StageTimer(spark, heartbeat_s=0.5)

    def slow(rows):
        time.sleep(1.0)
        return rows

    with caplog.at_level(logging.INFO, logger="lookalike.runs"):
        with timer.stage("index"):
            spark.sparkContext.parallelize(range(8), 4).mapPartitions(slow).count()
    beats = [r.getMessage() for r in caplog.records if "Spark tasks" in r.getMessage()]
    assert beats, "no heartbeat while a 2-second Spark job ran"
    progress = [tuple(map(int, re.search(r"Spark tasks (\d+)/(\d+)", b).groups())) for b in beats]
    # A beat before the job starts sees no running stage; one during the job sees its 4 tasks.
    assert any(total == 4 and 0 <= done <= 4 for done, total in progress), progress
