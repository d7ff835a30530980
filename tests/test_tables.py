"""Table locations: a storage root given as a URI works like the plain path it names."""

from __future__ import annotations

from datetime import datetime, timezone

from pyspark.testing import assertDataFrameEqual

from lookalike.tables import ensure_table, read_table, storage_root, table_path
from schemas import REFRESH_RUNS


def test_file_uri_storage_root_is_hadoops_qualified_form(make_config, tmp_path):
    """file:///x becomes file:/x; other URIs and plain paths keep their form (plain paths made absolute)."""
    assert storage_root(make_config(f"storage.root=file://{tmp_path}/store/")) == f"file:{tmp_path}/store"
    assert storage_root(make_config("storage.root=hdfs://namenode:8020/lookalike")) == "hdfs://namenode:8020/lookalike"
    assert storage_root(make_config(f"storage.root={tmp_path}/store")) == f"{tmp_path}/store"


def test_tables_under_a_file_uri_root_are_the_tables_under_the_plain_path(spark, make_config, tmp_path):
    """Delta refused CREATE at file:///x ("two different locations"); now the table is created, and the
    plain-path configuration reads the very same table."""
    by_uri = make_config(f"storage.root=file://{tmp_path}/store")
    by_path = make_config(f"storage.root={tmp_path}/store")
    ensure_table(spark, by_uri, REFRESH_RUNS)
    assert (tmp_path / "store" / "tables" / "refresh_runs" / "_delta_log").is_dir()
    row = [("night-1", 1, "refresh", "f" * 64, "{}", datetime(2026, 11, 21, tzinfo=timezone.utc))]
    frame = spark.createDataFrame(row, REFRESH_RUNS.spark_schema)
    frame.write.format("delta").mode("append").save(table_path(by_uri, REFRESH_RUNS))
    assertDataFrameEqual(read_table(spark, by_path, REFRESH_RUNS), read_table(spark, by_uri, REFRESH_RUNS))
    assert read_table(spark, by_path, REFRESH_RUNS).count() == 1
