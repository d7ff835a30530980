"""Where each table lives, creating it from its schema, and registering it for Spark SQL."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas import ALL_TABLES, QUARANTINE, TableSchema

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def checked_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise; it is then safe inside backticks."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid database or table name (letters, digits, underscore)")
    return name


def delta_path_sql(path: str) -> str:
    """``delta.`<path>``` for a SQL statement, with backticks in the path escaped (doubled).

    Paths come from configuration; quoting them keeps a path with backticks or quotes a path.
    """
    return "delta.`" + path.replace("`", "``") + "`"


def sql_string(text: str) -> str:
    """A Spark SQL string literal holding ``text`` exactly (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# A URI scheme at the start of a path (RFC 3986), as Spark SQL's rlike and Python's re both read it.
URI_SCHEME_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*:"


def has_scheme(path: str) -> bool:
    """True for a URI with a scheme (``file:/``, ``hdfs://``, ``s3a://``), False for a plain local path."""
    return re.match(URI_SCHEME_PATTERN, path) is not None


def storage_root(config: Mapping[str, Any]) -> str:
    """The folder (any Hadoop path) that tables, models and caches live under.

    A path without a scheme is a local path, made absolute so that table locations do not
    depend on the working directory.

    Raises
    ------
    ValueError
        The path holds a backtick: Delta's table builder pastes locations into SQL unescaped.
    """
    root = str(config["storage"]["root"]).rstrip("/")
    if "`" in root:
        raise ValueError(f"storage.root {root!r} contains a backtick, which Delta cannot take in a table location")
    if has_scheme(root):
        # file:///x -> file:/x, Hadoop's qualified form: Delta refuses to create a table whose
        # location is given as file:///x, seeing it as a second location beside file:/x.
        return re.sub(r"^file://(?=/)", "file:", root)
    return os.path.abspath(root)


def table_path(config: Mapping[str, Any], table: TableSchema) -> str:
    """Path of a table's Delta folder."""
    return f"{storage_root(config)}/tables/{table.name}"


def qualified_name(config: Mapping[str, Any], table: TableSchema) -> str:
    """``database.table`` as registered in the Spark SQL catalog."""
    return f"`{checked_identifier(config['storage']['database'])}`.`{checked_identifier(table.name)}`"


# Tables this process has already created or checked: the checks cost a few Spark calls each.
_ENSURED: set[tuple[str, str]] = set()


def ensure_table(spark: SparkSession, config: Mapping[str, Any], table: TableSchema) -> DeltaTable:
    """Create the Delta table from its schema if it does not exist yet, with comments and constraints.

    A table already ensured by this Spark application is not checked again.

    Returns
    -------
    DeltaTable
        The table at its path.
    """
    path = table_path(config, table)
    key = (spark.sparkContext.applicationId, path)
    if key in _ENSURED and DeltaTable.isDeltaTable(spark, path):
        return DeltaTable.forPath(spark, path)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(path)
        .comment(table.comment)
        .addColumns(table.spark_schema)
        # Keep at least a week of history for time travel and rollback.
        .property("delta.logRetentionDuration", "interval 30 days")
        .property("delta.deletedFileRetentionDuration", "interval 7 days")
    )
    if table.change_data_feed:
        builder = builder.property("delta.enableChangeDataFeed", "true")
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    delta_table = builder.execute()
    # Tables created by an older release: add the columns declared since (nullable, so old rows stay valid).
    present = set(delta_table.toDF().columns)
    added = [c for c in table.columns if c.name not in present]
    if added:
        columns = ", ".join(f"`{checked_identifier(c.name)}` {c.data_type.simpleString()}" for c in added)
        spark.sql(f"ALTER TABLE {delta_path_sql(path)} ADD COLUMNS ({columns})")
        log.info("%s: added column(s) %s", table.name, [c.name for c in added])
    _retire_columns(spark, path, table)
    properties = {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {delta_path_sql(path)}").collect()}
    if table.change_data_feed and properties.get("delta.enableChangeDataFeed") != "true":
        spark.sql(f"ALTER TABLE {delta_path_sql(path)} SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    existing = {key.removeprefix("delta.constraints.") for key in properties if key.startswith("delta.constraints.")}
    for name, expression in table.constraints.items():
        if name.lower() not in existing:
            spark.sql(f"ALTER TABLE {delta_path_sql(path)} ADD CONSTRAINT {checked_identifier(name)} CHECK ({expression})")
    _ENSURED.add(key)
    return delta_table


def _retire_columns(spark: SparkSession, path: str, table: TableSchema) -> None:
    """Columns an earlier release wrote and ``table`` retired: made nullable, then null in every row.

    Dropping them would need column mapping and break change-feed reads across the drop; nulled,
    the feed shows one update per row once, and time travel still sees the old values.
    """
    schema = spark.read.format("delta").load(path).schema
    for name in table.retired_columns:
        if name not in schema.fieldNames():
            continue
        column = f"`{checked_identifier(name)}`"
        if not schema[name].nullable:
            spark.sql(f"ALTER TABLE {delta_path_sql(path)} ALTER COLUMN {column} DROP NOT NULL")
        # Checked first (file statistics answer it once nulled): an UPDATE matching nothing may still commit.
        if not spark.read.format("delta").load(path).where(F.col(name).isNotNull()).isEmpty():
            spark.sql(f"UPDATE {delta_path_sql(path)} SET {column} = NULL WHERE {column} IS NOT NULL")
            log.info("%s: retired column %s set to null in every row (%s)", table.name, name, table.retired_columns[name])


def read_table(
    spark: SparkSession, config: Mapping[str, Any], table: TableSchema, *, version: int | None = None
) -> DataFrame:
    """Read a table: its current version, or ``version`` (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(table_path(config, table))


def table_version(spark: SparkSession, config: Mapping[str, Any], table: TableSchema) -> int:
    """The table's latest committed version."""
    return int(DeltaTable.forPath(spark, table_path(config, table)).history(1).first()["version"])


@contextmanager
def idempotent_writes(spark: SparkSession, app_id: str, version: int) -> Iterator[None]:
    """Delta idempotent writes for every write in the block, MERGE and DELETE included.

    A write to a table that already holds a commit for ``app_id`` at ``version`` or later is
    skipped, so a rerun of a run re-applies nothing it had committed before it was killed.
    """
    spark.conf.set("spark.databricks.delta.write.txnAppId", app_id)
    spark.conf.set("spark.databricks.delta.write.txnVersion", str(int(version)))
    try:
        yield
    finally:
        spark.conf.unset("spark.databricks.delta.write.txnAppId")
        spark.conf.unset("spark.databricks.delta.write.txnVersion")


def conform(df: DataFrame, table: TableSchema) -> DataFrame:
    """Select and cast ``df``'s columns to the table's schema, in its order.

    Raises
    ------
    ValueError
        If a column of the table is missing from ``df``.
    """
    missing = [c for c in table.column_names if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write {table.name}: missing columns {missing}")
    return df.select([df[c.name].cast(c.data_type).alias(c.name) for c in table.columns])


def registered_location(spark: SparkSession, database: str, table: str) -> str | None:
    """Where the session catalog says ``database.table`` lives; None if it is not registered.

    A metastore lookup (milliseconds): ``DESCRIBE DETAIL`` would load the Delta log of the
    table, which is what made registering the tables after every run take seconds.
    """
    jvm = spark._jvm
    identifier = jvm.org.apache.spark.sql.catalyst.TableIdentifier.apply(table, jvm.scala.Some(database))
    catalog = spark._jsparkSession.sessionState().catalog()
    if not catalog.tableExists(identifier):
        return None
    return str(catalog.getTableMetadata(identifier).location().toString())


def register_tables(spark: SparkSession, config: Mapping[str, Any]) -> list[str]:
    """Create every table if needed and register it in the configured Spark SQL database.

    Returns
    -------
    list of str
        The qualified names registered.
    """
    from lookalike import hadoop_fs

    database = checked_identifier(config["storage"]["database"])
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    names = []
    for table in ALL_TABLES:
        ensure_table(spark, config, table)
        # table_path is absolute, so the catalog entry does not depend on the working directory.
        name = qualified_name(config, table)
        path = table_path(config, table)
        location = registered_location(spark, database, table.name)
        if location is not None and hadoop_fs.qualified(spark, location) == hadoop_fs.qualified(spark, path):
            names.append(name)
            continue
        if location is not None:
            # Registered from another storage.root: SQL would read that store. The entry points
            # at a path (an external table), so dropping it leaves that store's files alone.
            log.warning("%s was registered at %s: re-registering it at %s", name, location, path)
            spark.sql(f"DROP TABLE {name}")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING DELTA LOCATION {sql_string(path)}")
        names.append(name)
    log.info("registered %d tables in database %s", len(names), database)
    return names


def append_quarantine(
    config: Mapping[str, Any], refused: DataFrame, *, run_id: str, stage: str, run_seq: int | None = None
) -> None:
    """Append refused rows to ``quarantine``.

    Parameters
    ----------
    refused : DataFrame
        ``item_id``, ``reason``, ``detail`` and ``source_record`` (the input row as JSON).
    run_id, stage : str
        The run, and the job stage that refused the rows.
    run_seq : int, optional
        The run's sequence number; makes the append idempotent, so a rerun does not repeat the rows.
    """
    rows = refused.select(
        F.lit(run_id).alias("run_id"),
        F.lit(stage).alias("stage"),
        "item_id",
        "reason",
        "detail",
        "source_record",
        F.current_timestamp().alias("quarantined_at"),
    )
    writer = conform(rows, QUARANTINE).write.format("delta").mode("append")
    if run_seq is not None:
        writer = writer.option("txnAppId", f"lookalike.quarantine.{stage}").option("txnVersion", int(run_seq))
    writer.save(table_path(config, QUARANTINE))
