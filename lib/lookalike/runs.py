"""Run ids, per-stage timing, and the ``runs`` table that records what each job did."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from pyspark.sql import SparkSession

from lookalike.tables import conform, ensure_table, table_path
from schemas import RUNS

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class StageProgress:
    """What a stage reports about its work: ``progress.done(n)`` once its item count is known."""

    def __init__(self, total: int | None, unit: str) -> None:
        self.total = total
        self.unit = unit
        self.items: int | None = None

    def done(self, items: int, total: int | None = None) -> None:
        """Record the items the stage processed (and the total it had, if known only now)."""
        self.items = int(items)
        if total is not None:
            self.total = int(total)


def _spark_task_progress(spark: SparkSession) -> tuple[int, int]:
    """Completed and total tasks of the Spark stages running now."""
    tracker = spark.sparkContext.statusTracker()
    infos = [tracker.getStageInfo(stage) for stage in tracker.getActiveStageIds()]
    infos = [info for info in infos if info is not None]
    return sum(i.numCompletedTasks for i in infos), sum(i.numTasks for i in infos)


class StageTimer:
    """Seconds, items and rate per named stage; ``with timer.stage("embed") as progress: ...``.

    With a session, a long stage also logs a heartbeat every ``heartbeat_s`` seconds with the
    Spark tasks done in the stages running at that moment, so a nightly log shows a stage moving.
    """

    def __init__(self, spark: SparkSession | None = None, *, heartbeat_s: float = 60.0) -> None:
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}
        self._spark = spark
        self._heartbeat_s = heartbeat_s

    def _heartbeat(self, name: str, start: float, stop: threading.Event) -> None:
        while not stop.wait(self._heartbeat_s):
            try:
                done, total = _spark_task_progress(self._spark)
            except Exception:  # the session may be stopping; a heartbeat must never fail a stage
                return
            elapsed = time.perf_counter() - start
            if total:
                log.info("stage %s: running %.0f s, Spark tasks %d/%d done in the running stages", name, elapsed, done, total)
            else:
                log.info("stage %s: running %.0f s (driver-side work, no Spark stage running)", name, elapsed)

    @contextmanager
    def stage(self, name: str, *, total: int | None = None, unit: str = "items") -> Iterator[StageProgress]:
        """Time the block; log its start, heartbeats, and its end with items done / total and rate."""
        log.info("stage %s: started%s", name, f" ({total} {unit} to do)" if total is not None else "")
        progress = StageProgress(total, unit)
        start = time.perf_counter()
        stop = threading.Event()
        beat = None
        if self._spark is not None:
            beat = threading.Thread(target=self._heartbeat, args=(name, start, stop), daemon=True)
            beat.start()
        try:
            yield progress
        finally:
            stop.set()
            if beat is not None:
                beat.join(timeout=5)
            seconds = time.perf_counter() - start
            self.seconds[name] = seconds
            if progress.items is None:
                log.info("stage %s: %.1f s", name, seconds)
            else:
                self.items[name] = progress.items
                of_total = f"/{progress.total}" if progress.total is not None else ""
                log.info("stage %s: %d%s %s in %.1f s (%.1f %s/s)", name, progress.items, of_total, progress.unit,
                         seconds, progress.items / max(seconds, 1e-9), progress.unit)


def record_run(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    run_id: str,
    job: str,
    started_at: datetime,
    figures: Mapping[str, float],
    model_version: str | None = None,
    run_seq: int | None = None,
) -> None:
    """Append one row to the ``runs`` table; with ``run_seq``, at most once per run (idempotent write)."""
    ensure_table(spark, config, RUNS)
    row = [(run_id, job, started_at, datetime.now(timezone.utc), model_version, {k: float(v) for k, v in figures.items()})]
    frame = spark.createDataFrame(row, RUNS.spark_schema)
    writer = conform(frame, RUNS).write.format("delta").mode("append")
    if run_seq is not None:
        writer = writer.option("txnAppId", f"lookalike.runs.{job}").option("txnVersion", int(run_seq))
    writer.save(table_path(config, RUNS))
