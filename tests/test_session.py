"""Concurrent writes from one driver: each task gets its own session, so Delta's per-write settings never mix."""

from __future__ import annotations

import threading

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.session import child_session, run_concurrently
from lookalike.tables import idempotent_writes

TXN_APP_ID = "spark.databricks.delta.write.txnAppId"


def test_child_session_copies_sql_settings_but_not_a_write_in_progress(spark):
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        with idempotent_writes(spark, "lookalike.test", 3):
            child = child_session(spark)
        assert child is not spark
        assert child.conf.get("spark.sql.shuffle.partitions") == "5"
        assert child.conf.get(TXN_APP_ID, None) is None
        child.conf.set("spark.sql.shuffle.partitions", "7")
        assert spark.conf.get("spark.sql.shuffle.partitions") == "5"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)


def test_concurrent_merges_keep_their_own_idempotency_keys(spark, tmp_path):
    """Three MERGEs at once, each under its own txnAppId: each commits once, and a second round commits nothing."""
    paths = {f"t{i}": str(tmp_path / f"t{i}") for i in range(3)}
    for path in paths.values():
        spark.range(20).withColumn("v", F.lit(0)).write.format("delta").save(path)
    source = spark.range(10).withColumn("v", F.lit(1))
    started = threading.Barrier(3, timeout=60)

    def merge(name: str):
        def task(session):
            started.wait()  # all three inside their write block at once
            with idempotent_writes(session, f"lookalike.test.{name}", 1):
                DeltaTable.forPath(session, paths[name]).alias("t").merge(
                    source.alias("s"), "t.id = s.id"
                ).whenMatchedUpdateAll().execute()
            return DeltaTable.forPath(session, paths[name]).history().select("version").count()

        return task

    assert run_concurrently(spark, {name: merge(name) for name in paths}) == {name: 2 for name in paths}
    started.reset()
    assert run_concurrently(spark, {name: merge(name) for name in paths}) == {name: 2 for name in paths}
    for name, path in paths.items():
        history = DeltaTable.forPath(spark, path).history().select("operation").collect()
        assert [r["operation"] for r in history] == ["MERGE", "WRITE"]
        expected = spark.range(20).withColumn("v", F.when(F.col("id") < 10, 1).otherwise(0))
        assertDataFrameEqual(spark.read.format("delta").load(path), expected)
    assert spark.conf.get(TXN_APP_ID, None) is None


def test_a_failing_task_is_raised_after_the_others_finish(spark, tmp_path):
    path = str(tmp_path / "written")
    finished = threading.Event()

    def fails(session):
        raise ValueError("task failed on purpose")

    def writes(session):
        session.range(3).write.format("delta").save(path)
        finished.set()
        return 3

    with pytest.raises(ValueError, match="task failed on purpose"):
        run_concurrently(spark, {"fails": fails, "writes": writes})
    assert finished.is_set()
    assertDataFrameEqual(spark.read.format("delta").load(path), spark.range(3))


def test_a_single_task_runs_in_the_callers_session(spark):
    assert run_concurrently(spark, {"only": lambda session: session is spark}) == {"only": True}
