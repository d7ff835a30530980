"""Configuration values that reach SQL statements are quoted or refused, never pasted in raw."""

from __future__ import annotations

import pytest
from pyspark.testing import assertDataFrameEqual

from lookalike.publish import PUBLISHED_TABLES, Publication, register_published_views
from lookalike.tables import ensure_table, register_tables, table_path
from schemas import ALL_TABLES, CATALOG, CHEAPER_ALTERNATIVES, RUNS

HOSTILE_FOLDER = "store 'x'; DROP DATABASE default; -- it\\'s"


def test_hostile_storage_root_is_a_path_not_sql(spark, make_config, tmp_path):
    """A storage root full of backticks, quotes and SQL is used as a folder name; every statement still works."""
    config = make_config(f"storage.root={tmp_path / HOSTILE_FOLDER}", "storage.database=quoting_test")
    databases_before = {d.name for d in spark.catalog.listDatabases()}
    for table in ALL_TABLES:
        ensure_table(spark, config, table)
    names = register_tables(spark, config)
    publication = Publication(run_seq=1, run_id="run-1", kind="refresh", model_version=None,
                              catalog_version=0, embeddings_version=0, similar_items_version=0)
    views = register_published_views(spark, config, publication)

    assert (tmp_path / HOSTILE_FOLDER / "tables" / "catalog" / "_delta_log").is_dir()
    assert {d.name for d in spark.catalog.listDatabases()} == databases_before | {"quoting_test"}
    registered = spark.sql("DESCRIBE DETAIL quoting_test.catalog").first()["location"]
    assert registered == "file:" + table_path(config, CATALOG)
    assert len(names) == len(ALL_TABLES) and len(views) == len(PUBLISHED_TABLES)
    empty = spark.createDataFrame([], CATALOG.spark_schema)
    assertDataFrameEqual(spark.table("quoting_test.published_catalog"), empty)
    # A publication from before a table existed names no version of it: its view is empty, not an error.
    assert publication.version_of(CHEAPER_ALTERNATIVES) is None
    assertDataFrameEqual(
        spark.table("quoting_test.published_cheaper_alternatives"), spark.createDataFrame([], CHEAPER_ALTERNATIVES.spark_schema)
    )
    assertDataFrameEqual(spark.table("quoting_test.catalog"), empty)


@pytest.mark.parametrize("database", ["x; DROP DATABASE default", "a`b", "lookalike--"])
def test_hostile_database_name_is_refused_before_any_sql(spark, make_config, database):
    """A database name that is not a plain identifier raises ValueError and creates nothing."""
    config = make_config(f"storage.database={database}")
    databases_before = {d.name for d in spark.catalog.listDatabases()}
    with pytest.raises(ValueError, match="not a valid database or table name"):
        register_tables(spark, config)
    assert {d.name for d in spark.catalog.listDatabases()} == databases_before


def test_storage_root_with_a_backtick_is_refused(spark, make_config, tmp_path):
    """Delta pastes table locations into SQL unescaped, so a backtick in the storage root is refused up front."""
    config = make_config(f"storage.root={tmp_path / 'a`b'}")
    with pytest.raises(ValueError, match="backtick"):
        ensure_table(spark, config, CATALOG)
    assert not (tmp_path / "a`b").exists()


def test_registering_another_store_repoints_the_tables_and_leaves_the_first_store_alone(spark, make_config, tmp_path):
    """The same database registered from a second storage.root reads the second store; the first keeps its rows."""
    first = make_config(f"storage.root={tmp_path / 'first'}", "storage.database=two_stores")
    second = make_config(f"storage.root={tmp_path / 'second'}", "storage.database=two_stores")
    register_tables(spark, first)
    spark.sql("INSERT INTO two_stores.runs (run_id, job, started_at, finished_at, model_version, figures) "
              "VALUES ('run-a', 'refresh', current_timestamp(), current_timestamp(), NULL, map('seconds', 1.0D))")
    assert spark.table("two_stores.runs").count() == 1
    register_tables(spark, second)
    for table in ALL_TABLES:
        location = spark.sql(f"DESCRIBE DETAIL two_stores.{table.name}").first()["location"]
        assert location == "file:" + table_path(second, table), table.name
    assert spark.table("two_stores.runs").count() == 0  # the second store's table, empty
    # The first store's files were not touched: its table still holds its row.
    first_runs = spark.read.format("delta").load(table_path(first, RUNS))
    assert [r["run_id"] for r in first_runs.collect()] == ["run-a"]
