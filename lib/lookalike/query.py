"""Look-alikes on demand: of a catalog item, or of a new photo, optionally under a maximum price."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lookalike.images import decode_image
from lookalike.model_store import load_manifest, load_scorer_from_bytes, read_scorer_bytes
from lookalike.publish import Publication, latest_publication, published_table
from schemas import CATALOG, EMBEDDINGS, SIMILAR_ITEMS

OUTPUT_COLUMNS = ["rank", "item_id", "score", "price", "category", "title", "brand"]


def _with_titles(spark: SparkSession, config: Mapping[str, Any], ranked: DataFrame, publication: Publication | None) -> DataFrame:
    titles = published_table(spark, config, CATALOG, publication).select("item_id", "title", "brand")
    return ranked.join(titles, "item_id", "left").select(*OUTPUT_COLUMNS).orderBy("rank")


def nearest(embeddings: DataFrame, vector: Sequence[float], *, k: int) -> DataFrame:
    """Exact cosine top-k of ``vector`` among ``embeddings`` rows, computed in Spark.

    Returns
    -------
    DataFrame
        ``rank``, ``item_id``, ``score``, ``price``, ``category``; ties by item_id.
    """
    query = F.array(*[F.lit(float(v)) for v in vector])
    dot = F.aggregate(F.zip_with("embedding", query, lambda a, b: a * b), F.lit(0.0), lambda acc, x: acc + x)
    ranked = embeddings.select("item_id", "price", "category", dot.cast("float").alias("score"))
    order = Window.orderBy(F.col("score").desc(), F.col("item_id").asc())
    return ranked.orderBy(F.col("score").desc(), F.col("item_id").asc()).limit(k).withColumn(
        "rank", F.row_number().over(order)
    )


def lookalikes_of_item(
    spark: SparkSession, config: Mapping[str, Any], item_id: str, *, k: int = 10, max_price: float | None = None
) -> DataFrame:
    """The item's look-alikes: its precomputed list, or with ``max_price`` an exact search over its
    category's items at or under that price (any band).

    Raises
    ------
    KeyError
        If the item has no embedding (unknown, or quarantined).
    """
    publication = latest_publication(spark, config)  # every table read at one published run
    embeddings = published_table(spark, config, EMBEDDINGS, publication)
    item = embeddings.where(F.col("item_id") == item_id).select("category", "embedding").first()
    if item is None:
        raise KeyError(f"item {item_id!r} has no embedding: unknown id, or quarantined")
    if max_price is None:
        lists = published_table(spark, config, SIMILAR_ITEMS, publication).where((F.col("item_id") == item_id) & (F.col("rank") <= k))
        ranked = lists.select(
            "rank", F.col("neighbour_id").alias("item_id"), "score", F.col("neighbour_price").alias("price"), "category"
        )
    else:
        candidates = embeddings.where(
            (F.col("category") == item["category"]) & (F.col("price") <= max_price) & (F.col("item_id") != item_id)
        )
        ranked = nearest(candidates, item["embedding"], k=k)
    return _with_titles(spark, config, ranked, publication)


def lookalikes_of_image(
    spark: SparkSession,
    config: Mapping[str, Any],
    image: bytes,
    *,
    k: int = 10,
    max_price: float | None = None,
    category: str | None = None,
    model_version: str | None = None,
) -> tuple[str, float, DataFrame]:
    """Look-alikes of a new photo: scored with the model that built the published tables (or
    ``model_version``), searched in its predicted category (or in ``category`` when given).

    Returns
    -------
    (str, float, DataFrame)
        Predicted category, its confidence, and the ranked look-alikes.
    """
    publication = latest_publication(spark, config)
    # The published embeddings' own model: a photo embedded by another model is not comparable with them.
    manifest = load_manifest(spark, config, model_version or (publication.model_version if publication else None))
    scorer = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    pixels = decode_image(image, manifest.image_size)[np.newaxis].astype(np.float32)
    out = scorer(pixels, training=False)
    probabilities = np.asarray(out["probabilities"])[0]
    predicted = manifest.classes[int(probabilities.argmax())]
    candidates = published_table(spark, config, EMBEDDINGS, publication).where(
        (F.col("category") == (category or predicted)) & (F.col("model_version") == manifest.version)
    )
    if max_price is not None:
        candidates = candidates.where(F.col("price") <= max_price)
    ranked = nearest(candidates, np.asarray(out["embedding"])[0].tolist(), k=k)
    return predicted, float(probabilities.max()), _with_titles(spark, config, ranked, publication)
