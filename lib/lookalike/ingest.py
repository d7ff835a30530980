"""Ingest: a catalog file plus its photos -> Delta ``catalog`` and ``images``; bad rows -> ``quarantine``."""

from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from delta.tables import DeltaTable

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, MapType, StructType
from pyspark.storagelevel import StorageLevel

from lookalike.tables import (
    URI_SCHEME_PATTERN,
    append_quarantine,
    conform,
    ensure_table,
    has_scheme,
    idempotent_writes,
    read_table,
)
from schemas import CATALOG, IMAGES, QUARANTINE
from schemas.catalog import OPTIONAL_INPUT_COLUMNS, REQUIRED_INPUT_COLUMNS

log = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json"}


@dataclass
class IngestCounts:
    """What happened to every input row: ``input_rows == ingested + sum(quarantined.values())``.

    ``photos_read`` photos were read (the others were unchanged since the last ingest), ``changed``
    catalog rows were inserted or updated and ``deleted`` removed. ``kept`` items had every row
    of this file refused but stay in the catalog with the good row of an earlier ingest.
    """

    input_rows: int
    ingested: int
    quarantined: dict[str, int] = field(default_factory=dict)
    new_images: int = 0
    photos_read: int = 0
    changed: int = 0
    deleted: int = 0
    kept: int = 0

    @property
    def quarantined_total(self) -> int:
        """Rows quarantined, all reasons."""
        return sum(self.quarantined.values())


def file_format_of(path: str, file_format: str | None = None) -> str:
    """``file_format`` if given, else the Spark source named by the path's extension.

    Raises
    ------
    ValueError
        If the extension is not one of .csv, .parquet, .jsonl, .json, .ndjson.
    """
    fmt = file_format or _FORMATS.get(Path(path.rstrip("/")).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path!r}; pass file_format='csv'|'parquet'|'json'")
    return fmt


def read_catalog_file(
    spark: SparkSession, path: str, *, file_format: str | None = None, allow_unknown_columns: bool = False
) -> DataFrame:
    """Read a catalog file (CSV with header, Parquet, or JSON Lines) without interpreting values.

    CSV values stay strings so that a bad price becomes a quarantine row, not a parse failure.

    Parameters
    ----------
    allow_unknown_columns : bool
        Ignore (and log) columns the catalog does not know, instead of refusing the file.

    Raises
    ------
    ValueError
        If the format cannot be told from the extension, a required column is missing, a column
        is not a plain value (struct, array, map), or an unknown column appears and is not allowed.
    """
    fmt = file_format_of(path, file_format)
    reader = spark.read.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", True).option("inferSchema", False).option("mode", "PERMISSIVE")
    raw = reader.load(path)
    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(
            f"catalog {path!r} lacks required column(s) {missing}; it has {raw.columns}. "
            f"Required: {list(REQUIRED_INPUT_COLUMNS)}; optional: {list(OPTIONAL_INPUT_COLUMNS)}"
        )
    nested = [f"{f.name} ({f.dataType.simpleString()})" for f in raw.schema.fields
              if isinstance(f.dataType, (ArrayType, MapType, StructType))]
    if nested:
        raise ValueError(f"catalog {path!r}: column(s) {nested} hold nested values; every column must be a plain value")
    extra = [c for c in raw.columns if c not in REQUIRED_INPUT_COLUMNS + OPTIONAL_INPUT_COLUMNS]
    if extra and not allow_unknown_columns:
        raise ValueError(
            f"catalog {path!r} has column(s) {extra} the catalog does not know (schema drift?); known: "
            f"{list(REQUIRED_INPUT_COLUMNS + OPTIONAL_INPUT_COLUMNS)}. Set catalog.allow_unknown_columns = true to ignore them"
        )
    if extra:
        log.warning("catalog %s: ignoring unknown column(s) %s", path, extra)
    return raw


def resolve_uri(uri: Column, image_root: str) -> Column:
    """Normalise an image URI to the form Spark's binaryFile source reports in its ``path`` column.

    Absolute local paths become ``file:/...``, ``file:///`` becomes ``file:/``, relative paths are
    taken from ``image_root``, and other schemes (hdfs://, s3a://, ...) are kept.
    """
    root = _root_uri(image_root)
    trimmed = F.trim(uri)
    return (
        F.when(trimmed.startswith("file:///"), F.regexp_replace(trimmed, r"^file:///", "file:/"))
        .when(trimmed.rlike(URI_SCHEME_PATTERN), trimmed)
        .when(trimmed.startswith("/"), F.concat(F.lit("file:"), trimmed))
        .otherwise(F.concat(F.lit(root + "/"), F.regexp_replace(trimmed, r"^\./", "")))
    )


def _root_uri(image_root: str) -> str:
    if image_root.startswith("file:///"):
        return "file:/" + image_root[len("file:///"):].rstrip("/")
    if has_scheme(image_root):
        return image_root.rstrip("/")
    return "file:" + os.path.abspath(image_root).rstrip("/")


# Text columns checked for invalid UTF-8 (image_uri is checked by whether its file exists).
_TEXT_COLUMNS = ("item_id", "category", "article_type", "title", "brand")


def allowed_image_roots(config: Mapping[str, Any]) -> list[str]:
    """The folders photos may be read from, as URIs: ``catalog.image_roots``, or else ``catalog.image_root``."""
    catalog = config["catalog"]
    roots = list(catalog.get("image_roots") or []) or [str(catalog["image_root"])]
    return sorted({_root_uri(str(root)) for root in roots})


def validate_rows(raw: DataFrame, *, image_root: str, allowed_roots: Sequence[str] | None = None) -> DataFrame:
    """Parse the input columns and give each row its first failing reason (null when it is usable).

    Duplicate item ids: the row with the latest ``updated_at`` wins, then the smallest
    ``image_uri``, then the smallest source record; the others get ``duplicate_item_id``.
    An image URI that resolves outside every allowed root, or has a ``..`` segment, gets
    ``outside_image_root`` and is never read.

    Parameters
    ----------
    image_root : str
        Folder relative image URIs resolve against.
    allowed_roots : sequence of str, optional
        Folders (paths or URIs) photos may come from; default ``image_root`` only.

    Returns
    -------
    DataFrame
        Catalog input columns parsed to their types, plus ``resolved_uri``, ``reason``, ``detail``
        and ``source_record`` (the input row as JSON).
    """
    for name in OPTIONAL_INPUT_COLUMNS:
        if name not in raw.columns:
            raw = raw.withColumn(name, F.lit(None).cast("string"))
    raw = raw.withColumn("source_record", F.to_json(F.struct(*[F.col(c) for c in raw.columns])))
    price_text = F.trim(F.col("price").cast("string"))
    price = F.expr("try_cast(trim(cast(price AS STRING)) AS DOUBLE)")
    parsed = raw.select(
        F.nullif(F.trim(F.col("item_id").cast("string")), F.lit("")).alias("item_id"),
        F.nullif(F.trim(F.col("image_uri").cast("string")), F.lit("")).alias("image_uri"),
        price.alias("price"),
        price_text.alias("price_text"),
        F.nullif(F.trim(F.col("category").cast("string")), F.lit("")).alias("category"),
        F.nullif(F.trim(F.col("article_type").cast("string")), F.lit("")).alias("article_type"),
        F.nullif(F.trim(F.col("title").cast("string")), F.lit("")).alias("title"),
        F.nullif(F.trim(F.col("brand").cast("string")), F.lit("")).alias("brand"),
        F.expr("try_cast(in_stock AS BOOLEAN)").alias("in_stock"),
        F.expr("try_cast(updated_at AS TIMESTAMP)").alias("updated_at"),
        "source_record",
    )
    # Spark decodes invalid UTF-8 as U+FFFD: such text would reach the tables garbled.
    garbled = [F.when(F.col(c).contains("\ufffd"), F.lit(c)) for c in _TEXT_COLUMNS]
    bad_price = F.col("price").isNull() | F.isnan("price") | (F.abs("price") == float("inf")) | (F.col("price") < 0)
    reason = (
        F.when(F.col("item_id").isNull(), "missing_item_id")
        .when(F.col("image_uri").isNull(), "missing_image_uri")
        .when(bad_price, "bad_price")
        .when(F.concat_ws(",", *garbled) != "", "bad_encoding")
    )
    roots = [_root_uri(r) for r in (allowed_roots or [image_root])]
    resolved = resolve_uri(F.col("image_uri"), image_root)
    # Lexical check: Spark would read "root/../x" as "x". Symlinks are checked when listing.
    outside = resolved.rlike(r"(^|/)\.\.(/|$)") | ~functools.reduce(
        lambda a, b: a | b, [resolved.startswith(root + "/") for root in roots]
    )
    reason = reason.when(outside, "outside_image_root")
    detail = (
        F.when(F.col("reason") == "bad_price", F.concat(F.lit("price="), F.coalesce(F.col("price_text"), F.lit("null"))))
        .when(F.col("reason") == "bad_encoding",
              F.concat(F.lit("not UTF-8 (shown as U+FFFD) in: "), F.concat_ws(",", *garbled)))
        .when(F.col("reason") == "outside_image_root",
              F.concat(F.lit(f"not under the image roots {', '.join(roots)}: "), resolved))
    )
    checked = parsed.withColumn("reason", reason).withColumn("detail", detail)
    # Rank rows of one id among the rows not refused already, so a bad row never wins.
    order = Window.partitionBy("item_id", F.col("reason").isNull()).orderBy(
        F.col("updated_at").desc_nulls_last(), F.col("image_uri").asc(), F.col("source_record").asc()
    )
    ranked = checked.withColumn("_rank", F.row_number().over(order))
    duplicate = F.col("reason").isNull() & (F.col("_rank") > 1)
    return (
        ranked.withColumn("detail", F.when(duplicate, F.lit("a newer row has the same item_id")).otherwise(F.col("detail")))
        .withColumn("reason", F.when(duplicate, F.lit("duplicate_item_id")).otherwise(F.col("reason")))
        .withColumn("resolved_uri", resolved)
        .drop("_rank", "price_text")
    )


def list_image_files(spark: SparkSession, uris: DataFrame, allowed_roots: Sequence[str] | None = None) -> DataFrame:
    """List the photo files the catalog points at, without reading them (binaryFile, any Hadoop path).

    Only the folders that hold referenced files are listed. A folder that does not exist yields
    no files, so its rows are quarantined as missing_image rather than failing the job. The
    listing is persisted in a few partitions: a folder scan is one task per ~32 files, and a run
    uses the listing several times (the caller unpersists it).

    Parameters
    ----------
    uris : DataFrame
        ``resolved_uri`` of the rows (see ``validate_rows``).
    allowed_roots : sequence of str, optional
        Folders photos may come from. A local file (or folder) that is a symbolic link leading
        out of them is flagged ``outside_root``; default: nothing is flagged.

    Returns
    -------
    DataFrame
        ``path``, ``length``, ``modificationTime``, ``outside_root``: Spark prunes ``content``,
        so no file is opened.
    """
    parent = F.regexp_extract("resolved_uri", r"^(.*)/[^/]*$", 1).alias("folder")
    folders = sorted(r["folder"] for r in uris.select(parent).distinct().collect() if r["folder"])
    frames = []
    for folder in folders:
        try:
            frames.append(_binary_files(spark, folder))
        except AnalysisException as error:
            log.warning("image folder %s cannot be listed, its photos count as missing: %s", folder, error)
    if not frames:
        return spark.createDataFrame([], "path string, length long, modificationTime timestamp, outside_root boolean")
    escaping = escaping_symlinks(folders, allowed_roots or [])
    if escaping:
        log.warning("%d photo file(s) are symbolic links leading out of the image roots, e.g. %s", len(escaping), escaping[0])
    flagged = spark.createDataFrame([(path, True) for path in escaping], "path string, outside_root boolean")
    listing = (
        functools.reduce(DataFrame.unionByName, frames)
        .select("path", "length", "modificationTime")
        .join(F.broadcast(flagged), "path", "left")
        .select("path", "length", "modificationTime", F.coalesce("outside_root", F.lit(False)).alias("outside_root"))
        .coalesce(max(1, spark.sparkContext.defaultParallelism))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    listing.count()
    return listing


def escaping_symlinks(folders: Sequence[str], allowed_roots: Sequence[str]) -> list[str]:
    """Local files in ``folders`` whose real path (symbolic links followed) is outside every allowed root.

    Only ``file:`` folders are checked (other file systems have no links to follow); the files
    are named as binaryFile reports them (``file:/...``). Reads directory entries only.
    """
    real_roots = [os.path.realpath(root[len("file:"):]) for root in allowed_roots if root.startswith("file:")]

    def inside(path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in real_roots)

    escaping = []
    for folder in folders:
        if not folder.startswith("file:") or not real_roots:
            continue
        local = "/" + folder[len("file:"):].lstrip("/")
        folder_escapes = not inside(os.path.realpath(local))
        try:
            entries = list(os.scandir(local))
        except OSError:
            continue  # listed by Spark or reported missing there
        for entry in entries:
            if (folder_escapes or entry.is_symlink()) and not inside(os.path.realpath(entry.path)):
                escaping.append("file:" + entry.path)
    return sorted(escaping)


def _binary_files(spark: SparkSession, *paths: str, skip_unreadable: bool = False) -> DataFrame:
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", False)
    if skip_unreadable:
        # A file removed after listing, or one that cannot be read (permissions, I/O error), would
        # otherwise fail the whole job; skipped here, its rows are quarantined as unreadable_image.
        reader = reader.option("ignoreMissingFiles", True).option("ignoreCorruptFiles", True)
    return reader.load(list(paths))


# Above this many photos to read, whole folders are read and filtered rather than each file named.
_MAX_NAMED_FILES = 2000


def read_image_files(spark: SparkSession, paths: DataFrame) -> DataFrame:
    """Read the bytes of the listed photo files.

    Parameters
    ----------
    paths : DataFrame
        ``path`` of each file to read, as ``list_image_files`` reports it.

    Returns
    -------
    DataFrame
        ``path``, ``length``, ``modificationTime``, ``content``; a file that vanished since it was
        listed, or that cannot be read, is absent (and logged by Spark).
    """
    wanted = sorted(r["path"] for r in paths.select("path").distinct().collect())
    schema = "path string, length long, modificationTime timestamp, content binary"
    if not wanted:
        return spark.createDataFrame([], schema)
    columns = ["path", "length", "modificationTime", "content"]
    if len(wanted) <= _MAX_NAMED_FILES:
        try:
            return _binary_files(spark, *wanted, skip_unreadable=True).select(*columns)
        except AnalysisException as error:  # one vanished between listing and reading
            log.warning("re-reading photo folders, a listed photo is gone: %s", error)
    folders = sorted({path.rsplit("/", 1)[0] for path in wanted})
    files = _binary_files(spark, *folders, skip_unreadable=True)
    return files.join(F.broadcast(paths.select("path").distinct()), "path").select(*columns)


@dataclass
class CatalogInput:
    """A catalog file read and validated, and the photo files its usable rows point at (both persisted)."""

    rows: DataFrame
    listing: DataFrame

    def unpersist(self) -> None:
        """Free both cached frames."""
        self.rows.unpersist()
        self.listing.unpersist()


def read_catalog_input(
    spark: SparkSession, config: Mapping[str, Any], catalog_path: str, *, file_format: str | None = None
) -> CatalogInput:
    """Read and validate a catalog file and list its photos, once per run (the caller unpersists).

    Raises
    ------
    ValueError
        See ``read_catalog_file``.
    """
    catalog = config["catalog"]
    raw = read_catalog_file(spark, catalog_path, file_format=file_format,
                            allow_unknown_columns=bool(catalog.get("allow_unknown_columns", False)))
    roots = allowed_image_roots(config)
    rows = validate_rows(raw, image_root=str(catalog["image_root"]), allowed_roots=roots).persist(StorageLevel.MEMORY_AND_DISK)
    return CatalogInput(rows=rows, listing=list_image_files(spark, rows.where("reason IS NULL"), roots))


def ingest_catalog(
    spark: SparkSession,
    config: Mapping[str, Any],
    catalog_path: str,
    *,
    run_id: str,
    file_format: str | None = None,
    run_seq: int | None = None,
    delete_missing: bool = False,
    rehash_images: bool = False,
    prepared: CatalogInput | None = None,
) -> IngestCounts:
    """Upsert a catalog file and its photos into the Delta tables.

    A photo whose path, length and modification time match what the catalog recorded is not
    read again; its hash is carried over. Only new or changed rows are merged, so an unchanged
    catalog adds no table version.

    Parameters
    ----------
    spark : SparkSession
    config : mapping
        Job configuration (``storage``, ``catalog`` sections).
    catalog_path : str
        Catalog file (CSV, Parquet, JSON Lines); any Hadoop path.
    run_id : str
        Id recorded on every row written.
    file_format : str, optional
        Overrides the format told from the extension.
    run_seq : int, optional
        The run's sequence number: every write becomes a Delta idempotent write, so a rerun of a
        killed run does not apply twice what it had committed.
    delete_missing : bool
        The file is the whole catalog: items in the table but not in the file are deleted. Items
        in the file whose row is quarantined keep their last good row.
    rehash_images : bool
        Read and hash every photo even when its length and modification time are unchanged.
    prepared : CatalogInput, optional
        ``read_catalog_input`` of this file, when the caller has it already (the caller unpersists it).

    Returns
    -------
    IngestCounts
    """
    catalog_table = ensure_table(spark, config, CATALOG)
    images_table = ensure_table(spark, config, IMAGES)
    ensure_table(spark, config, QUARANTINE)

    own_input = prepared is None
    catalog_input = read_catalog_input(spark, config, catalog_path, file_format=file_format) if own_input else prepared
    rows, listing = catalog_input.rows, catalog_input.listing
    # Pinned to one version: Delta re-plans cached frames that read a table it writes, and the
    # comparison must keep seeing the catalog as it was before this ingest.
    before = int(catalog_table.history(1).first()["version"])
    current = read_table(spark, config, CATALOG, version=before)
    known = current.select(
        F.col("image_uri").alias("path"),
        F.col("image_size").alias("length"),
        F.col("image_modified_at").alias("modificationTime"),
        F.col("image_hash").alias("known_hash"),
    ).dropDuplicates(["path", "length", "modificationTime"])
    if rehash_images:
        known = known.limit(0)
    listed = listing.join(known, ["path", "length", "modificationTime"], "left").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        referenced = rows.where("reason IS NULL").select(F.col("resolved_uri").alias("path"))
        unknown = listed.where("known_hash IS NULL AND NOT outside_root").join(referenced, "path", "left_semi")
        photos = read_image_files(spark, unknown).withColumn("read_hash", F.sha2("content", 256))
        photos = photos.persist(StorageLevel.MEMORY_AND_DISK)
        files = (
            listed.join(photos.select("path", F.col("length").alias("read_length"),
                                      F.col("modificationTime").alias("read_time"), "read_hash"), "path", "left")
            .select(
                "path",
                F.coalesce("read_length", "length").alias("image_size"),
                F.coalesce("read_time", "modificationTime").alias("image_modified_at"),
                F.when(~F.col("outside_root"), F.coalesce("known_hash", "read_hash")).alias("file_hash"),
                "outside_root",
            )
        )
        counts = _merge_rows(
            spark, config, catalog_table, images_table, current, rows, files, photos,
            run_id=run_id, run_seq=run_seq, delete_missing=delete_missing,
        )
    finally:
        listed.unpersist()
        if own_input:
            catalog_input.unpersist()
        if "photos" in locals():
            photos.unpersist()
    log.info(
        "ingest %s: %d rows in, %d ingested, %d quarantined %s, %d photos read, %d new photos, %d items changed, %d deleted",
        catalog_path, counts.input_rows, counts.ingested, counts.quarantined_total, counts.quarantined,
        counts.photos_read, counts.new_images, counts.changed, counts.deleted,
    )
    return counts


def _merge_rows(
    spark: SparkSession,
    config: Mapping[str, Any],
    catalog_table: DeltaTable,
    images_table: DeltaTable,
    current: DataFrame,
    rows: DataFrame,
    files: DataFrame,
    photos: DataFrame,
    *,
    run_id: str,
    run_seq: int | None,
    delete_missing: bool,
) -> IngestCounts:
    now = F.current_timestamp()
    joined = (
        rows.join(files, rows.resolved_uri == files.path, "left")
        .withColumn(
            "reason",
            F.coalesce(
                F.col("reason"),
                F.when(F.col("outside_root"), F.lit("outside_image_root")),
                # Spark's file sources skip zero-byte files, so an empty photo is missing too.
                F.when(F.col("path").isNull(), F.lit("missing_image")),
                F.when(F.col("file_hash").isNull(), F.lit("unreadable_image")),
            ),
        )
        .withColumn(
            "detail",
            F.coalesce(
                F.col("detail"),
                F.when(F.col("reason") == "missing_image", F.concat(F.lit("no such file, or zero bytes: "), F.col("resolved_uri"))),
                F.when(F.col("reason") == "unreadable_image",
                       F.concat(F.lit("listed but could not be read (no permission, removed during the run, or an I/O error): "),
                                F.col("resolved_uri"))),
                F.when(F.col("reason") == "outside_image_root",
                       F.concat(F.lit("a symbolic link leading out of the image roots: "), F.col("resolved_uri"))),
            ),
        )
        .withColumn("image_hash", F.when(F.col("reason").isNull(), F.col("file_hash")))
        .withColumn("run_id", F.lit(run_id))
        .withColumn("ingested_at", now)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        good = joined.where("reason IS NULL")
        bad = joined.where("reason IS NOT NULL")
        # One pass for the accepted rows (reason null) and each reason; input_rows is counted apart, as a check.
        by_reason = {r["reason"]: r["count"] for r in joined.groupBy("reason").count().collect()}
        ingested = by_reason.pop(None, 0)
        input_rows, photos_read = joined.count(), photos.count()
        refused_items = bad.where(F.col("item_id").isNotNull()).select("item_id").distinct()
        kept = refused_items.join(good.select("item_id"), "item_id", "left_anti").join(
            current.select("item_id"), "item_id", "left_semi"
        ).count()
        append_quarantine(config, bad, run_id=run_id, stage="ingest", run_seq=run_seq)

        new_images = (
            photos.select(F.col("read_hash").alias("image_hash"), "content", F.col("length").alias("size_bytes"),
                          F.lit(run_id).alias("run_id"))
            .join(good.select("image_hash").distinct(), "image_hash", "left_semi")
            .dropDuplicates(["image_hash"])
        )
        with _idempotent(spark, "lookalike.ingest.images", run_seq):
            merged = (
                images_table.alias("t")
                .merge(conform(new_images, IMAGES).alias("s"), "t.image_hash = s.image_hash")
                .whenNotMatchedInsertAll()
                .execute()
            )
        images_added = int(merged.first()["num_inserted_rows"]) if merged.first() else 0

        catalog_rows = conform(good.withColumn("image_uri", F.col("resolved_uri")), CATALOG)
        # Only new or changed rows go into the MERGE, so an unchanged catalog rewrites no files.
        compared = [c for c in CATALOG.column_names if c not in ("ingested_at", "run_id")]
        changed_rows = catalog_rows.join(
            current, functools.reduce(lambda a, b: a & b, [catalog_rows[c].eqNullSafe(current[c]) for c in compared]), "left_anti"
        ).withColumn("_delete", F.lit(False))
        changes = changed_rows
        if delete_missing:
            present = joined.where(F.col("item_id").isNotNull()).select("item_id")
            gone = current.join(present, "item_id", "left_anti")
            changes = changes.unionByName(gone.withColumn("_delete", F.lit(True)))
        changes = changes.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n_changed = changes.where(~F.col("_delete")).count()
            n_deleted = changes.count() - n_changed
            if n_changed or n_deleted:
                with _idempotent(spark, "lookalike.ingest.catalog", run_seq):
                    (
                        catalog_table.alias("t")
                        .merge(changes.alias("s"), "t.item_id = s.item_id")
                        .whenMatchedDelete("s._delete")
                        .whenMatchedUpdate(set={c: f"s.`{c}`" for c in CATALOG.column_names})
                        .whenNotMatchedInsert("NOT s._delete", values={c: f"s.`{c}`" for c in CATALOG.column_names})
                        .execute()
                    )
        finally:
            changes.unpersist()
        return IngestCounts(
            input_rows=input_rows,
            ingested=ingested,
            quarantined=by_reason,
            new_images=images_added,
            photos_read=photos_read,
            changed=n_changed,
            deleted=n_deleted,
            kept=kept,
        )
    finally:
        joined.unpersist()


@contextmanager
def _idempotent(spark: SparkSession, app_id: str, run_seq: int | None) -> Iterator[None]:
    if run_seq is None:
        yield
    else:
        with idempotent_writes(spark, app_id, run_seq):
            yield
