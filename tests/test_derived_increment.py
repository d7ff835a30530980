"""Incremental derived lists: the rows an ``Increment`` stages, applied to last night's tables, give a full rebuild.

Random small catalogs built to be hard: few distinct directions and prices (exact score and price
ties), repeated photo hashes, few brands, some items out of stock. A night then changes items in
every way the derived lists depend on (vector and photo, price and band, category, stock, brand,
deletion, new items). The incremental rows, applied to night-1's lists with the same MERGE
semantics as ``publish.apply_changes``, must equal night-2 computed whole, for every derived
table and both display price windows. (On data this dense most lists are recomputed; the
test below and tests/test_refresh.py check that untouched lists are not.)
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.alternatives import Increment, derived_tables, moved_items
from lookalike.publish import PUBLISHED_KEYS
from lookalike.scoring import DELETE_FLAG
from schemas import CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES

CATEGORIES = ("Bags", "Shoes", "Watches")
DIRECTIONS = 9  # distinct embedding directions: many exact score ties
PRICES = (40.0, 90.0, 90.0, 150.0, 300.0, 700.0)
BAND_EDGES = (100.0, 500.0)
STATE_SCHEMA = (
    "item_id string, category string, given_category string, predicted_category string, confidence float, "
    "embedding array<float>, price double, price_band int, image_hash string, model_version string"
)
STATE_SCHEMA_COLUMNS = [column.split()[0] for column in STATE_SCHEMA.split(", ")]


def _band(price: float) -> int:
    return int(np.searchsorted(BAND_EDGES, price, side="right"))


def night_one(rng: np.random.Generator, n: int) -> dict[str, dict]:
    directions = rng.normal(size=(DIRECTIONS, 4))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    items = {}
    for i in range(n):
        d = int(rng.integers(DIRECTIONS))
        price = float(rng.choice(PRICES))
        category = str(rng.choice(CATEGORIES))
        items[f"i{i:03d}"] = {
            "category": category, "given_category": category,
            "predicted_category": category if rng.random() < 0.8 else str(rng.choice(CATEGORIES)),
            "confidence": float(np.float32(rng.random())), "embedding": directions[d].astype(np.float32).tolist(),
            "price": price, "price_band": _band(price), "image_hash": f"h{d}" if rng.random() < 0.2 else f"h-{i}",
            "model_version": "m1", "brand": str(rng.choice(["Ace", "Bee", "Cee", ""])), "in_stock": bool(rng.random() < 0.85),
        }
    return items


def night_two(rng: np.random.Generator, night1: dict[str, dict]) -> tuple[dict[str, dict], set[str]]:
    """Night-1 with about 15 % of items changed in every way; returns the items and the changed ids."""
    items = {key: dict(value) for key, value in night1.items()}
    ids = list(items)
    picked = rng.choice(len(ids), size=14, replace=False)
    changed = set()
    for position, kind in zip(picked, ["vector", "vector", "price", "price", "category", "category", "stock", "stock",
                                       "brand", "brand", "delete", "delete", "price", "vector"]):
        item_id = ids[position]
        changed.add(item_id)
        row = items[item_id]
        if kind == "vector":
            vector = rng.normal(size=4)
            row["embedding"] = (vector / np.linalg.norm(vector)).astype(np.float32).tolist()
            row["image_hash"] = f"new-{item_id}"
        elif kind == "price":
            row["price"] = float(rng.choice(PRICES)) * 1.5
            row["price_band"] = _band(row["price"])
        elif kind == "category":
            row["category"] = row["given_category"] = next(c for c in CATEGORIES if c != row["category"])
        elif kind == "stock":
            row["in_stock"] = not row["in_stock"]
        elif kind == "brand":
            row["brand"] = "Dee"
        else:
            del items[item_id]
    for i in range(3):
        template = dict(night1[ids[int(rng.integers(len(ids)))]])
        items[f"new{i}"] = template
        changed.add(f"new{i}")
    return items, changed


def frames(spark, items: dict[str, dict]):
    state = spark.createDataFrame(
        [(item_id, *(row[c] for c in ("category", "given_category", "predicted_category", "confidence", "embedding",
                                      "price", "price_band", "image_hash", "model_version")))
         for item_id, row in sorted(items.items())],
        STATE_SCHEMA,
    )
    catalog = spark.createDataFrame(
        [(item_id, row["brand"], row["in_stock"]) for item_id, row in sorted(items.items())],
        "item_id string, brand string, in_stock boolean",
    )
    return state, catalog


def config_for(price_window: str) -> dict:
    return {
        "alternatives": {"cheaper_k": 4, "cheaper_in_stock_only": True, "cheaper_max_discount_pct": 0.0,
                         "cross_category_k": 4},
        "display": {"k": 4, "price_window": price_window, "relative_price_pct": 30.0, "exclude_out_of_stock": True,
                    "duplicate_score": 0.99, "max_per_brand": 1, "fill": True},
        "index": {"block_rows": 7},
    }


def whole(spark, config, items, run_id):
    state, catalog = frames(spark, items)
    parts = derived_tables(spark, config, state=state, catalog=catalog, classes=list(CATEGORIES), run_id=run_id,
                           catalog_version=1)
    return {part.table.name: (part.table, part.rows.toPandas()) for part in parts}


def applied(previous, changes, key: tuple[str, ...]):
    """``previous`` with ``changes`` merged the way ``publish.apply_changes`` merges them."""
    rows = {tuple(r[c] for c in key): r for r in previous.to_dict("records")}
    for change in changes.to_dict("records"):
        at = tuple(change[c] for c in key)
        if change.pop(DELETE_FLAG):
            rows.pop(at, None)
        else:
            rows[at] = change
    return list(rows.values())


@pytest.mark.parametrize("seed, price_window", [(1, "band"), (2, "relative"), (3, "band")])
def test_incremental_rows_applied_to_last_night_equal_a_full_rebuild(spark, seed, price_window):
    rng = np.random.default_rng(seed)
    night1 = night_one(rng, 90)
    night2, changed = night_two(rng, night1)
    assert_increment_rebuilds(spark, config_for(price_window), night1, night2, changed)


def test_a_category_emptied_overnight_loses_every_list(spark):
    """Every item of a category deleted or moved: its group has no rows tonight, only published lists to delete."""
    rng = np.random.default_rng(4)
    night1 = night_one(rng, 60)
    night2 = {key: dict(value) for key, value in night1.items()}
    emptied = [item_id for item_id, row in night1.items() if row["category"] == "Watches"]
    assert len(emptied) >= 4
    for position, item_id in enumerate(emptied):
        if position % 2:
            del night2[item_id]
        else:
            night2[item_id]["category"] = night2[item_id]["given_category"] = "Bags"
    assert "Watches" not in {row["category"] for row in night2.values()}
    assert_increment_rebuilds(spark, config_for("band"), night1, night2, set(emptied))


def staged_changes(spark, night1: dict, night2: dict):
    """What the embed stage stages: night-2's embeddings rows that differ from night-1's, ``_delete`` rows for deleted items.

    A stock or brand change is in the catalog only: it stages no row.
    """
    state, _ = frames(spark, night2)
    embedded = [c for c in STATE_SCHEMA_COLUMNS if c != "item_id"]
    upserted = [i for i, row in night2.items() if i not in night1 or any(row[c] != night1[i][c] for c in embedded)]
    upserts = state.where(state["item_id"].isin(upserted)).withColumn(DELETE_FLAG, F.lit(False))
    deleted = spark.createDataFrame([(i,) for i in sorted(set(night1) - set(night2))], "item_id string")
    return upserts.unionByName(deleted.withColumn(DELETE_FLAG, F.lit(True)), allowMissingColumns=True)


def increment_for(spark, night1: dict, night2: dict, changed: set[str], previous: dict) -> Increment:
    """The increment a refresh builds: every changed id, and those a cross-category list can see."""
    night1_state, _ = frames(spark, night1)
    moved = frozenset(r["item_id"] for r in moved_items(night1_state, staged_changes(spark, night1, night2)).collect())
    assert moved <= changed
    return Increment(changed=spark.createDataFrame([(i,) for i in sorted(changed)], "item_id string"),
                     previous=previous, moved=moved)


def assert_increment_rebuilds(spark, config: dict, night1: dict, night2: dict, changed: set[str]) -> dict:
    """Night-2's incremental rows applied to night-1's tables equal night-2 computed whole, for every derived table.

    Returns each table's number of lists recomputed.
    """
    before = whole(spark, config, night1, "night-1")
    after = whole(spark, config, night2, "night-2")

    state, catalog = frames(spark, night2)
    previous = {name: spark.createDataFrame(pdf, table.spark_schema) for name, (table, pdf) in before.items()}
    increment = increment_for(spark, night1, night2, changed, previous)
    parts = [part.materialised() for part in derived_tables(
        spark, config, state=state, catalog=catalog, classes=list(CATEGORIES), run_id="night-2", catalog_version=1,
        increment=increment,
    )]
    try:
        for part in parts:
            name = part.table.name
            assert part.incremental
            merged = applied(before[name][1], part.rows.toPandas(), PUBLISHED_KEYS[name])
            result = spark.createDataFrame(merged, part.table.spark_schema) if merged else previous[name].limit(0)
            expected = spark.createDataFrame(after[name][1], part.table.spark_schema)
            assertDataFrameEqual(result.drop("run_id"), expected.drop("run_id"), atol=1e-6)
        return {part.table.name: part.lists_recomputed for part in parts}
    finally:
        for part in parts:
            part.release()


def test_price_stock_and_brand_changes_reach_no_cross_category_list(spark):
    """Cross-category lists rank by embeddings and categories only: a night of other changes stages none of their rows.

    The same night's cheaper and display lists do change, and still equal a full rebuild.
    """
    rng = np.random.default_rng(7)
    night1 = night_one(rng, 60)
    night2 = {key: dict(value) for key, value in night1.items()}
    ids = sorted(night2)
    for item_id in ids[:4]:
        night2[item_id]["price"] = night2[item_id]["price"] * 1.5 + 1.0
        night2[item_id]["price_band"] = _band(night2[item_id]["price"])
    night2[ids[4]]["in_stock"] = not night2[ids[4]]["in_stock"]
    night2[ids[5]]["brand"] = "Dee"
    night2[ids[6]]["confidence"] = 0.5  # a classifier output: in the embeddings row, not in any list
    recomputed = assert_increment_rebuilds(spark, config_for("band"), night1, night2, set(ids[:7]))
    assert recomputed[CROSS_CATEGORY_ITEMS.name] == 0
    assert recomputed["cheaper_alternatives"] > 0 and recomputed[DISPLAY_LOOKALIKES.name] > 0


def test_an_item_whose_stock_flips_leaves_and_reenters_display_lists(spark):
    """Stock is not in ``embeddings``: only the catalog says it changed, and the lists must follow."""
    rng = np.random.default_rng(5)
    night1 = night_one(rng, 60)
    config = config_for("band")
    before = whole(spark, config, night1, "night-1")
    shown = before[DISPLAY_LOOKALIKES.name][1]
    item_id = shown["neighbour_id"].value_counts().index[0]  # the item shown on the most pages
    night2 = {key: dict(value) for key, value in night1.items()}
    night2[item_id]["in_stock"] = False
    state, catalog = frames(spark, night2)
    previous = {name: spark.createDataFrame(pdf, table.spark_schema) for name, (table, pdf) in before.items()}
    increment = Increment(changed=spark.createDataFrame([(item_id,)], "item_id string"), previous=previous)
    parts = {p.table.name: p.materialised() for p in derived_tables(
        spark, config, state=state, catalog=catalog, classes=list(CATEGORIES), run_id="night-2", catalog_version=1,
        increment=increment,
    )}
    try:
        display = parts[DISPLAY_LOOKALIKES.name]
        merged = applied(shown, display.rows.toPandas(), PUBLISHED_KEYS[DISPLAY_LOOKALIKES.name])
        assert item_id not in {row["neighbour_id"] for row in merged}
        # The lists that showed it, and its own: no list it was not in can change.
        assert display.lists_recomputed == shown.loc[shown["neighbour_id"] == item_id, "item_id"].nunique() + 1
        rebuilt = whole(spark, config, night2, "night-2")[DISPLAY_LOOKALIKES.name][1]
        assertDataFrameEqual(
            spark.createDataFrame(merged, DISPLAY_LOOKALIKES.spark_schema).drop("run_id"),
            spark.createDataFrame(rebuilt, DISPLAY_LOOKALIKES.spark_schema).drop("run_id"),
        )
    finally:
        for part in parts.values():
            part.release()


def test_a_night_with_nothing_changed_stages_no_row_and_recomputes_no_list(spark):
    """No changed id: every derived table stages no row, and no list is recomputed."""
    rng = np.random.default_rng(6)
    night1 = night_one(rng, 40)
    config = config_for("band")
    before = whole(spark, config, night1, "night-1")
    state, catalog = frames(spark, night1)
    previous = {name: spark.createDataFrame(pdf, table.spark_schema) for name, (table, pdf) in before.items()}
    increment = Increment(changed=spark.createDataFrame([], "item_id string"), previous=previous)
    parts = [p.materialised() for p in derived_tables(
        spark, config, state=state, catalog=catalog, classes=list(CATEGORIES), run_id="night-2", catalog_version=1,
        increment=increment,
    )]
    try:
        assert {p.table.name for p in parts} == set(before)
        for part in parts:
            assert part.incremental
            assert part.rows.columns == [*part.table.column_names, DELETE_FLAG]
            assertDataFrameEqual(part.rows, spark.createDataFrame([], part.rows.schema))
        assert {p.table.name: p.lists_recomputed for p in parts} == {
            "cheaper_alternatives": 0, "cross_category_items": 0, "display_lookalikes": 0, "misclassified_items": None,
        }
    finally:
        for part in parts:
            part.release()
