"""All-or-nothing publishing: apply a run's staged changes, then commit one pointer row.

Delta commits are atomic per table only. A run therefore merges its staged changes into
``embeddings`` and ``similar_items`` (and its ingest into ``catalog``) first, and appends its row
to ``publications`` last. Readers resolve the pointer and read every table at the version it
names (``published_table``), so they see run N or run N-1 across all tables, never a mix.
Every write carries the run's sequence number as a Delta idempotent-write version, so a rerun
of a killed run skips what it had already committed.
"""

from __future__ import annotations

import functools
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.tables import (
    checked_identifier,
    conform,
    delta_path_sql,
    ensure_table,
    idempotent_writes,
    read_table,
    sql_string,
    table_path,
    table_version,
)
from schemas import (
    CATALOG,
    CHEAPER_ALTERNATIVES,
    CROSS_CATEGORY_ITEMS,
    DISPLAY_LOOKALIKES,
    EMBEDDINGS,
    MISCLASSIFIED_ITEMS,
    PUBLICATIONS,
    SIMILAR_ITEMS,
    TableSchema,
)

log = logging.getLogger(__name__)

# The tables a publication pins, with the key their rows are merged on.
PUBLISHED_KEYS: dict[str, tuple[str, ...]] = {
    CATALOG.name: ("item_id",),
    EMBEDDINGS.name: ("item_id",),
    SIMILAR_ITEMS.name: ("item_id", "rank"),
    CHEAPER_ALTERNATIVES.name: ("item_id", "rank"),
    CROSS_CATEGORY_ITEMS.name: ("item_id", "rank"),
    MISCLASSIFIED_ITEMS.name: ("item_id",),
    DISPLAY_LOOKALIKES.name: ("item_id", "rank"),
}
PUBLISHED_TABLES: tuple[TableSchema, ...] = (
    CATALOG, EMBEDDINGS, SIMILAR_ITEMS, CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, MISCLASSIFIED_ITEMS,
    DISPLAY_LOOKALIKES,
)
# Lists derived from the embeddings, recomputed where a change reaches them (see lookalike.alternatives).
DERIVED_TABLES: tuple[TableSchema, ...] = (
    CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, MISCLASSIFIED_ITEMS, DISPLAY_LOOKALIKES,
)
LINEAGE_COLUMNS = ("run_id", "catalog_version")
DELETE_FLAG = "_delete"
_METADATA_PREFIX = "lookalike:"


@dataclass(frozen=True)
class Publication:
    """One row of ``publications``: a run and the table versions that make it up."""

    run_seq: int
    run_id: str
    kind: str
    model_version: str | None
    catalog_version: int
    embeddings_version: int
    similar_items_version: int
    input_fingerprint: str | None = None
    # Null in publications made before these tables existed.
    cheaper_alternatives_version: int | None = None
    cross_category_items_version: int | None = None
    misclassified_items_version: int | None = None
    display_lookalikes_version: int | None = None

    def version_of(self, table: TableSchema) -> int | None:
        """The version of ``table`` that belongs to this publication; None if the run published none."""
        version = getattr(self, f"{table.name}_version")
        return None if version is None else int(version)


def publications(spark: SparkSession, config: Mapping[str, Any]) -> list[Publication]:
    """Every publication, oldest first."""
    rows = read_table(spark, config, PUBLICATIONS).orderBy("run_seq").collect()
    fields = Publication.__dataclass_fields__
    return [Publication(**{k: v for k, v in row.asDict().items() if k in fields}) for row in rows]


def latest_publication(spark: SparkSession, config: Mapping[str, Any]) -> Publication | None:
    """The published run (highest run_seq), or None before the first publish."""
    row = read_table(spark, config, PUBLICATIONS).orderBy(F.col("run_seq").desc()).limit(1).collect()
    if not row:
        return None
    fields = Publication.__dataclass_fields__
    return Publication(**{k: v for k, v in row[0].asDict().items() if k in fields})


def require_publication(
    spark: SparkSession, config: Mapping[str, Any], publication: Publication | None = None
) -> Publication:
    """``publication`` if given, else the latest one, for jobs that read a published run.

    Raises
    ------
    RuntimeError
        If nothing has been published yet.
    """
    publication = publication if publication is not None else latest_publication(spark, config)
    if publication is None:
        raise RuntimeError("nothing is published yet: run the refresh job first")
    return publication


def published_table(
    spark: SparkSession, config: Mapping[str, Any], table: TableSchema, publication: Publication | None = None
) -> DataFrame:
    """``table`` as of a publication (default: the latest); empty before the first publish.

    Read every table of one run through the same ``publication`` to see one whole run.
    """
    publication = publication if publication is not None else latest_publication(spark, config)
    version = publication.version_of(table) if publication is not None else None
    if version is None:
        return spark.createDataFrame([], table.spark_schema)
    return read_table(spark, config, table, version=version)


def published_snapshot(spark: SparkSession, config: Mapping[str, Any]) -> tuple[Publication | None, dict[str, DataFrame]]:
    """The latest publication and every published table at its version, resolved once."""
    publication = latest_publication(spark, config)
    return publication, {t.name: published_table(spark, config, t, publication) for t in PUBLISHED_TABLES}


def _commit_marker(run_id: str, run_seq: int) -> str:
    return _METADATA_PREFIX + json.dumps({"run_id": run_id, "run_seq": int(run_seq)}, sort_keys=True)


def last_writer(spark: SparkSession, config: Mapping[str, Any], table: TableSchema) -> tuple[str, int] | None:
    """(run_id, run_seq) of the latest run that changed ``table``'s rows, from the commit metadata."""
    history = DeltaTable.forPath(spark, table_path(config, table)).history(50)
    for row in history.where(F.col("userMetadata").startswith(_METADATA_PREFIX)).orderBy(F.col("version").desc()).limit(1).collect():
        marker = json.loads(row["userMetadata"][len(_METADATA_PREFIX):])
        return str(marker["run_id"]), int(marker["run_seq"])
    return None


def unfinished_run(spark: SparkSession, config: Mapping[str, Any], publication: Publication | None) -> str | None:
    """The run that changed a published table after the latest publication and never published, if any."""
    published_seq = publication.run_seq if publication else 0
    for table in (EMBEDDINGS, SIMILAR_ITEMS, *DERIVED_TABLES):
        writer = last_writer(spark, config, table)
        if writer and writer[1] > published_seq:
            return writer[0]
    return None


def _differs(columns: Sequence[str]) -> Column:
    return functools.reduce(lambda a, b: a | b, [~F.col(f"t.`{c}`").eqNullSafe(F.col(f"s.`{c}`")) for c in columns])


def apply_changes(
    spark: SparkSession,
    config: Mapping[str, Any],
    table: TableSchema,
    changes: DataFrame,
    *,
    run_id: str,
    run_seq: int,
) -> dict[str, int]:
    """MERGE staged changes into a published table: ``_delete`` rows removed, others upserted.

    Staging holds changed rows only (whole lists, for ``similar_items``), so the change feed
    holds real changes only. Idempotent per ``run_seq``; nothing is committed when there is
    nothing to change.

    Returns
    -------
    dict
        ``inserted``, ``updated``, ``deleted`` rows (zeros when skipped).
    """
    key = PUBLISHED_KEYS[table.name]
    if changes.isEmpty():
        return {"inserted": 0, "updated": 0, "deleted": 0}
    values = {c: f"s.`{c}`" for c in table.column_names}
    on = " AND ".join(f"t.`{c}` = s.`{c}`" for c in key)
    target = DeltaTable.forPath(spark, table_path(config, table))
    with _run_commit(spark, run_id, run_seq, f"lookalike.publish.{table.name}"):
        metrics = (
            target.alias("t")
            .merge(changes.alias("s"), on)
            .whenMatchedDelete(f"s.`{DELETE_FLAG}`")
            .whenMatchedUpdate(set=values)
            .whenNotMatchedInsert(condition=f"NOT s.`{DELETE_FLAG}`", values=values)
            .execute()
            .first()
        )
    return _merge_counts(metrics)


def _merge_counts(metrics: Any) -> dict[str, int]:
    if metrics is None:  # skipped: this run had committed it before
        return {"inserted": 0, "updated": 0, "deleted": 0}
    return {
        "inserted": int(metrics["num_inserted_rows"]),
        "updated": int(metrics["num_updated_rows"]),
        "deleted": int(metrics["num_deleted_rows"]),
    }


@contextmanager
def _run_commit(spark: SparkSession, run_id: str, run_seq: int, app_id: str) -> Iterator[None]:
    """Idempotent writes plus a commit marker naming the run, for every write in the block."""
    spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", _commit_marker(run_id, run_seq))
    try:
        with idempotent_writes(spark, app_id, run_seq):
            yield
    finally:
        spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")


def replace_rows(
    spark: SparkSession,
    config: Mapping[str, Any],
    table: TableSchema,
    source: DataFrame,
    *,
    run_id: str,
    run_seq: int,
    app_id: str,
    compare: Sequence[str] | None = None,
) -> dict[str, int]:
    """Make ``table``'s rows equal to ``source`` with one MERGE on the table's key, writing only rows that differ.

    Unlike an overwrite, rows equal in the ``compare`` columns (default: all) are left as they
    are, so the change feed shows exactly what changed. Idempotent per ``app_id`` and ``run_seq``.

    Returns
    -------
    dict
        ``inserted``, ``updated``, ``deleted`` rows.
    """
    key = PUBLISHED_KEYS[table.name]
    on = " AND ".join(f"t.`{c}` = s.`{c}`" for c in key)
    # The table's declared columns, named: a table from an earlier release may hold retired ones too.
    values = {c: f"s.`{c}`" for c in table.column_names}
    with _run_commit(spark, run_id, run_seq, app_id):
        metrics = (
            DeltaTable.forPath(spark, table_path(config, table)).alias("t")
            .merge(conform(source, table).alias("s"), on)
            .whenMatchedUpdate(condition=_differs(compare or table.column_names), set=values)
            .whenNotMatchedInsert(values=values)
            .whenNotMatchedBySourceDelete()
            .execute()
            .first()
        )
    return _merge_counts(metrics)


def sync_to_version(
    spark: SparkSession, config: Mapping[str, Any], table: TableSchema, version: int | None, *, run_id: str, run_seq: int
) -> dict[str, int]:
    """Make ``table``'s rows equal to its rows at ``version`` (empty for None) with one MERGE (time travel as the source).

    Unlike RESTORE, only rows that differ are written, so the change feed shows exactly what changed back.
    """
    source = (
        spark.createDataFrame([], table.spark_schema) if version is None
        else read_table(spark, config, table, version=version)
    )
    return replace_rows(spark, config, table, source, run_id=run_id, run_seq=run_seq, app_id=f"lookalike.rollback.{table.name}")


def commit_publication(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    run_id: str,
    run_seq: int,
    kind: str,
    model_version: str | None,
    input_fingerprint: str | None,
    figures: Mapping[str, float],
) -> Publication:
    """Append the pointer row naming the current version of every published table: the publish itself."""
    versions = {f"{t.name}_version": table_version(spark, config, t) for t in PUBLISHED_TABLES}
    publication = Publication(
        run_seq=run_seq, run_id=run_id, kind=kind, model_version=model_version,
        input_fingerprint=input_fingerprint, **versions,
    )
    row = {**publication.__dict__, "published_at": datetime.now(timezone.utc), "figures": {k: float(v) for k, v in figures.items()}}
    frame = spark.createDataFrame([row], PUBLICATIONS.spark_schema)
    (
        conform(frame, PUBLICATIONS).write.format("delta").mode("append")
        .option("txnAppId", "lookalike.publish.pointer").option("txnVersion", int(run_seq))
        .save(table_path(config, PUBLICATIONS))
    )
    log.info("published run %s (seq %d): %s", run_id, run_seq, versions)
    return publication


def register_published_views(spark: SparkSession, config: Mapping[str, Any], publication: Publication) -> list[str]:
    """Point the ``published_<table>`` views of the Spark SQL database at a publication's versions.

    Each view is replaced on its own; a query that must join two tables of one run should read
    the versions in ``publications`` (see docs/REFRESH.md).
    """
    database = checked_identifier(config["storage"]["database"])
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    names = []
    for table in PUBLISHED_TABLES:
        name = f"`{database}`.`published_{checked_identifier(table.name)}`"
        spark.sql(
            f"CREATE OR REPLACE VIEW {name} COMMENT {sql_string('run ' + publication.run_id)} AS "
            f"{_published_view_query(config, table, publication)}"
        )
        names.append(name)
    return names


# Columns a published view adds from another table of the same run: column -> (after column, table, its column, key).
_JOINED_AT_READ = {
    CROSS_CATEGORY_ITEMS.name: {"neighbour_price": ("neighbour_category", EMBEDDINGS, "price", "neighbour_id")},
}


def _published_view_query(config: Mapping[str, Any], table: TableSchema, publication: Publication) -> str:
    """The query of ``published_<table>``: the table's columns at the publication's version, with the joined ones."""
    def at_version(of: TableSchema) -> str:
        version = publication.version_of(of)
        # A run from before the table existed published none of its rows.
        return f"{delta_path_sql(table_path(config, of))} " + ("WHERE false" if version is None else f"VERSION AS OF {int(version)}")

    joined = _JOINED_AT_READ.get(table.name, {})
    columns, joins = [], []
    for column in table.column_names:
        columns.append(f"t.`{column}`")
        for position, (added, (after, other, source, key)) in enumerate(joined.items()):
            if after == column:
                alias = f"j{position}"
                columns.append(f"{alias}.`{source}` AS `{added}`")
                # Left: a row never disappears from the view, even if its neighbour's row were missing.
                joins.append(f"LEFT JOIN (SELECT * FROM {at_version(other)}) {alias} ON {alias}.`item_id` = t.`{key}`")
    return f"SELECT {', '.join(columns)} FROM (SELECT * FROM {at_version(table)}) t {' '.join(joins)}"


def changes_since(
    spark: SparkSession, config: Mapping[str, Any], table: TableSchema, since_version: int,
    publication: Publication | None = None,
) -> DataFrame:
    """Rows of a published table changed after ``since_version``, up to the published version.

    For a consumer that last read ``table`` at ``since_version``: inserts, deletes and the new
    side of updates (``_change_type``), from the Delta change data feed. Empty when nothing was
    published since.
    """
    publication = publication if publication is not None else latest_publication(spark, config)
    until = publication.version_of(table) if publication else None
    if until is None or until <= since_version:
        return spark.createDataFrame([], table.spark_schema).select(
            "*", F.lit(None).cast("string").alias("_change_type"), F.lit(None).cast("long").alias("_commit_version")
        )
    feed = (
        spark.read.format("delta")
        .option("readChangeFeed", True)
        .option("startingVersion", since_version + 1)
        .option("endingVersion", until)
        .load(table_path(config, table))
    )
    return feed.where(F.col("_change_type") != "update_preimage").drop("_commit_timestamp")


def ensure_published_tables(spark: SparkSession, config: Mapping[str, Any]) -> None:
    """Create the tables a publication touches, if missing."""
    for table in (*PUBLISHED_TABLES, PUBLICATIONS):
        ensure_table(spark, config, table)


__all__ = [
    "DERIVED_TABLES", "PUBLISHED_TABLES", "Publication", "apply_changes", "changes_since", "commit_publication",
    "latest_publication", "last_writer", "published_snapshot", "published_table", "publications", "register_published_views",
    "replace_rows", "sync_to_version", "unfinished_run",
]
