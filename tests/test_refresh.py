"""The nightly refresh on real photos, a real model and real Delta tables.

The session's refresh history (tests/refresh_history.py): night-1 (full build, trains the model),
night-2 (a night of changes of every kind, incremental), and the same night-2 catalog built from
empty in a second store with the same model. Later tests add a third night while a reader polls,
and roll back.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import threading

import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.alternatives import DisplayRules, display_lookalikes
from lookalike.config import load_config
from lookalike.demo_catalog import write_catalog_csv
from lookalike.neighbours import similar_items
from lookalike.publish import (
    DELETE_FLAG,
    PUBLISHED_TABLES,
    apply_changes,
    changes_since,
    latest_publication,
    published_snapshot,
    published_table,
    unfinished_run,
)
from lookalike.refresh import AccountingError, RunConflict, account_for_rows, claim_run, refresh, rollback
from lookalike.tables import table_path
from refresh_history import REPO
from schemas import (
    ALL_TABLES, CATALOG, CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES, EMBEDDINGS, INDEX_RECALL,
    SIMILAR_ITEMS,
)

pytestmark = pytest.mark.slow

LINEAGE = ["run_id", "catalog_version"]


def without_lineage(frame: DataFrame) -> DataFrame:
    """The table's content with the columns that name the run that wrote a row dropped."""
    return frame.drop(*LINEAGE)


def versions(spark, config) -> dict[str, int]:
    """Latest version of every table."""
    return {t.name: DeltaTable.forPath(spark, table_path(config, t)).history(1).first()["version"] for t in ALL_TABLES}


def test_every_kind_of_change_is_present(history):
    """The night-2 catalog holds each kind of change (else the comparisons below prove less)."""
    assert {kind: len(ids) for kind, ids in history.affected.items()} == {
        "price_same_band": 2, "price_new_band": 2, "new_category": 2, "new_photo": 2, "stock_change": 2, "new_item": 2,
        "deleted": 2,
    }
    assert history.night2.ingest.photos_read == 4  # two new photos, two new items; the rest carried over
    assert history.night2.embed.photos_scored == 4


def test_every_input_row_is_accounted_for_and_a_gap_stops_the_publish(spark, history):
    """input rows + kept = published + quarantined, from independent counts; an imbalance raises and names the balance."""
    night2 = history.night2
    published = published_table(spark, history.incremental, EMBEDDINGS, night2.publication).count()
    catalog_version = int(night2.figures["catalog_version"])
    figures = account_for_rows(spark, history.incremental, run_id="night-2", ingested=night2.ingest,
                               catalog_version=catalog_version, published_items=published)
    assert figures == {"input_rows": len(history.changed_rows), "items_kept": 0, "items_published": len(history.changed_rows),
                       "items_quarantined": 0}
    assert {k: night2.figures[k] for k in figures} == figures  # what the run recorded

    with pytest.raises(AccountingError, match=r"catalog items = items published \+ items quarantined at embed: "
                                              rf"{published} != {published - 1}"):
        account_for_rows(spark, history.incremental, run_id="night-2", ingested=night2.ingest,
                         catalog_version=catalog_version, published_items=published - 1)
    lost_at_ingest = dataclasses.replace(night2.ingest, ingested=night2.ingest.ingested - 1)
    with pytest.raises(AccountingError, match="input rows = rows accepted"):
        account_for_rows(spark, history.incremental, run_id="night-2", ingested=lost_at_ingest,
                         catalog_version=catalog_version, published_items=published)


def test_incremental_refresh_equals_full_rebuild(spark, history):
    """Night-2 applied incrementally on night-1 gives the tables a build from empty gives."""
    for table in PUBLISHED_TABLES:
        incremental = published_table(spark, history.incremental, table, history.night2.publication)
        rebuilt = published_table(spark, history.full, table, history.rebuilt.publication)
        dropped = LINEAGE + (["ingested_at"] if table is CATALOG else [])
        assertDataFrameEqual(incremental.drop(*dropped), rebuilt.drop(*dropped), atol=1e-6)


def test_only_affected_lists_are_recomputed(spark, history):
    """Lists that night-2 did not touch keep night-1's rows; the change feed holds exactly the lists that changed."""
    before = published_table(spark, history.incremental, SIMILAR_ITEMS, history.night1.publication)
    after = published_table(spark, history.incremental, SIMILAR_ITEMS, history.night2.publication)
    changed_rows = without_lineage(after).exceptAll(without_lineage(before)).unionByName(
        without_lineage(before).exceptAll(without_lineage(after))
    )
    changed_lists = {r["item_id"] for r in changed_rows.select("item_id").distinct().collect()}
    assert changed_lists, "night-2 changed no list"
    total_lists = after.select("item_id").distinct().count()
    # Lists are staged whole and only when they differ: the run's count of changed lists is exact.
    assert int(history.night2.figures["lists_changed"]) == len(changed_lists)
    assert len(changed_lists - set(history.affected["deleted"])) <= int(history.night2.figures["lists_recomputed"]) < total_lists / 2

    # Every list has one lineage; untouched lists are byte-for-byte night-1's rows.
    assert after.groupBy("item_id").agg(F.countDistinct("run_id").alias("runs")).where("runs > 1").count() == 0
    untouched = after.where(F.col("run_id") == "night-1")
    kept = before.join(untouched.select("item_id").distinct(), "item_id", "left_semi").select(*SIMILAR_ITEMS.column_names)
    assertDataFrameEqual(untouched, kept)

    feed = changes_since(spark, history.incremental, SIMILAR_ITEMS, history.night1.publication.similar_items_version,
                         history.night2.publication)
    assert {r["item_id"] for r in feed.select("item_id").distinct().collect()} == changed_lists


@pytest.mark.parametrize("table", [CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES], ids=lambda t: t.name)
def test_derived_lists_are_recomputed_only_where_a_change_reaches(spark, history, table):
    """Night-2 recomputes the derived lists a change can reach, not all; the others keep night-1's rows."""
    before = published_table(spark, history.incremental, table, history.night1.publication)
    after = published_table(spark, history.incremental, table, history.night2.publication)
    changed_rows = without_lineage(after).exceptAll(without_lineage(before)).unionByName(
        without_lineage(before).exceptAll(without_lineage(after))
    )
    changed_lists = {r["item_id"] for r in changed_rows.select("item_id").distinct().collect()} - set(history.affected["deleted"])
    recomputed = int(history.night2.figures[f"{table.name}_lists_recomputed"])
    assert changed_lists and len(changed_lists) <= recomputed < after.select("item_id").distinct().count()
    untouched = after.where(F.col("run_id") == "night-1")
    kept = before.join(untouched.select("item_id").distinct(), "item_id", "left_semi").select(*table.column_names)
    assertDataFrameEqual(untouched, kept)


def test_deleted_items_vanish_everywhere(spark, history):
    """A deleted item has no catalog row, no embedding, no list, and is in no one's list."""
    deleted = history.affected["deleted"]
    _, tables = published_snapshot(spark, history.incremental)
    assert tables["catalog"].where(F.col("item_id").isin(deleted)).count() == 0
    assert tables["embeddings"].where(F.col("item_id").isin(deleted)).count() == 0
    lists = tables["similar_items"]
    assert lists.where(F.col("item_id").isin(deleted) | F.col("neighbour_id").isin(deleted)).count() == 0
    before = published_table(spark, history.incremental, SIMILAR_ITEMS, history.night1.publication)
    assert before.where(F.col("neighbour_id").isin(deleted)).count() > 0


def test_consumer_replaying_the_change_feed_gets_the_published_lists(spark, history):
    """A retailer holding night-1's lists applies the feed since that version and holds night-2's lists."""
    held = published_table(spark, history.incremental, SIMILAR_ITEMS, history.night1.publication)
    feed = changes_since(spark, history.incremental, SIMILAR_ITEMS, history.night1.publication.similar_items_version,
                         history.night2.publication)
    keys = ["item_id", "rank"]
    last = feed.where(F.col("_change_type") != "delete").drop("_change_type", "_commit_version")
    removed = feed.where(F.col("_change_type") == "delete").select(*keys)
    replayed = held.join(feed.select(*keys), keys, "left_anti").unionByName(last)
    replayed = replayed.join(removed.join(last.select(*keys), keys, "left_anti"), keys, "left_anti").select(
        *SIMILAR_ITEMS.column_names
    )
    assertDataFrameEqual(replayed, published_table(spark, history.incremental, SIMILAR_ITEMS, history.night2.publication))


def test_every_list_carries_its_lineage(spark, history):
    """run_id, model_version and catalog_version name the run, model and catalog version each list came from."""
    publication = history.night2.publication
    lists = published_table(spark, history.incremental, SIMILAR_ITEMS, publication)
    lineage = {(r["run_id"], r["model_version"], r["catalog_version"]) for r in lists.select("run_id", "model_version", "catalog_version").distinct().collect()}
    night1 = history.night1.publication
    assert lineage == {
        ("night-1", night1.model_version, night1.catalog_version),
        ("night-2", publication.model_version, publication.catalog_version),
    }


def test_rerun_of_published_run_adds_no_versions(spark, history):
    """Running night-2 again with the same input changes nothing, in any table."""
    before = versions(spark, history.incremental)
    again = refresh(spark, history.incremental, catalog_path=str(history.changed_csv), run_id="night-2")
    assert again.status == "already published"
    assert versions(spark, history.incremental) == before


def test_rerun_with_different_input_is_refused(spark, history):
    """Reusing a run id for another catalog raises RunConflict naming the cause, and writes nothing."""
    before = versions(spark, history.incremental)
    with pytest.raises(RunConflict, match="different input"):
        refresh(spark, history.incremental, catalog_path=str(history.base_csv), run_id="night-2")
    assert versions(spark, history.incremental) == before


def test_other_list_settings_recompute_those_lists_whole(spark, history, tmp_path):
    """A run under other list settings recomputes those lists whole, though no item changed: they equal lists computed from scratch.

    (Incrementally, with nothing changed, no list would be touched and they would keep 20 rows, or 10.)
    """
    copy = tmp_path / "store"
    shutil.copytree(history.full["storage"]["root"], copy)  # before any test below changes the full store
    config = load_config(
        "test", [f"storage.root={copy}", f"catalog.image_root={history.photos}", "storage.database=new_settings",
                 "index.k=5", "display.k=3"],
        conf_dir=REPO / "conf",
    )
    result = refresh(spark, config, catalog_path=str(history.changed_csv), run_id="new-settings")
    assert result.figures["photos_scored"] == 0 and result.figures["embeddings_updated"] == 0
    assert "display_lookalikes_lists_recomputed" not in result.figures  # computed whole, not incrementally
    embeddings = published_table(spark, config, EMBEDDINGS, result.publication)
    catalog = published_table(spark, config, CATALOG, result.publication)
    expected_lists = similar_items(embeddings, k=5, block_rows=int(config["index"]["block_rows"]), run_id="x")
    assertDataFrameEqual(
        without_lineage(published_table(spark, config, SIMILAR_ITEMS, result.publication)), without_lineage(expected_lists)
    )
    expected_display = display_lookalikes(
        embeddings, catalog, rules=DisplayRules.from_config(config["display"]), block_rows=64, run_id="x", catalog_version=0
    )
    assertDataFrameEqual(
        without_lineage(published_table(spark, config, DISPLAY_LOOKALIKES, result.publication)),
        without_lineage(expected_display), atol=1e-6,
    )


def test_big_partitions_split_and_searched_approximately_publish_their_recall(spark, history, tmp_path):
    """A run with the biggest partitions split in blocks and searched approximately (IVF, one probe).

    Split partitions under the approximate limit keep exactly the lists of one task per partition;
    the approximate ones publish their recall in ``index_recall``, equal to the recall of the
    published lists against exact lists computed here (every item sampled).
    """
    copy = tmp_path / "store"
    shutil.copytree(history.full["storage"]["root"], copy)
    sizes = sorted(
        (row["count"] for row in published_snapshot(spark, history.full)[1]["embeddings"].groupBy("category", "price_band").count().collect()),
        reverse=True,
    )
    above, block_items = sizes[1] - 1, max(2, sizes[2] // 2)  # the two biggest approximate; the next ones split too
    config = load_config(
        "test", [f"storage.root={copy}", f"catalog.image_root={history.photos}", "storage.database=approximate",
                 f"index.approximate_above={above}", "index.approximate_nprobe=1", "index.recall_sample=1.0",
                 f"index.block_items={block_items}"],
        conf_dir=REPO / "conf",
    )
    result = refresh(spark, config, catalog_path=str(history.changed_csv), run_id="approximate")
    embeddings = published_table(spark, config, EMBEDDINGS, result.publication)
    published = published_table(spark, config, SIMILAR_ITEMS, result.publication)
    exact = similar_items(embeddings, k=int(config["index"]["k"]), block_rows=64, run_id="x")
    partition_sizes = embeddings.groupBy("category", "price_band").agg(F.count("*").alias("partition_items"))
    exact_parts = partition_sizes.where(F.col("partition_items") <= above).select("category", "price_band")
    assertDataFrameEqual(
        without_lineage(published.join(exact_parts, ["category", "price_band"], "left_semi")),
        without_lineage(exact.join(exact_parts, ["category", "price_band"], "left_semi")),
    )
    k = int(config["index"]["k"])
    ks = sorted({min(int(config["index"]["quality_k"]), k), k})
    assert result.figures["index_recall_rows"] == 2 * len(ks)  # two partitions
    expected = []
    for k in ks:
        e = exact.where(F.col("rank") <= k).select("category", "price_band", "item_id", "neighbour_id")
        a = published.where(F.col("rank") <= k).select("item_id", "neighbour_id", F.lit(1).alias("hit"))
        per_item = e.join(a, ["item_id", "neighbour_id"], "left").groupBy("category", "price_band", "item_id").agg(
            (F.count("hit") / F.count("*")).alias("share")
        )
        expected.append(
            per_item.groupBy("category", "price_band").agg(F.count("*").alias("items_sampled"), F.avg("share").alias("recall_at_k"))
            .join(partition_sizes.where(F.col("partition_items") > above), ["category", "price_band"])
            .withColumn("k", F.lit(k))
        )
    recall = spark.read.format("delta").load(table_path(config, INDEX_RECALL)).where(F.col("run_id") == "approximate")
    columns = ["category", "price_band", "partition_items", "k", "items_sampled", "recall_at_k"]
    assertDataFrameEqual(recall.select(*columns), functools.reduce(DataFrame.unionByName, expected).select(*columns), rtol=1e-12)
    assert recall.where((F.col("nprobe") != 1) | (F.col("method") != "ivf_flat") | (F.col("model_version") != result.publication.model_version)).count() == 0


def snapshot_signature(spark, config) -> tuple[str | None, int, int]:
    """(run id, embeddings rows, hash of the lists) of what a reader sees now, resolved once."""
    publication, tables = published_snapshot(spark, config)
    lists = tables["similar_items"].agg(
        F.sum(F.xxhash64("item_id", "rank", "neighbour_id").cast("decimal(38,0)")).cast("string").alias("h")
    ).first()["h"]
    return (publication.run_id if publication else None, tables["embeddings"].count(), lists)


@pytest.fixture(scope="module")
def third_night(spark, history):
    """Night-3 (more changes) while a reader thread polls the published snapshot."""
    rows = [dict(r, price=f"{float(r['price']) * 2:.2f}") if i % 10 == 0 else r for i, r in enumerate(history.changed_rows)]
    csv_path = write_catalog_csv(rows, history.changed_csv.with_name("night3.csv"))
    before = snapshot_signature(spark, history.incremental)
    seen: list[tuple] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(snapshot_signature(spark, history.incremental))

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        night3 = refresh(spark, history.incremental, catalog_path=str(csv_path), run_id="night-3")
    finally:
        done.set()
        reader.join(timeout=120)
    after = snapshot_signature(spark, history.incremental)
    return night3, before, after, seen


def test_reader_polling_during_a_run_sees_only_whole_runs(third_night):
    """Every snapshot a reader took while night-3 ran is all of night-2 or all of night-3."""
    night3, before, after, seen = third_night
    assert night3.status == "published"
    assert before[0] == "night-2" and after[0] == "night-3" and before != after
    assert len(seen) >= 3
    assert set(seen) <= {before, after}


def test_rollback_restores_previous_run_exactly(spark, history, third_night):
    """One rollback makes every published table equal night-2's, and the pointer names night-2."""
    night3 = third_night[0]
    restored = rollback(spark, history.incremental, run_id="rollback-1")
    assert (restored.run_id, restored.kind) == ("night-2", "rollback")
    assert latest_publication(spark, history.incremental) == restored
    for table in PUBLISHED_TABLES:
        assertDataFrameEqual(
            published_table(spark, history.incremental, table, restored),
            published_table(spark, history.incremental, table, history.night2.publication),
        )
    # The rollback is itself in the change feed: night-3's changed lists are changed back.
    feed = changes_since(spark, history.incremental, SIMILAR_ITEMS, night3.publication.similar_items_version, restored)
    assert feed.count() > 0


def test_new_run_is_refused_while_another_is_half_published(spark, history):
    """A run whose MERGE landed but whose pointer did not blocks other run ids; readers still see the published run."""
    config = history.full
    published = latest_publication(spark, config)
    seq, done = claim_run(spark, config, run_id="half", kind="refresh", fingerprint="f" * 64, description="{}",
                          publication=published)
    assert not done and seq == published.run_seq + 1
    row = published_table(spark, config, EMBEDDINGS, published).limit(1)
    staged = row.withColumn("price", F.col("price") + 1).withColumn(DELETE_FLAG, F.lit(False))
    assert apply_changes(spark, config, EMBEDDINGS, staged, run_id="half", run_seq=seq)["updated"] == 1

    assert unfinished_run(spark, config, published) == "half"
    with pytest.raises(RunConflict, match="half was interrupted while publishing"):
        refresh(spark, config, catalog_path=str(history.changed_csv), run_id="next-night")
    assert latest_publication(spark, config) == published
    assertDataFrameEqual(
        published_table(spark, config, EMBEDDINGS),
        published_table(spark, config, EMBEDDINGS, history.rebuilt.publication),
    )
