"""Clusters within each category: MLlib KMeans, k chosen by silhouette, on planted and on real embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from sklearn.metrics import silhouette_score

from lookalike.clusters import cluster_categories, publish_clusters
from lookalike.publish import published_table
from lookalike.tables import read_table, table_version
from schemas import CLUSTER_SILHOUETTES, EMBEDDINGS, ITEM_CLUSTERS


def planted(rng: np.random.Generator, category: str, centres: int, per_centre: int) -> list[tuple]:
    """Items around ``centres`` orthogonal directions, L2-normalised, with their planted group."""
    rows = []
    for centre in range(centres):
        direction = np.zeros(16)
        direction[centre] = 1.0
        for n in range(per_centre):
            vector = direction + rng.normal(0, 0.05, 16)
            rows.append((category, f"{category}-{centre}-{n}", (vector / np.linalg.norm(vector)).tolist(), centre))
    return rows


def test_planted_clusters_are_found_and_k_is_chosen_by_silhouette(spark):
    rng = np.random.default_rng(0)
    rows = planted(rng, "A", 3, 12) + planted(rng, "B", 2, 10) + planted(rng, "C", 1, 3)
    frame = spark.createDataFrame(rows, "category string, item_id string, embedding array<float>, planted int")
    assignments, silhouettes, chosen_k = cluster_categories(frame, k_values=[2, 3, 4], min_items=8, seed=1)

    assert chosen_k == {"A": 3, "B": 2, "C": 1}
    for category in ("A", "B"):
        scores = {s.k: s.silhouette for s in silhouettes if s.category == category}
        assert sorted(scores) == [2, 3, 4]
        assert max(scores, key=scores.get) == chosen_k[category]
    assert not [s for s in silhouettes if s.category == "C"]  # too small: one cluster, not scored
    joined = assignments.join(frame.select("item_id", "planted"), "item_id").toPandas()
    assert len(joined) == len(rows) and joined["item_id"].is_unique
    # Each planted group is exactly one cluster, and different groups are different clusters.
    groups = joined.groupby(["category", "planted"])["cluster"].nunique()
    assert (groups == 1).all()
    clusters = joined.groupby("category")["cluster"].nunique().to_dict()
    assert clusters == {"A": 3, "B": 2, "C": 1}
    assert set(joined.loc[joined["category"] == "C", "k"]) == {1}


def test_k_values_below_two_are_refused(spark):
    frame = spark.createDataFrame([("A", "a", [1.0, 0.0])], "category string, item_id string, embedding array<float>")
    with pytest.raises(ValueError, match="at least 2"):
        cluster_categories(frame, k_values=[1, 2], min_items=1, seed=1)


@pytest.fixture(scope="module")
def clustered(spark, history):
    config = history.full
    result = publish_clusters(spark, config)
    return config, result


def test_every_published_item_has_one_cluster(spark, clustered):
    config, result = clustered
    embeddings = published_table(spark, config, EMBEDDINGS)
    clusters = read_table(spark, config, ITEM_CLUSTERS)
    assertDataFrameEqual(clusters.select("category", "item_id"), embeddings.select("category", "item_id"))
    per_category = clusters.groupBy("category").agg(
        F.countDistinct("cluster").alias("clusters"), F.min("k").alias("k"), F.max("k").alias("k_max"),
        F.min("cluster").alias("lowest"), F.max("cluster").alias("highest"),
    ).toPandas().set_index("category")
    assert (per_category["k"] == per_category["k_max"]).all()
    assert per_category["k"].to_dict() == result.chosen_k
    assert (per_category["lowest"] == 0).all() and (per_category["highest"] == per_category["k"] - 1).all()
    assert set(clusters.select("run_id").distinct().toPandas()["run_id"]) == {result.run_id}


def test_published_k_has_the_best_recorded_silhouette_and_it_is_right(spark, clustered):
    config, result = clustered
    scores = read_table(spark, config, CLUSTER_SILHOUETTES).where(F.col("run_id") == result.run_id).toPandas()
    assert len(scores) == len(result.silhouettes) > 0
    for category, rows in scores.groupby("category"):
        chosen = rows[rows["chosen"]]
        assert len(chosen) == 1 and chosen["silhouette"].iloc[0] == rows["silhouette"].max()
        assert int(chosen["k"].iloc[0]) == result.chosen_k[category]
    # MLlib's silhouette of the published clusters equals scikit-learn's exact cosine silhouette.
    members = read_table(spark, config, ITEM_CLUSTERS).join(
        published_table(spark, config, EMBEDDINGS).select("item_id", "embedding"), "item_id"
    ).toPandas()
    for category, rows in members.groupby("category"):
        if result.chosen_k[category] < 2:
            continue
        expected = silhouette_score(np.stack(rows["embedding"].to_numpy()), rows["cluster"], metric="cosine")
        recorded = scores[(scores["category"] == category) & scores["chosen"]]["silhouette"].iloc[0]
        assert recorded == pytest.approx(expected, abs=1e-5), category


def test_clustering_the_same_publication_again_adds_no_version(spark, clustered):
    config, _ = clustered
    before = {t.name: table_version(spark, config, t) for t in (ITEM_CLUSTERS, CLUSTER_SILHOUETTES)}
    publish_clusters(spark, config)
    assert {t.name: table_version(spark, config, t) for t in (ITEM_CLUSTERS, CLUSTER_SILHOUETTES)} == before
