"""Ingest: a catalog file plus its photos -> Delta ``catalog`` and ``images``; bad rows -> ``quarantine``."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from lookalike.tables import URI_SCHEME_PATTERN, append_quarantine, conform, ensure_table, has_scheme
from schemas import CATALOG, IMAGES, QUARANTINE
from schemas.catalog import OPTIONAL_INPUT_COLUMNS, REQUIRED_INPUT_COLUMNS

log = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json"}


@dataclass
class IngestCounts:
    """What happened to every input row: ``input_rows == ingested + sum(quarantined.values())``."""

    input_rows: int
    ingested: int
    quarantined: dict[str, int] = field(default_factory=dict)
    new_images: int = 0

    @property
    def quarantined_total(self) -> int:
        """Rows quarantined, all reasons."""
        return sum(self.quarantined.values())


def read_catalog_file(spark: SparkSession, path: str, *, file_format: str | None = None) -> DataFrame:
    """Read a catalog file (CSV with header, Parquet, or JSON Lines) without interpreting values.

    CSV values stay strings so that a bad price becomes a quarantine row, not a parse failure.

    Raises
    ------
    ValueError
        If the format cannot be told from the extension, or a required column is missing.
    """
    fmt = file_format or _FORMATS.get(Path(path.rstrip("/")).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path!r}; pass file_format='csv'|'parquet'|'json'")
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
    extra = [c for c in raw.columns if c not in REQUIRED_INPUT_COLUMNS + OPTIONAL_INPUT_COLUMNS]
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


def validate_rows(raw: DataFrame, *, image_root: str) -> DataFrame:
    """Parse the input columns and give each row its first failing reason (null when it is usable).

    Duplicate item ids: the row with the latest ``updated_at`` wins, then the smallest
    ``image_uri``, then the smallest source record; the others get ``duplicate_item_id``.

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
    bad_price = F.col("price").isNull() | F.isnan("price") | (F.abs("price") == float("inf")) | (F.col("price") < 0)
    reason = (
        F.when(F.col("item_id").isNull(), "missing_item_id")
        .when(F.col("image_uri").isNull(), "missing_image_uri")
        .when(bad_price, "bad_price")
    )
    detail = F.when(bad_price, F.concat(F.lit("price="), F.coalesce(F.col("price_text"), F.lit("null"))))
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
        .withColumn("resolved_uri", resolve_uri(F.col("image_uri"), image_root))
        .drop("_rank", "price_text")
    )


def read_image_files(spark: SparkSession, uris: DataFrame) -> DataFrame:
    """Read the photo files the catalog points at with Spark's binaryFile source (any Hadoop path).

    Only the folders that hold referenced files are listed. A folder that does not exist yields
    no files, so its rows are quarantined as missing_image rather than failing the job.

    Returns
    -------
    DataFrame
        ``path``, ``length``, ``content``.
    """
    parent = F.regexp_extract("resolved_uri", r"^(.*)/[^/]*$", 1).alias("folder")
    folders = sorted(r["folder"] for r in uris.select(parent).distinct().collect() if r["folder"])
    frames = []
    for folder in folders:
        try:
            frames.append(spark.read.format("binaryFile").option("recursiveFileLookup", False).load(folder))
        except AnalysisException as error:
            log.warning("image folder %s cannot be listed, its photos count as missing: %s", folder, error)
    if not frames:
        return spark.createDataFrame([], "path string, length long, content binary")
    return functools.reduce(DataFrame.unionByName, frames).select("path", "length", "content")


def ingest_catalog(
    spark: SparkSession,
    config: Mapping[str, Any],
    catalog_path: str,
    *,
    run_id: str,
    file_format: str | None = None,
) -> IngestCounts:
    """Upsert a catalog file and its photos into the Delta tables.

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

    Returns
    -------
    IngestCounts
    """
    catalog_table = ensure_table(spark, config, CATALOG)
    images_table = ensure_table(spark, config, IMAGES)
    ensure_table(spark, config, QUARANTINE)

    raw = read_catalog_file(spark, catalog_path, file_format=file_format)
    rows = validate_rows(raw, image_root=str(config["catalog"]["image_root"]))
    files = read_image_files(spark, rows.where("reason IS NULL"))
    now = F.current_timestamp()
    joined = (
        rows.join(files, rows.resolved_uri == files.path, "left")
        .withColumn(
            "reason",
            F.coalesce(
                F.col("reason"),
                # Spark's file sources skip zero-byte files, so an empty photo is missing too.
                F.when(F.col("path").isNull(), F.lit("missing_image")),
            ),
        )
        .withColumn(
            "detail",
            F.coalesce(
                F.col("detail"),
                F.when(F.col("reason") == "missing_image", F.concat(F.lit("no such file, or zero bytes: "), F.col("resolved_uri"))),
            ),
        )
        .withColumn("image_hash", F.when(F.col("reason").isNull(), F.sha2("content", 256)))
        .withColumn("run_id", F.lit(run_id))
        .withColumn("ingested_at", now)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        good = joined.where("reason IS NULL")
        bad = joined.where("reason IS NOT NULL")

        append_quarantine(config, bad, run_id=run_id, stage="ingest")

        new_images = (
            good.select("image_hash", "content", F.col("length").alias("size_bytes"), "run_id")
            .dropDuplicates(["image_hash"])
        )
        merged = (
            images_table.alias("t")
            .merge(conform(new_images, IMAGES).alias("s"), "t.image_hash = s.image_hash")
            .whenNotMatchedInsertAll()
            .execute()
        )
        images_added = int(merged.first()["num_inserted_rows"])

        catalog_rows = conform(good.withColumn("image_uri", F.col("resolved_uri")), CATALOG)
        # Only new or changed rows go into the MERGE, so an unchanged catalog rewrites no files.
        compared = [c for c in CATALOG.column_names if c not in ("ingested_at", "run_id")]
        current = catalog_table.toDF()
        changed_rows = catalog_rows.join(
            current, functools.reduce(lambda a, b: a & b, [catalog_rows[c].eqNullSafe(current[c]) for c in compared]), "left_anti"
        )
        (
            catalog_table.alias("t")
            .merge(changed_rows.alias("s"), "t.item_id = s.item_id")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )
        by_reason = {r["reason"]: r["count"] for r in bad.groupBy("reason").count().collect()}
        counts = IngestCounts(
            input_rows=joined.count(), ingested=good.count(), quarantined=by_reason, new_images=images_added
        )
    finally:
        joined.unpersist()
    log.info(
        "ingest %s: %d rows in, %d ingested, %d quarantined %s, %d new photos",
        catalog_path, counts.input_rows, counts.ingested, counts.quarantined_total, counts.quarantined, counts.new_images,
    )
    return counts
