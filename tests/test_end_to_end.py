"""One run through every stage on ~200 real photos, with real Delta tables and a real trained model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.config import load_config
from lookalike.demo_catalog import CATALOG_COLUMNS, build_demo_catalog, build_demo_interactions
from lookalike.model_store import load_manifest, load_metrics
from lookalike.pipeline import run_pipeline
from lookalike.query import lookalikes_of_image, lookalikes_of_item
from lookalike.tables import read_table, register_tables
from schemas import (
    CATALOG, EMBEDDINGS, INTERACTIONS, ITEM_CLUSTERS, QUARANTINE, RUNS, SIMILAR_ITEMS, USER_RECOMMENDATIONS,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TWIN_ID = "twin-of-first"
BROKEN_ID = "text-not-jpeg"
BAD_PRICE_ID = "bad-price"


@pytest.fixture(scope="module")
def pipeline_run(spark, photo_subset: Path, tmp_path_factory: pytest.TempPathFactory):
    """Build a catalog from the photo subset plus three planted rows, and run every stage once."""
    work = tmp_path_factory.mktemp("e2e")
    config = load_config(
        "test", [f"storage.root={work / 'store'}", f"catalog.image_root={photo_subset}"], conf_dir=REPO / "conf"
    )
    catalog_path = work / "catalog.csv"
    build_demo_catalog(photo_subset, catalog_path, seed=11)
    rows = list(csv.DictReader(open(catalog_path, encoding="utf-8")))
    first = next(r for r in rows if r["category"] == "Topwear")
    # An exact duplicate photo under another id, same category and price: must be rank 1, score ~1.
    shutil.copy(photo_subset / first["image_uri"], photo_subset / "images" / f"{TWIN_ID}.jpg")
    (photo_subset / "images" / f"{BROKEN_ID}.jpg").write_text("this is not an image")
    planted = [
        {**first, "item_id": TWIN_ID, "image_uri": f"images/{TWIN_ID}.jpg"},
        {**first, "item_id": BROKEN_ID, "image_uri": f"images/{BROKEN_ID}.jpg"},
        {**first, "item_id": BAD_PRICE_ID, "price": "-3"},
    ]
    with open(catalog_path, "a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=CATALOG_COLUMNS).writerows(planted)
    interactions = work / "interactions.csv"
    build_demo_interactions(rows, interactions, users=25, seed=4)
    with open(interactions, "a", encoding="utf-8") as handle:
        handle.write(f"user-bad,{first['item_id']},wishlist,,2026-11-01T00:00:00Z\n")  # quarantined: unknown_event
    summary = run_pipeline(
        spark, config, catalog_path=str(catalog_path), run_id="e2e-run", interactions_path=str(interactions)
    )
    input_ids = [r["item_id"] for r in rows] + [p["item_id"] for p in planted]
    return config, summary, input_ids, first


def test_every_input_row_ends_in_embeddings_or_quarantine(spark, pipeline_run):
    """Nothing is silently dropped: embedded ids + quarantined ids == input ids, each once."""
    config, summary, input_ids, _ = pipeline_run
    embedded = read_table(spark, config, EMBEDDINGS).select("item_id")
    quarantined = read_table(spark, config, QUARANTINE).where("stage <> 'interactions'").select("item_id")
    expected = spark.createDataFrame([(i,) for i in input_ids], "item_id string")
    assertDataFrameEqual(embedded.unionAll(quarantined), expected)
    assert summary["items_embedded"] + summary["items_quarantined"] == len(input_ids)
    recorded = read_table(spark, config, RUNS).where("run_id = 'e2e-run' AND job = 'refresh'").first()["figures"]
    accounting = {k: v for k, v in recorded.items() if k.startswith(("input_rows", "items_kept", "items_published", "items_quarantined", "quarantined_"))}
    assert accounting == {"input_rows": len(input_ids), "items_kept": 0, "items_published": len(input_ids) - 2,
                          "items_quarantined": 2, "quarantined_bad_price": 1, "quarantined_undecodable_image": 1}


def test_bad_rows_are_quarantined_with_their_reason(spark, pipeline_run):
    """The planted bad price, the text file named .jpg and the unknown interaction event land in
    quarantine, each once, with the right stage."""
    config, _, _, first = pipeline_run
    actual = read_table(spark, config, QUARANTINE).select("item_id", "stage", "reason")
    expected = spark.createDataFrame(
        [(BAD_PRICE_ID, "ingest", "bad_price"), (BROKEN_ID, "embed", "undecodable_image"),
         (first["item_id"], "interactions", "unknown_event")], actual.schema
    )
    assertDataFrameEqual(actual, expected)


def test_exact_duplicate_photo_is_rank_one_with_score_one(spark, pipeline_run):
    """The twin (same bytes) is each other's first neighbour with cosine ~1."""
    config, _, _, first = pipeline_run
    lists = read_table(spark, config, SIMILAR_ITEMS).where("rank = 1")
    actual = lists.where(F.col("item_id").isin(first["item_id"], TWIN_ID)).select("item_id", "neighbour_id", "score")
    expected = spark.createDataFrame(
        [(first["item_id"], TWIN_ID, 1.0), (TWIN_ID, first["item_id"], 1.0)], "item_id string, neighbour_id string, score float"
    )
    assertDataFrameEqual(actual, expected, atol=1e-4)


def test_lists_equal_a_brute_force_reference_within_category_and_band(spark, pipeline_run):
    """Every list equals an independent pandas brute-force top-k over the item's own category and band."""
    config, *_ = pipeline_run
    k = int(config["index"]["k"])
    emb = read_table(spark, config, EMBEDDINGS).select("item_id", "category", "price_band", "embedding", "price").toPandas()
    expected_rows = []
    for (category, band), group in emb.groupby(["category", "price_band"]):
        group = group.sort_values("item_id")
        ids = group["item_id"].to_numpy()
        vectors = np.stack(group["embedding"].to_numpy()).astype(np.float64)  # the index sums in float64 too
        sims = vectors @ vectors.T
        for i, item in enumerate(ids):
            # Full sort of every other item: most similar first, ties by item id.
            candidates = [(-sims[i, j], ids[j], j) for j in range(len(ids)) if j != i]
            candidates.sort(key=lambda c: (c[0], c[1]))
            for rank, (_, neighbour, j) in enumerate(candidates[:k], start=1):
                expected_rows.append((category, int(band), item, rank, neighbour, float(group["price"].iloc[j])))
    schema = "category string, price_band int, item_id string, rank int, neighbour_id string, neighbour_price double"
    actual = read_table(spark, config, SIMILAR_ITEMS).select(
        "category", "price_band", "item_id", "rank", "neighbour_id", "neighbour_price"
    )
    assertDataFrameEqual(actual, spark.createDataFrame(expected_rows, schema))


def test_lists_never_cross_category_or_price_band(spark, pipeline_run):
    """Each neighbour has the item's category and price band, and is never the item itself."""
    config, *_ = pipeline_run
    emb = read_table(spark, config, EMBEDDINGS).select("item_id", "category", "price_band")
    lists = read_table(spark, config, SIMILAR_ITEMS)
    crossing = lists.join(
        emb.withColumnRenamed("item_id", "neighbour_id").withColumnRenamed("category", "n_category").withColumnRenamed(
            "price_band", "n_band"
        ),
        "neighbour_id",
    ).where("n_category <> category OR n_band <> price_band OR neighbour_id = item_id")
    assertDataFrameEqual(crossing.select("item_id", "neighbour_id"), spark.createDataFrame([], "item_id string, neighbour_id string"))


def test_sql_lookalikes_under_a_price_with_titles(spark, pipeline_run):
    """The README's query answers from the registered tables and matches the lists filtered by price."""
    config, _, _, first = pipeline_run
    register_tables(spark, config)
    item = first["item_id"]
    max_price = float(first["price"]) + 1
    actual = spark.sql(
        f"""
        SELECT s.rank, s.neighbour_id, c.title, s.neighbour_price
        FROM lookalike.similar_items s JOIN lookalike.catalog c ON c.item_id = s.neighbour_id
        WHERE s.item_id = '{item}' AND s.neighbour_price < {max_price}
        ORDER BY s.rank LIMIT 10
        """
    )
    lists = read_table(spark, config, SIMILAR_ITEMS).toPandas()
    catalog = read_table(spark, config, CATALOG).toPandas().set_index("item_id")
    mine = lists[(lists.item_id == item) & (lists.neighbour_price < max_price)].sort_values("rank").head(10)
    expected = pd.DataFrame(
        {
            "rank": mine["rank"].astype("int32"),
            "neighbour_id": mine["neighbour_id"],
            "title": [catalog.loc[n, "title"] for n in mine["neighbour_id"]],
            "neighbour_price": mine["neighbour_price"],
        }
    )
    assert len(expected) > 0
    assertDataFrameEqual(actual, spark.createDataFrame(expected, actual.schema), checkRowOrder=True)


def test_tables_carry_column_comments(spark, pipeline_run):
    """DESCRIBE shows the schema's comments, so ad-hoc SQL users see what each column means."""
    config, *_ = pipeline_run
    register_tables(spark, config)
    described = spark.sql("DESCRIBE TABLE lookalike.similar_items").where("col_name IN ('score', 'rank')")
    expected = spark.createDataFrame(
        [(c.name, c.comment) for c in SIMILAR_ITEMS.columns if c.name in ("score", "rank")], "col_name string, comment string"
    )
    assertDataFrameEqual(described.select("col_name", "comment"), expected)


def test_query_by_item_and_by_image(spark, pipeline_run, photo_subset: Path):
    """The query command's functions: an item's list is its precomputed list; its own photo finds it at score ~1."""
    config, _, _, first = pipeline_run
    by_item = lookalikes_of_item(spark, config, first["item_id"], k=3).select("rank", "item_id")
    precomputed = (
        read_table(spark, config, SIMILAR_ITEMS)
        .where((F.col("item_id") == first["item_id"]) & (F.col("rank") <= 3))
        .select("rank", F.col("neighbour_id").alias("item_id"))
    )
    assertDataFrameEqual(by_item, precomputed)

    photo = (photo_subset / first["image_uri"]).read_bytes()
    predicted, confidence, _ = lookalikes_of_image(spark, config, photo, k=2)
    assert predicted in load_manifest(spark, config).classes and 0.0 < confidence <= 1.0
    _, _, by_image = lookalikes_of_image(spark, config, photo, k=2, category=first["category"])
    top = by_image.select("item_id", "score").toPandas()
    assert set(top["item_id"]) == {first["item_id"], TWIN_ID}
    assert np.allclose(top["score"], 1.0, atol=1e-4)


INJECTIONS = ["x' OR '1'='1", "1; DROP TABLE lookalike.catalog; --", "` OR 1=1 --", "%", "*"]


def test_query_parameters_are_values_never_sql(spark, pipeline_run, photo_subset: Path):
    """Item ids and categories with SQL in them match nothing (bound as literals) and change no table."""
    config, _, _, first = pipeline_run
    before = {t.name: read_table(spark, config, t).count() for t in (CATALOG, EMBEDDINGS, SIMILAR_ITEMS)}
    for text in INJECTIONS:
        with pytest.raises(KeyError, match="has no embedding"):
            lookalikes_of_item(spark, config, text, k=3)
        with pytest.raises(KeyError):
            lookalikes_of_item(spark, config, text, k=3, max_price=1e9)
    photo = (photo_subset / first["image_uri"]).read_bytes()
    for text in INJECTIONS + [f"{first['category']}' OR '1'='1"]:
        _, _, found = lookalikes_of_image(spark, config, photo, k=3, category=text)
        assert found.count() == 0, text
    after = {t.name: read_table(spark, config, t).count() for t in (CATALOG, EMBEDDINGS, SIMILAR_ITEMS)}
    assert after == before


def test_model_bundle_records_its_metrics(spark, pipeline_run):
    """The trained bundle has held-out accuracy, per-class accuracy and a confusion matrix that add up."""
    config, summary, *_ = pipeline_run
    manifest = load_manifest(spark, config)
    metrics = load_metrics(spark, config)
    matrix = np.array(metrics["classifier"]["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.shape == (len(manifest.classes), len(manifest.classes))
    assert matrix.sum() == metrics["classifier"]["holdout_items"] > 0
    assert metrics["classifier"]["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert summary["model_version"] == manifest.version
    # The run's summary gives the accuracy over the undisputed holdout queries too, as recorded.
    consistent = metrics["classifier"]["title_consistent"]
    assert summary["classifier_undisputed_accuracy"] == consistent["accuracy"]
    assert summary["labels_disputed"] == metrics["classifier"]["disputed_labels"]
    assert consistent["holdout_items"] + len(consistent["disputed"]) == metrics["classifier"]["holdout_items"]
    assert 1 <= len(metrics["training_curves"]["classifier"]["loss"]) <= int(config["train"]["classifier_epochs"])
    json.dumps(metrics)  # the metrics file is plain JSON


def test_the_pipeline_clusters_recommends_and_reports_on_the_published_run(spark, pipeline_run):
    config, summary, _, _ = pipeline_run
    embedded = read_table(spark, config, EMBEDDINGS).select("category", "item_id")
    assertDataFrameEqual(read_table(spark, config, ITEM_CLUSTERS).select("category", "item_id"), embedded)
    assert summary["items_clustered"] == embedded.count()
    recommendations = read_table(spark, config, USER_RECOMMENDATIONS)
    assert summary["users_recommended"] == recommendations.select("user_id").distinct().count()
    assert set(recommendations.select("run_id").distinct().toPandas()["run_id"]) <= {"e2e-run"}
    assert summary["interactions_quarantined"] == {"unknown_event": 1}
    interactions = read_table(spark, config, INTERACTIONS)
    assert summary["interaction_rows"] == interactions.count() + 1
    report = Path(summary["report"].removeprefix("file:"))
    assert report.name == "index.html" and 'data-run-id="e2e-run"' in report.read_text(encoding="utf-8")
