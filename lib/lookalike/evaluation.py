"""List quality: do an item's look-alikes share its articleType? Measured over labelled items."""

from __future__ import annotations

from typing import Any, Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.publish import published_snapshot
from lookalike.tables import conform, read_table, table_path
from schemas import CATALOG, EMBEDDINGS, INDEX_RECALL, LIST_QUALITY, SIMILAR_ITEMS


def _per_item_hits(lists: DataFrame, catalog: DataFrame, k: int) -> DataFrame:
    """Per labelled item with a labelled top-k neighbour: ``listed``, ``labelled`` and ``hits`` (same articleType)."""
    types = catalog.where(F.col("article_type").isNotNull()).select("item_id", "article_type")
    top = lists.where(F.col("rank") <= k).select("item_id", "neighbour_id")
    joined = (
        top.join(types.withColumnRenamed("article_type", "item_type"), "item_id")
        .join(
            types.withColumnRenamed("item_id", "neighbour_id").withColumnRenamed("article_type", "neighbour_type"),
            "neighbour_id",
            "left",
        )
    )
    per_item = joined.groupBy("item_id").agg(
        F.count("*").alias("listed"),
        F.count("neighbour_type").alias("labelled"),
        F.sum((F.col("neighbour_type") == F.col("item_type")).cast("int")).alias("hits"),
    )
    return per_item.where("labelled > 0")


def _precisions(precision: str, strict: str) -> list[Column]:
    """Mean share of hits among labelled neighbours, and among all neighbours listed."""
    return [F.avg(F.col("hits") / F.col("labelled")).alias(precision), F.avg(F.col("hits") / F.col("listed")).alias(strict)]


def article_type_precision(lists: DataFrame, catalog: DataFrame, *, k: int = 10) -> dict[str, float]:
    """Precision@k of articleType over items that have one.

    For each labelled item, the share of its top-k neighbours *that are labelled* which have the
    same articleType (unlabelled neighbours carry no evidence either way); averaged over items
    with at least one labelled neighbour. ``strict`` counts unlabelled neighbours as misses.

    Returns
    -------
    dict
        ``precision``, ``strict_precision``, ``items``.
    """
    row = _per_item_hits(lists, catalog, k).agg(
        *_precisions("precision", "strict_precision"), F.count("*").alias("items")
    ).first()
    return {key: float(row[key] or 0.0) for key in ("precision", "strict_precision", "items")}


def partition_quality(lists: DataFrame, embeddings: DataFrame, catalog: DataFrame, *, k: int = 10) -> DataFrame:
    """``article_type_precision`` and ``random_list_precision`` per (category, price_band).

    Returns
    -------
    DataFrame
        ``category``, ``price_band``, ``items_evaluated``, ``precision_at_k``,
        ``strict_precision_at_k``, ``random_list_precision``; partitions with no item evaluated are left out.
    """
    partitions = lists.select("item_id", "category", "price_band").distinct()
    measured = (
        _per_item_hits(lists, catalog, k).join(partitions, "item_id")
        .groupBy("category", "price_band")
        .agg(
            F.count("*").alias("items_evaluated"), *_precisions("precision_at_k", "strict_precision_at_k")
        )
    )
    baseline = _random_precision_per_partition(embeddings, catalog).drop("_labelled")
    return measured.join(baseline, ["category", "price_band"], "left")


def _random_precision_per_partition(embeddings: DataFrame, catalog: DataFrame) -> DataFrame:
    """Per partition with two or more labelled items: ``random_list_precision``, and ``_labelled`` (items)."""
    labelled = embeddings.select("item_id", "category", "price_band").join(
        catalog.where(F.col("article_type").isNotNull()).select("item_id", "article_type"), "item_id"
    )
    per_type = labelled.groupBy("category", "price_band", "article_type").agg(F.count("*").alias("m"))
    per_partition = labelled.groupBy("category", "price_band").agg(F.count("*").alias("n"))
    return (
        per_type.join(per_partition, ["category", "price_band"])
        .where("n > 1")
        .groupBy("category", "price_band")
        .agg(
            (F.sum(F.col("m") * (F.col("m") - 1) / (F.col("n") - 1)) / F.sum("m")).alias("random_list_precision"),
            F.sum("m").alias("_labelled"),
        )
    )


def random_list_precision(embeddings: DataFrame, catalog: DataFrame) -> float:
    """Expected articleType precision of a random list drawn from the item's own partition.

    The baseline the learnt lists must beat: partitioning alone already groups similar items.
    For an item of type t in a partition with n labelled items of which m have type t, a random
    labelled neighbour matches with probability (m - 1) / (n - 1); averaged over labelled items.
    """
    per_partition = _random_precision_per_partition(embeddings, catalog)
    row = per_partition.agg(
        (F.sum(F.col("random_list_precision") * F.col("_labelled")) / F.sum("_labelled")).alias("p")
    ).first()
    return float(row["p"] or 0.0)


def list_quality(spark: SparkSession, config: Mapping[str, Any], *, k: int = 10) -> dict[str, float]:
    """Precision@k of the published lists and the random-list baseline, from the Delta tables."""
    _, tables = published_snapshot(spark, config)
    catalog = tables[CATALOG.name]
    quality = article_type_precision(tables[SIMILAR_ITEMS.name], catalog, k=k)
    quality["random_baseline"] = random_list_precision(tables[EMBEDDINGS.name], catalog)
    return quality


def record_list_quality(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    run_id: str,
    run_seq: int,
    model_version: str | None,
    catalog_version: int,
) -> int:
    """Append the run's per-partition list quality to ``list_quality`` (idempotent per ``run_seq``).

    Reads ``similar_items`` and ``embeddings`` as the run has just merged them, and ``catalog``
    at the version the run was built from.

    Returns
    -------
    int
        Partitions measured.
    """
    k = min(int(config["index"]["quality_k"]), int(config["index"]["k"]))
    quality = partition_quality(
        read_table(spark, config, SIMILAR_ITEMS), read_table(spark, config, EMBEDDINGS),
        read_table(spark, config, CATALOG, version=catalog_version), k=k,
    ).cache()
    try:
        rows = quality.select(
            "*", F.lit(run_id).alias("run_id"), F.lit(model_version).alias("model_version"), F.lit(k).alias("k"),
            F.current_timestamp().alias("measured_at"),
        )
        (
            conform(rows, LIST_QUALITY).write.format("delta").mode("append")
            .option("txnAppId", "lookalike.list_quality").option("txnVersion", int(run_seq))
            .save(table_path(config, LIST_QUALITY))
        )
        return quality.count()
    finally:
        quality.unpersist()


def record_index_recall(
    spark: SparkSession,
    config: Mapping[str, Any],
    staged: DataFrame | None,
    *,
    run_id: str,
    run_seq: int,
    model_version: str | None,
) -> int:
    """Append the recall rows the index stage staged (``neighbours.index_recall``) to ``index_recall``.

    Idempotent per ``run_seq``, like ``record_list_quality``. Nothing is written when the run
    searched no partition approximately (``staged`` None).

    Returns
    -------
    int
        Rows appended (partitions x k values).
    """
    if staged is None:
        return 0
    rows = staged.select(
        "*", F.lit(run_id).alias("run_id"), F.lit(model_version).alias("model_version"),
        F.lit("ivf_flat").alias("method"), F.current_timestamp().alias("measured_at"),
    )
    (
        conform(rows, INDEX_RECALL).write.format("delta").mode("append")
        .option("txnAppId", "lookalike.index_recall").option("txnVersion", int(run_seq))
        .save(table_path(config, INDEX_RECALL))
    )
    return staged.count()
