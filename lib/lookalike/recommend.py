"""Recommendations from a user's favourites: look-alikes of the items they liked most.

Input is an ``interactions`` table (user_id, item_id, event, rating, event_time). Each event
has a weight (``recommend.event_weights``; a rating weighs its 1-5 rating) and a user's weight
for an item is the highest of their events on it. Items weighing at least
``recommend.like_threshold`` are liked; the ``seeds_per_user`` best liked (latest first on a
tie) seed the user's list. Every item in a seed's published ``similar_items`` list is a
candidate, scored by the sum over seeds of weight x cosine similarity. Items the user has
interacted with in any way are excluded, and items known to be out of stock too. Candidates are
ranked by the user's affinity for their category first (sum of the weights of the user's liked
items in it), so a user who loved sneakers gets sneakers first, then by score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lookalike.ingest import file_format_of
from lookalike.publish import Publication, published_table, require_publication
from lookalike.tables import append_quarantine, conform, ensure_table, read_table, table_path, table_version
from schemas import CATALOG, EMBEDDINGS, INTERACTIONS, SIMILAR_ITEMS, USER_RECOMMENDATIONS

log = logging.getLogger(__name__)

EVENTS = ("view", "click", "cart", "purchase", "rating")
INPUT_COLUMNS = ("user_id", "item_id", "event", "rating", "event_time")


@dataclass(frozen=True)
class InteractionCounts:
    """Rows read, kept and quarantined (by reason) by one interactions ingest."""

    input_rows: int
    ingested: int
    quarantined: dict[str, int]


def validate_interactions(raw: DataFrame) -> DataFrame:
    """Typed interaction rows plus a ``reason`` (null when the row is usable) and ``detail``.

    Reasons, the first that applies: missing_user_id, missing_item_id, unknown_event,
    bad_rating (a rating event without a 1-5 rating, or a rating on another event),
    bad_event_time (missing or not a timestamp).
    """
    text = {c: F.trim(F.col(c).cast("string")) for c in INPUT_COLUMNS}
    event = F.lower(text["event"])
    rating = text["rating"].try_cast("double")
    event_time = text["event_time"].try_cast("timestamp")
    blank = {c: value.isNull() | (value == "") for c, value in text.items()}
    reason = (
        F.when(blank["user_id"], F.lit("missing_user_id"))
        .when(blank["item_id"], F.lit("missing_item_id"))
        .when(~event.isin(*EVENTS) | blank["event"], F.lit("unknown_event"))
        .when((event == "rating") & (rating.isNull() | ~rating.between(1.0, 5.0)), F.lit("bad_rating"))
        .when((event != "rating") & ~blank["rating"], F.lit("bad_rating"))
        .when(event_time.isNull(), F.lit("bad_event_time"))
    )
    detail = (
        F.when(reason == "unknown_event", F.concat(F.lit("event="), F.coalesce(text["event"], F.lit("null"))))
        .when(reason == "bad_rating",
              F.concat(F.lit("event="), event, F.lit(" rating="), F.coalesce(text["rating"], F.lit("null"))))
        .when(reason == "bad_event_time", F.concat(F.lit("event_time="), F.coalesce(text["event_time"], F.lit("null"))))
    )
    return raw.select(
        text["user_id"].alias("user_id"), text["item_id"].alias("item_id"), event.alias("event"),
        F.when(event == "rating", rating).alias("rating"), event_time.alias("event_time"),
        reason.alias("reason"), detail.alias("detail"),
        F.to_json(F.struct(*[F.col(c).cast("string").alias(c) for c in raw.columns])).alias("source_record"),
    )


def read_interactions_file(spark: SparkSession, path: str, *, file_format: str | None = None) -> DataFrame:
    """Read an interactions file (CSV with header, Parquet or JSON Lines) as text columns.

    Raises
    ------
    ValueError
        If the format cannot be told from the extension or a column is missing.
    """
    fmt = file_format_of(path, file_format)
    reader = spark.read.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", True).option("inferSchema", False)
    raw = reader.load(path)
    missing = [c for c in INPUT_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"interactions {path!r} lack column(s) {missing}; required: {list(INPUT_COLUMNS)}")
    return raw.select(*INPUT_COLUMNS)


def ingest_interactions(
    spark: SparkSession, config: Mapping[str, Any], path: str, *, run_id: str, file_format: str | None = None
) -> InteractionCounts:
    """Replace ``interactions`` with a file's usable rows; the others go to ``quarantine`` with a reason.

    The table is replaced in one Delta commit, so a reader sees the old or the new interactions.

    Parameters
    ----------
    path : str
        Interactions file, any Hadoop path.
    run_id : str
        Recorded on the quarantine rows.
    """
    rows = validate_interactions(read_interactions_file(spark, path, file_format=file_format)).cache()
    try:
        ensure_table(spark, config, INTERACTIONS)
        usable = rows.where(F.col("reason").isNull())
        conform(usable, INTERACTIONS).write.format("delta").mode("overwrite").save(table_path(config, INTERACTIONS))
        refused = rows.where(F.col("reason").isNotNull())
        by_reason = {r["reason"]: int(r["count"]) for r in refused.groupBy("reason").count().collect()}
        if by_reason:
            append_quarantine(config, refused, run_id=run_id, stage="interactions")
        total = rows.count()
    finally:
        rows.unpersist()
    counts = InteractionCounts(total, total - sum(by_reason.values()), by_reason)
    log.info("interactions: %d rows in, %d kept, quarantined %s", counts.input_rows, counts.ingested, by_reason)
    return counts


def user_item_weights(interactions: DataFrame, event_weights: Mapping[str, float]) -> DataFrame:
    """``user_id``, ``item_id``, ``weight`` (highest event weight) and ``last_event_time`` per pair."""
    weight = F.when(F.col("event") == "rating", F.col("rating"))
    for event, value in event_weights.items():
        weight = weight.when(F.col("event") == event, F.lit(float(value)))
    return interactions.groupBy("user_id", "item_id").agg(
        F.max(weight.otherwise(F.lit(0.0))).alias("weight"), F.max("event_time").alias("last_event_time")
    )


def recommend_for_users(
    interactions: DataFrame,
    similar_items: DataFrame,
    items: DataFrame,
    *,
    top_n: int,
    seeds_per_user: int,
    like_threshold: float,
    event_weights: Mapping[str, float],
) -> DataFrame:
    """Top-``top_n`` new items per user from the look-alike lists of the items they liked most.

    Parameters
    ----------
    interactions : DataFrame
        In the ``interactions`` schema.
    similar_items : DataFrame
        The published look-alike lists.
    items : DataFrame
        ``item_id``, ``category``, ``price`` and ``recommendable`` (false: never recommended,
        e.g. out of stock) of every published item.

    Returns
    -------
    DataFrame
        ``user_id``, ``rank``, ``item_id``, ``category``, ``price``, ``category_affinity``,
        ``score``, ``because_of``.
    """
    weights = user_item_weights(interactions, event_weights)
    liked = weights.where(F.col("weight") >= like_threshold).join(
        items.select("item_id", "category"), "item_id"
    )
    affinity = liked.groupBy("user_id", "category").agg(F.sum("weight").alias("category_affinity"))
    by_liking = Window.partitionBy("user_id").orderBy(
        F.col("weight").desc(), F.col("last_event_time").desc(), F.col("item_id")
    )
    seeds = liked.withColumn("_seed", F.row_number().over(by_liking)).where(F.col("_seed") <= seeds_per_user)
    contributions = seeds.select("user_id", F.col("item_id").alias("seed_id"), "weight").join(
        similar_items.select(F.col("item_id").alias("seed_id"), "neighbour_id", "score"), "seed_id"
    ).select(
        "user_id", F.col("neighbour_id").alias("item_id"), "seed_id",
        (F.col("weight") * F.col("score").cast("double")).alias("contribution"),
    )
    seen = weights.select("user_id", "item_id")
    candidates = (
        contributions.join(seen, ["user_id", "item_id"], "left_anti")
        .groupBy("user_id", "item_id")
        .agg(
            F.sum("contribution").alias("score"),
            # The seed that contributed most; on a tie the smaller seed id.
            F.min_by("seed_id", F.struct((-F.col("contribution")).alias("c"), F.col("seed_id").alias("s")))
            .alias("because_of"),
        )
        .where(F.col("score") > 0)
        .join(items.where(F.col("recommendable")).select("item_id", "category", "price"), "item_id")
        .join(affinity, ["user_id", "category"], "left")
        .withColumn("category_affinity", F.coalesce("category_affinity", F.lit(0.0)))
    )
    ranking = Window.partitionBy("user_id").orderBy(
        F.col("category_affinity").desc(), F.col("score").desc(), F.col("item_id")
    )
    return (
        candidates.withColumn("rank", F.row_number().over(ranking))
        .where(F.col("rank") <= top_n)
        .select("user_id", "rank", "item_id", "category", "price", "category_affinity", "score", "because_of")
    )


def publish_recommendations(
    spark: SparkSession, config: Mapping[str, Any], *, publication: Publication | None = None
) -> int:
    """Replace ``user_recommendations`` with lists from the published run and the current interactions.

    One overwrite commit, so readers see whole old or whole new lists. Every row records the run
    and the interactions version it was computed from.

    Returns
    -------
    int
        Users with at least one recommendation.

    Raises
    ------
    RuntimeError
        If nothing has been published yet.
    """
    publication = require_publication(spark, config, publication)
    settings = config["recommend"]
    ensure_table(spark, config, INTERACTIONS)
    interactions_version = table_version(spark, config, INTERACTIONS)
    interactions = read_table(spark, config, INTERACTIONS, version=interactions_version)
    stock = published_table(spark, config, CATALOG, publication).select("item_id", "in_stock")
    recommendable = F.lit(True)
    if bool(settings["exclude_out_of_stock"]):
        # An unknown stock state (null) counts as in stock.
        recommendable = ~F.coalesce(F.col("in_stock") == F.lit(False), F.lit(False))
    items = published_table(spark, config, EMBEDDINGS, publication).select("item_id", "category", "price").join(
        stock, "item_id", "left"
    ).withColumn("recommendable", recommendable)
    lists = recommend_for_users(
        interactions, published_table(spark, config, SIMILAR_ITEMS, publication), items,
        top_n=int(settings["top_n"]), seeds_per_user=int(settings["seeds_per_user"]),
        like_threshold=float(settings["like_threshold"]), event_weights=dict(settings["event_weights"]),
    ).withColumns({
        "model_version": F.lit(publication.model_version or ""),
        "run_id": F.lit(publication.run_id),
        "interactions_version": F.lit(interactions_version),
    })
    ensure_table(spark, config, USER_RECOMMENDATIONS)
    conform(lists, USER_RECOMMENDATIONS).write.format("delta").mode("overwrite").save(
        table_path(config, USER_RECOMMENDATIONS)
    )
    users = read_table(spark, config, USER_RECOMMENDATIONS).select("user_id").distinct().count()
    log.info("recommendations: %d users from run %s and interactions v%d", users, publication.run_id, interactions_version)
    return users


__all__ = [
    "EVENTS", "InteractionCounts", "ingest_interactions", "publish_recommendations", "read_interactions_file",
    "recommend_for_users", "user_item_weights", "validate_interactions",
]
