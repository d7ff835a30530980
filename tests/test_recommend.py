"""Recommendations from a user's favourites, on the published lists of real photos.

Interactions are validated row by row (bad rows quarantined with a reason), and the published
``user_recommendations`` are checked against the rules users rely on (favourite category first,
nothing already seen, nothing out of stock) and against lists recomputed here in pandas.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.demo_catalog import build_demo_interactions, read_catalog_csv
from lookalike.publish import latest_publication, published_table
from lookalike.recommend import ingest_interactions, publish_recommendations
from lookalike.tables import read_table, table_version
from schemas import CATALOG, EMBEDDINGS, INTERACTIONS, QUARANTINE, SIMILAR_ITEMS, USER_RECOMMENDATIONS

WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 5.0}


def write_events(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "event", "rating", "event_time"])
        writer.writerows(rows)
    return path


def test_unusable_interactions_are_quarantined_with_their_reason(spark, make_config, tmp_path: Path):
    config = make_config()
    good = [
        ("u1", "a", "rating", "5", "2026-11-01T10:00:00Z"),
        ("u1", "b", "view", "", "2026-11-01T10:01:00Z"),
        ("u2", "c", "PURCHASE", "", "2026-11-02 08:00:00"),
    ]
    bad = {
        "missing_user_id": ("", "a", "view", "", "2026-11-01T10:00:00Z"),
        "missing_item_id": ("u3", " ", "view", "", "2026-11-01T10:00:00Z"),
        "unknown_event": ("u3", "a", "wishlist", "", "2026-11-01T10:00:00Z"),
        "bad_rating": ("u3", "a", "rating", "11", "2026-11-01T10:00:00Z"),
        "bad_event_time": ("u3", "a", "click", "", "last tuesday"),
    }
    rating_on_a_view = ("u3", "b", "view", "4", "2026-11-01T10:00:00Z")
    path = write_events(tmp_path / "events.csv", good + list(bad.values()) + [rating_on_a_view])

    counts = ingest_interactions(spark, config, str(path), run_id="events-1")

    assert (counts.input_rows, counts.ingested) == (9, 3)
    assert counts.quarantined == {**{reason: 1 for reason in bad}, "bad_rating": 2}
    expected = spark.createDataFrame(
        [("u1", "a", "rating", 5.0, "2026-11-01 10:00:00"), ("u1", "b", "view", None, "2026-11-01 10:01:00"),
         ("u2", "c", "purchase", None, "2026-11-02 08:00:00")],
        "user_id string, item_id string, event string, rating double, event_time string",
    ).withColumn("event_time", F.to_timestamp("event_time"))
    assertDataFrameEqual(read_table(spark, config, INTERACTIONS), expected)
    quarantined = read_table(spark, config, QUARANTINE).where(F.col("stage") == "interactions")
    assertDataFrameEqual(
        quarantined.select("item_id", "reason", "run_id"),
        spark.createDataFrame(
            [("a", "missing_user_id", "events-1"), ("", "missing_item_id", "events-1"), ("a", "unknown_event", "events-1"),
             ("a", "bad_rating", "events-1"), ("a", "bad_event_time", "events-1"), ("b", "bad_rating", "events-1")],
            "item_id string, reason string, run_id string",
        ),
    )


def test_a_missing_column_is_a_clear_error(spark, make_config, tmp_path: Path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,event\nu1,a,view\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lack column\(s\) \['rating', 'event_time'\]"):
        ingest_interactions(spark, make_config(), str(path), run_id="events-2")


def expected_recommendations(
    events: pd.DataFrame, lists: pd.DataFrame, items: pd.DataFrame, *, top_n: int, seeds: int, threshold: float
) -> pd.DataFrame:
    """The documented algorithm, step by step in pandas."""
    weight = events.apply(lambda e: e["rating"] if e["event"] == "rating" else WEIGHTS[e["event"]], axis=1)
    pairs = events.assign(weight=weight).groupby(["user_id", "item_id"], as_index=False).agg(
        weight=("weight", "max"), last=("event_time", "max")
    )
    liked = pairs[pairs["weight"] >= threshold].merge(items[["item_id", "category"]], on="item_id")
    affinity = liked.groupby(["user_id", "category"], as_index=False)["weight"].sum().rename(
        columns={"weight": "category_affinity"}
    )
    liked = liked.sort_values(["user_id", "weight", "last", "item_id"], ascending=[True, False, False, True])
    top = liked.groupby("user_id").head(seeds)
    candidates = top[["user_id", "item_id", "weight"]].rename(columns={"item_id": "seed_id"}).merge(
        lists.rename(columns={"item_id": "seed_id", "neighbour_id": "item_id"}), on="seed_id"
    )
    candidates["contribution"] = candidates["weight"] * candidates["score"].astype("float64")
    seen = set(zip(pairs["user_id"], pairs["item_id"]))
    candidates = candidates[[(u, i) not in seen for u, i in zip(candidates["user_id"], candidates["item_id"])]]
    best_seed = candidates.sort_values(["contribution", "seed_id"], ascending=[False, True]).groupby(
        ["user_id", "item_id"], as_index=False
    ).first()[["user_id", "item_id", "seed_id"]].rename(columns={"seed_id": "because_of"})
    scored = candidates.groupby(["user_id", "item_id"], as_index=False)["contribution"].sum().rename(
        columns={"contribution": "score"}
    ).merge(best_seed, on=["user_id", "item_id"])
    scored = scored[scored["score"] > 0].merge(items[items["recommendable"]][["item_id", "category", "price"]], on="item_id")
    scored = scored.merge(affinity, on=["user_id", "category"], how="left").fillna({"category_affinity": 0.0})
    scored = scored.sort_values(
        ["user_id", "category_affinity", "score", "item_id"], ascending=[True, False, False, True]
    )
    scored["rank"] = scored.groupby("user_id").cumcount() + 1
    return scored[scored["rank"] <= top_n][
        ["user_id", "rank", "item_id", "category", "price", "category_affinity", "score", "because_of"]
    ]


@pytest.fixture(scope="module")
def recommended(spark, history, tmp_path_factory):
    """The published run of the full store, hand-written users, and the demo's synthetic users."""
    config = history.full
    embeddings = published_table(spark, config, EMBEDDINGS).select("item_id", "category").toPandas()
    sizes = embeddings["category"].value_counts()
    favourite, other = sorted(sizes[sizes >= 6].index, key=lambda c: (-sizes[c], c))[:2]
    fav_items = sorted(embeddings.loc[embeddings["category"] == favourite, "item_id"])
    other_items = sorted(embeddings.loc[embeddings["category"] == other, "item_id"])
    t = "2026-11-0{}T10:00:00Z"
    hand = [
        # Loves three items of the favourite category, likes one of another, saw one more of each.
        ("fan", fav_items[0], "rating", "5", t.format(1)), ("fan", fav_items[1], "purchase", "", t.format(2)),
        ("fan", fav_items[2], "rating", "5", t.format(3)), ("fan", other_items[0], "cart", "", t.format(4)),
        ("fan", fav_items[3], "view", "", t.format(5)), ("fan", other_items[1], "click", "", t.format(5)),
        # Only lukewarm events: nothing is liked, so nothing is recommended.
        ("browser", fav_items[0], "view", "", t.format(1)), ("browser", other_items[0], "rating", "3", t.format(2)),
    ]
    work = tmp_path_factory.mktemp("recommend")
    synthetic = work / "synthetic.csv"
    build_demo_interactions(read_catalog_csv(history.changed_csv), synthetic, users=40, seed=2)
    with open(synthetic, encoding="utf-8") as handle:
        rows = [tuple(r) for r in list(csv.reader(handle))[1:]]
    path = write_events(work / "events.csv", hand + rows)
    ingest_interactions(spark, config, str(path), run_id="events-night-2")
    users = publish_recommendations(spark, config)
    return config, favourite, fav_items, other_items, users


def test_a_user_who_loved_one_category_gets_it_first(spark, recommended):
    config, favourite, fav_items, other_items, _ = recommended
    fan = read_table(spark, config, USER_RECOMMENDATIONS).where(F.col("user_id") == "fan").orderBy("rank").toPandas()
    assert len(fan) > 0 and list(fan["rank"]) == list(range(1, len(fan) + 1))
    categories = list(fan["category"])
    assert categories[0] == favourite
    # Every item of the favourite category comes before any item of another category.
    assert categories == sorted(categories, key=lambda c: c != favourite)
    assert not set(fan["item_id"]) & set(fav_items[:4] + other_items[:2])  # nothing the user has seen
    assert set(fan.loc[fan["category"] == favourite, "because_of"]) <= set(fav_items[:3])


def test_a_user_who_liked_nothing_gets_no_list(spark, recommended):
    config = recommended[0]
    assert read_table(spark, config, USER_RECOMMENDATIONS).where(F.col("user_id") == "browser").count() == 0


def test_published_recommendations_equal_the_algorithm_recomputed_in_pandas(spark, recommended):
    config, *_, users = recommended
    settings = config["recommend"]
    events = read_table(spark, config, INTERACTIONS).toPandas()
    lists = published_table(spark, config, SIMILAR_ITEMS).select("item_id", "neighbour_id", "score").toPandas()
    stock = published_table(spark, config, CATALOG).select("item_id", "in_stock").toPandas()
    items = published_table(spark, config, EMBEDDINGS).select("item_id", "category", "price").toPandas().merge(
        stock, on="item_id", how="left"
    )
    items["recommendable"] = items["in_stock"].ne(False)
    assert (~items["recommendable"]).any(), "the fixture should have out-of-stock items"
    expected = expected_recommendations(
        events, lists, items, top_n=int(settings["top_n"]), seeds=int(settings["seeds_per_user"]),
        threshold=float(settings["like_threshold"]),
    )
    published = read_table(spark, config, USER_RECOMMENDATIONS).select(*expected.columns)
    recomputed = spark.createDataFrame(expected).select(
        [F.col(f.name).cast(f.dataType) for f in published.schema.fields]
    )
    assertDataFrameEqual(published, recomputed, rtol=1e-9)
    assert users == expected["user_id"].nunique() > 30
    out_of_stock = set(items.loc[~items["recommendable"], "item_id"])
    assert not out_of_stock & set(expected["item_id"])
    lineage = read_table(spark, config, USER_RECOMMENDATIONS).select("run_id", "interactions_version").distinct().collect()
    assert [tuple(row) for row in lineage] == [
        (latest_publication(spark, config).run_id, table_version(spark, config, INTERACTIONS))
    ]
