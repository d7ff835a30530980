"""Run ids, per-stage timing, and the ``runs`` table that records what each job did."""

from __future__ import annotations

import logging
import secrets
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


class StageTimer:
    """Collects seconds per named stage; ``with timer.stage("embed"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block and log its start and end."""
        log.info("stage %s: started", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            log.info("stage %s: %.1f s", name, self.seconds[name])


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
