"""Table locations (a storage root given as a URI works like the plain path it names), and upgrades of tables an earlier release created."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType
from pyspark.testing import assertDataFrameEqual

from lookalike.publish import replace_rows
from lookalike.tables import _ENSURED, ensure_table, read_table, storage_root, table_path, table_version
from schemas import CROSS_CATEGORY_ITEMS, REFRESH_RUNS
from schemas._table import Column


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


def test_a_retired_column_is_nulled_in_a_table_from_an_earlier_release(spark, make_config, tmp_path):
    """``cross_category_items`` once held ``neighbour_price`` (NOT NULL). Ensuring the table makes it nullable and
    null, once; the declared columns keep their rows, MERGEs of the new schema work, the change feed reads across
    the upgrade, and time travel still shows the old prices."""
    config = make_config(f"storage.root={tmp_path}/store")
    price = Column("neighbour_price", DoubleType(), "Its price.", nullable=False)
    earlier = replace(CROSS_CATEGORY_ITEMS, columns=(*CROSS_CATEGORY_ITEMS.columns[:5], price, *CROSS_CATEGORY_ITEMS.columns[5:]),
                      retired_columns={})
    path = table_path(config, CROSS_CATEGORY_ITEMS)
    ensure_table(spark, config, earlier)
    rows = [("Bags", "i1", rank, f"n{rank}", "Shoes", 10.0 * rank, 0.9 - rank / 10, "m1", "night-1", 1) for rank in (1, 2, 3)]
    spark.createDataFrame(rows, earlier.spark_schema).write.format("delta").mode("append").save(path)
    written = table_version(spark, config, CROSS_CATEGORY_ITEMS)

    _ENSURED.clear()  # the new release runs in a new Spark application
    ensure_table(spark, config, CROSS_CATEGORY_ITEMS)
    migrated = spark.read.format("delta").load(path)
    assert migrated.schema["neighbour_price"].nullable
    assert migrated.where("neighbour_price IS NOT NULL").count() == 0
    declared = spark.createDataFrame([r[:5] + r[6:] for r in rows], CROSS_CATEGORY_ITEMS.spark_schema)
    assertDataFrameEqual(migrated.select(*CROSS_CATEGORY_ITEMS.column_names), declared)
    upgraded = table_version(spark, config, CROSS_CATEGORY_ITEMS)
    _ENSURED.clear()
    ensure_table(spark, config, CROSS_CATEGORY_ITEMS)
    assert table_version(spark, config, CROSS_CATEGORY_ITEMS) == upgraded  # nothing left to migrate: no commit

    tonight = declared.where("rank < 3").withColumn("run_id", F.lit("night-2"))
    replace_rows(spark, config, CROSS_CATEGORY_ITEMS, tonight, run_id="night-2", run_seq=2, app_id="test.retired",
                 compare=["rank", "neighbour_id", "score"])
    assertDataFrameEqual(read_table(spark, config, CROSS_CATEGORY_ITEMS).select(*CROSS_CATEGORY_ITEMS.column_names),
                         declared.where("rank < 3"))
    feed = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", written)
            .load(path).where("_change_type = 'delete'"))
    assert [(r["rank"], r["neighbour_price"]) for r in feed.collect()] == [(3, None)]
    old = read_table(spark, config, CROSS_CATEGORY_ITEMS, version=written)
    assert sorted(r["neighbour_price"] for r in old.collect()) == [10.0, 20.0, 30.0]
