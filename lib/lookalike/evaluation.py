"""List quality: do an item's look-alikes share its articleType? Measured over labelled items."""

from __future__ import annotations

from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.publish import published_snapshot
from schemas import CATALOG, EMBEDDINGS, SIMILAR_ITEMS


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
    row = (
        per_item.where("labelled > 0")
        .agg(
            F.avg(F.col("hits") / F.col("labelled")).alias("precision"),
            F.avg(F.col("hits") / F.col("listed")).alias("strict_precision"),
            F.count("*").alias("items"),
        )
        .first()
    )
    return {key: float(row[key] or 0.0) for key in ("precision", "strict_precision", "items")}


def random_list_precision(embeddings: DataFrame, catalog: DataFrame) -> float:
    """Expected articleType precision of a random list drawn from the item's own partition.

    The baseline the learnt lists must beat: partitioning alone already groups similar items.
    For an item of type t in a partition with n labelled items of which m have type t, a random
    labelled neighbour matches with probability (m - 1) / (n - 1).
    """
    labelled = embeddings.select("item_id", "category", "price_band").join(
        catalog.where(F.col("article_type").isNotNull()).select("item_id", "article_type"), "item_id"
    )
    per_type = labelled.groupBy("category", "price_band", "article_type").agg(F.count("*").alias("m"))
    per_partition = labelled.groupBy("category", "price_band").agg(F.count("*").alias("n"))
    row = (
        per_type.join(per_partition, ["category", "price_band"])
        .where("n > 1")
        .agg((F.sum(F.col("m") * (F.col("m") - 1) / (F.col("n") - 1)) / F.sum("m")).alias("p"))
        .first()
    )
    return float(row["p"] or 0.0)


def list_quality(spark: SparkSession, config: Mapping[str, Any], *, k: int = 10) -> dict[str, float]:
    """Precision@k of the published lists and the random-list baseline, from the Delta tables."""
    _, tables = published_snapshot(spark, config)
    catalog = tables[CATALOG.name]
    quality = article_type_precision(tables[SIMILAR_ITEMS.name], catalog, k=k)
    quality["random_baseline"] = random_list_precision(tables[EMBEDDINGS.name], catalog)
    return quality
