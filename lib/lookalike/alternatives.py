"""Lists derived from the embeddings: cheaper look-alikes, look-alikes in other categories, the
lists a product page shows (the shop's rules applied, filled to k), and items whose photo the
classifier puts in another category than the catalog does.

A first build computes them whole (exact search, like the index). A refresh given an
``Increment`` recomputes only the lists a changed item can affect: the lists of changed items,
every list holding a changed or deleted item, and every list a changed item now enters (its
ranking key reaches the list's last key, or the list was short). Only those that differ are
merged, so the change feed holds real changes only, and the tables equal a full rebuild's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.neighbours import best_per_row, bounded_block_rows, top_k_allowed
from lookalike.scoring import DELETE_FLAG
from lookalike.tables import conform
from schemas import CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES, MISCLASSIFIED_ITEMS, TableSchema

log = logging.getLogger(__name__)

# Per-item columns an incremental run adds to the rows the list functions read.
CHANGED = "_changed"                  # the item changed tonight: it may enter lists it was not in
MUST_RECOMPUTE = "_must"              # its list is recomputed: the item changed, or its list holds a changed item
PREVIOUS_LENGTH = "_previous_length"  # rows of its published list
LAST_KEY = "_last_key"                # ranking key of the last row of its published list
PREVIOUS_LIST = "_previous_list"      # its published list rows (content columns, by rank)
# Columns that say which run wrote a list row, not what the list is.
_NOT_CONTENT = ("item_id", "run_id", "catalog_version")
# Published scores are float32: a changed item whose key is this close below a list's last key
# is treated as entering it (a recompute too many, never one too few).
KEY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Increment:
    """What an incremental run recomputes the derived tables from.

    Parameters
    ----------
    changed : DataFrame
        ``item_id`` of every item whose embeddings row or catalog row changed since the
        published run, deleted items included, each once (a small local frame: it is broadcast).
    previous : Mapping[str, DataFrame]
        The published content of every derived table, by table name.
    """

    changed: DataFrame
    previous: Mapping[str, DataFrame]


@dataclass(frozen=True)
class DerivedRows:
    """A derived table's rows for this run.

    ``incremental`` false: ``rows`` is the table's whole content. True: ``rows`` holds only what
    changes, with the ``_delete`` column (true: remove the row), for ``publish.apply_changes``;
    call ``materialised()`` before merging them, and ``release()`` once merged.
    """

    table: TableSchema
    rows: DataFrame
    incremental: bool
    lists_recomputed: int | None = None
    cached: DataFrame | None = None
    counter: Any = None

    def materialised(self) -> "DerivedRows":
        """These rows cached and counted, with ``lists_recomputed`` read; whole tables are returned as they are.

        The MERGE reads its source twice, and each reading would run the Python lists again.
        """
        if not self.incremental or self.cached is not None:
            return self
        rows = self.rows.persist()
        rows.count()
        recomputed = None if self.counter is None else int(self.counter.value)
        return replace(self, rows=rows, cached=rows, lists_recomputed=recomputed)

    def release(self) -> None:
        """Drop the cached rows (once they are merged)."""
        if self.cached is not None:
            self.cached.unpersist()


def _ranks(query_rows: np.ndarray) -> np.ndarray:
    """1, 2, ... within each run of equal query rows (the pairs come grouped by query, best first)."""
    counts = np.bincount(query_rows) if len(query_rows) else np.zeros(0, dtype=np.int64)
    counts = counts[counts > 0]
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return (np.arange(len(query_rows)) - starts + 1).astype(np.int32)


def _scored_lineage(
    group: pd.DataFrame, queries: np.ndarray, scores: np.ndarray, run_id: str, catalog_version: int
) -> dict[str, Any]:
    """The score and lineage columns of list rows, the model version being the query item's."""
    return {
        "score": scores,
        "model_version": group["model_version"].to_numpy()[queries],
        "run_id": run_id,
        "catalog_version": catalog_version,
    }


def _buyable(group: pd.DataFrame, in_stock_only: bool) -> np.ndarray:
    """Items a list may show: an unknown stock state (null) counts as in stock, only a known false excludes."""
    return ~group["in_stock"].eq(False).to_numpy() if in_stock_only else np.ones(len(group), dtype=bool)


def _best_keys(
    rows: np.ndarray, entrants: np.ndarray, key: Callable[[np.ndarray, np.ndarray], np.ndarray], block_rows: int
) -> np.ndarray:
    """For each query row, the best ranking key among the entrant candidates it may list (-inf if none)."""
    best = np.full(len(rows), -np.inf)
    if len(entrants) == 0:
        return best
    step = bounded_block_rows(block_rows, len(entrants))
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        best[start : start + len(block)] = key(block, entrants).max(axis=1)
    return best


def _wanted_rows(group: pd.DataFrame, k: int, best_entrant_keys: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Rows of a group whose list is (re)computed.

    Every row without the incremental columns. With them: the rows that must, plus each row a
    changed item may now enter: its best allowed entrant reaches the row's previous last key,
    or the previous list was shorter than ``k`` (the list of an item that never had one counts
    as empty). A row none of whose candidates changed and that no changed item enters keeps its
    list: removing candidates it did not list, or adding ones that rank below its last, changes nothing.
    """
    n = len(group)
    if MUST_RECOMPUTE not in group:
        return np.arange(n)
    wanted = group[MUST_RECOMPUTE].eq(True).to_numpy()
    rest = np.flatnonzero(~wanted)
    best = best_entrant_keys(rest)
    length = group[PREVIOUS_LENGTH].fillna(0).to_numpy()[rest]
    last = group[LAST_KEY].to_numpy(dtype=np.float64, na_value=np.inf)[rest]
    enters = np.isfinite(best) & ((length < k) | (best >= last - KEY_TOLERANCE))
    wanted[rest[enters]] = True
    return np.flatnonzero(wanted)


def _entrants(group: pd.DataFrame) -> np.ndarray:
    """Rows of a group whose item changed tonight (none without the incremental columns: every list is computed)."""
    return np.flatnonzero(group[CHANGED].eq(True).to_numpy()) if CHANGED in group else np.zeros(0, dtype=np.int64)


def _empty(table: TableSchema) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=object) for name in table.column_names})


def _list_changes(
    group: pd.DataFrame, lists: pd.DataFrame, wanted: np.ndarray, table: TableSchema, run_id: str, catalog_version: int
) -> pd.DataFrame:
    """The rows that turn the published lists of the recomputed rows into their new lists.

    A new list is kept whole, and only if it differs from the published one (lineage aside), so
    every row of a list carries the lineage of the run that last changed it; published ranks past
    the new list's end come back with ``_delete`` true. Compared column by column over all the
    group's lists at once (a published float32 score equals its recomputed float32 exactly).
    """
    content = [c for c in table.column_names if c not in _NOT_CONTENT]
    published = group[PREVIOUS_LIST].to_numpy()[wanted]
    lengths = [0 if rows is None else len(rows) for rows in published]
    old = pd.DataFrame.from_records(
        [row for rows in published if rows is not None for row in rows], columns=content
    )
    old["item_id"] = np.repeat(group["item_id"].to_numpy()[wanted], lengths)
    new = lists[["item_id", *content]]
    keys = ["item_id", "rank"]
    both = new.astype({"rank": np.int64}).merge(
        old.astype({"rank": np.int64}), on=keys, how="outer", suffixes=("", "_old"), indicator=True
    )
    same = both["_merge"].eq("both").to_numpy()
    for column in content:
        if column != "rank":
            a, b = both[column], both[f"{column}_old"]
            same &= ((a == b) | (a.isna() & b.isna())).to_numpy()
    differs = pd.unique(both.loc[~same, "item_id"])
    out = lists[lists["item_id"].isin(differs)].assign(**{DELETE_FLAG: False})
    stale = old[old["item_id"].isin(differs)].merge(new[keys].astype({"rank": old["rank"].dtype}), on=keys, how="left",
                                                    indicator=True)
    stale = stale[stale["_merge"].eq("left_only")].drop(columns="_merge")
    if len(stale):
        stale = stale.assign(run_id=run_id, catalog_version=catalog_version, **{DELETE_FLAG: True})
        out = pd.concat([out, stale[out.columns]], ignore_index=True)
    return out


def _finisher(
    table: TableSchema, run_id: str, catalog_version: int, counter: Any
) -> Callable[[pd.DataFrame, pd.DataFrame, np.ndarray], pd.DataFrame]:
    """What a list function returns for a group: every list (full runs), or only the changes (incremental runs)."""
    def finish(group: pd.DataFrame, lists: pd.DataFrame, wanted: np.ndarray) -> pd.DataFrame:
        if PREVIOUS_LIST not in group:
            return lists
        if counter is not None:
            counter.add(len(wanted))
        return _list_changes(group, lists, wanted, table, run_id, catalog_version)

    return finish


def _output_schema(table: TableSchema, incremental: bool) -> Any:
    schema = table.spark_schema
    return schema.add(DELETE_FLAG, "boolean", nullable=False) if incremental else schema


def _untouched(group: pd.DataFrame) -> bool:
    """An incremental group with no changed item and no list to recompute: nothing to do."""
    return MUST_RECOMPUTE in group and not (group[MUST_RECOMPUTE].eq(True).any() or group[CHANGED].eq(True).any())


def _cheaper_lists(
    k: int, in_stock_only: bool, max_discount_pct: float, block_rows: int, run_id: str, catalog_version: int,
    finish: Callable[[pd.DataFrame, pd.DataFrame, np.ndarray], pd.DataFrame],
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per category: each item's top-k among the items of the category priced below it (at most ``max_discount_pct`` below, if > 0)."""
    def cheaper(group: pd.DataFrame) -> pd.DataFrame:
        if _untouched(group):
            return finish(group, _empty(CHEAPER_ALTERNATIVES), np.zeros(0, dtype=np.int64))
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        vectors = np.stack(group["embedding"].to_numpy()).astype(np.float64)
        price = group["price"].to_numpy(dtype=np.float64)
        buyable = _buyable(group, in_stock_only)
        floor = price * (1.0 - max_discount_pct / 100.0) if max_discount_pct > 0 else np.full(len(group), -np.inf)

        def allowed(rows: np.ndarray, cols: Any = slice(None)) -> np.ndarray:
            candidate = price[None, cols]
            return (candidate < price[rows, None]) & (candidate >= floor[rows, None]) & buyable[None, cols]

        def key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.where(allowed(rows, cols), vectors[rows] @ vectors[cols].T, -np.inf)

        entrants = _entrants(group)
        wanted = _wanted_rows(group, k, lambda rows: _best_keys(rows, entrants, key, block_rows))
        queries, found, scores = top_k_allowed(
            vectors[wanted], vectors, k, lambda block: allowed(wanted[block]), block_rows=block_rows
        )
        queries = wanted[queries]
        lists = pd.DataFrame(
            {
                "category": group["category"].to_numpy()[queries],
                "item_id": group["item_id"].to_numpy()[queries],
                "item_price": price[queries],
                "rank": _ranks(queries),
                "alternative_id": group["item_id"].to_numpy()[found],
                "alternative_price": price[found],
                "alternative_price_band": group["price_band"].to_numpy()[found],
                **_scored_lineage(group, queries, scores, run_id, catalog_version),
            }
        )
        return finish(group, lists, wanted)

    return cheaper


def _cross_category_lists(
    k: int, candidates: Any, block_rows: int, run_id: str, catalog_version: int,
    finish: Callable[[pd.DataFrame, pd.DataFrame, np.ndarray], pd.DataFrame],
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per category: each item's top-k among every item of the other categories (``candidates`` is broadcast)."""
    def cross(group: pd.DataFrame) -> pd.DataFrame:
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        ids, categories, prices, vectors, changed = candidates.value
        category = group["category"].iloc[0]
        other = categories != category
        queries_vectors = np.stack(group["embedding"].to_numpy()).astype(np.float64)

        def allowed(rows: np.ndarray) -> np.ndarray:
            return np.broadcast_to(other, (len(rows), len(other)))

        def key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.where(other[None, cols], queries_vectors[rows] @ vectors[cols].T.astype(np.float64), -np.inf)

        entrants = np.flatnonzero(changed)
        wanted = _wanted_rows(group, k, lambda rows: _best_keys(rows, entrants, key, block_rows))
        queries, found, scores = top_k_allowed(
            queries_vectors[wanted], vectors, k, lambda block: allowed(wanted[block]), block_rows=block_rows
        )
        queries = wanted[queries]
        lists = pd.DataFrame(
            {
                "category": category,
                "item_id": group["item_id"].to_numpy()[queries],
                "rank": _ranks(queries),
                "neighbour_id": ids[found],
                "neighbour_category": categories[found],
                "neighbour_price": prices[found],
                **_scored_lineage(group, queries, scores, run_id, catalog_version),
            }
        )
        return finish(group, lists, wanted)

    return cross


def cheaper_alternatives(
    state: DataFrame, catalog: DataFrame, *, k: int, in_stock_only: bool, block_rows: int, run_id: str,
    catalog_version: int, max_discount_pct: float = 0.0, increment: Increment | None = None, recomputed: Any = None,
) -> DataFrame:
    """For every item, the ``k`` most similar items of its category that cost less, computed per category in parallel.

    Parameters
    ----------
    state : DataFrame
        The run's ``embeddings`` rows.
    catalog : DataFrame
        ``catalog`` at the version the embeddings were computed from (for ``in_stock``).
    k : int
        Longest list; shorter when fewer cheaper items qualify (the cheapest item has none).
    in_stock_only : bool
        List only items not known to be out of stock.
    block_rows : int
        Query rows per BLAS block.
    run_id : str
        Recorded on every row.
    catalog_version : int
        Recorded on every row.
    max_discount_pct : float
        Relative-price mode when above 0: only alternatives priced at least ``price x (1 - pct / 100)``,
        i.e. within ``-pct`` % of the item's price; 0 lists any lower price.
    increment : Increment, optional
        Compute only the lists tonight's changes can affect (see the module docstring) and return
        only what changes (``_delete`` column added); default every list.
    recomputed : Accumulator, optional
        Incremental runs add the number of lists they recompute (a figure: a retried task adds twice).

    Returns
    -------
    DataFrame
        In the ``cheaper_alternatives`` schema.
    """
    if not 0.0 <= max_discount_pct < 100.0:
        raise ValueError(f"alternatives.cheaper_max_discount_pct must be in [0, 100), not {max_discount_pct}")
    rows = state.select("category", "item_id", "embedding", "price", "price_band", "model_version").join(
        catalog.select("item_id", "in_stock"), "item_id", "left"
    )
    if increment is not None:
        rows = _with_increment(rows, increment, CHEAPER_ALTERNATIVES, neighbour="alternative_id", last_key=F.col("score"))
    finish = _finisher(CHEAPER_ALTERNATIVES, run_id, catalog_version, recomputed)
    lists = rows.groupBy("category").applyInPandas(
        _cheaper_lists(k, in_stock_only, max_discount_pct, block_rows, run_id, catalog_version, finish),
        _output_schema(CHEAPER_ALTERNATIVES, increment is not None),
    )
    return _conformed(lists, CHEAPER_ALTERNATIVES, increment is not None)


def cross_category_items(
    spark: SparkSession, state: DataFrame, *, k: int, block_rows: int, run_id: str, catalog_version: int,
    increment: Increment | None = None, recomputed: Any = None,
) -> DataFrame:
    """For every item, the ``k`` most similar items of the other categories.

    Every category's items are compared with the whole catalog, which is broadcast to the
    executors (item id, category, price and embedding: about ``items x (dim x 4 + 64)`` bytes).

    Parameters
    ----------
    spark : SparkSession
    state : DataFrame
        The run's ``embeddings`` rows.
    k, block_rows : int
        List length, and query rows per BLAS block.
    run_id : str
        Recorded on every row.
    catalog_version : int
        Recorded on every row.
    increment : Increment, optional
        Compute only the lists tonight's changes can affect (see the module docstring) and return
        only what changes (``_delete`` column added); default every list.
    recomputed : Accumulator, optional
        Incremental runs add the number of lists they recompute (a figure: a retried task adds twice).

    Returns
    -------
    DataFrame
        In the ``cross_category_items`` schema.
    """
    rows = state.select("category", "item_id", "embedding", "model_version", "price")
    if increment is not None:
        rows = _with_increment(rows, increment, CROSS_CATEGORY_ITEMS, neighbour="neighbour_id", last_key=F.col("score"))
    changed = F.coalesce(F.col(CHANGED), F.lit(False)) if increment is not None else F.lit(False)
    columns = rows.select("item_id", "category", "price", "embedding", changed.alias(CHANGED)).orderBy("item_id").toPandas()
    vectors = (
        np.stack(columns["embedding"].to_numpy()).astype(np.float32) if len(columns) else np.zeros((0, 0), np.float32)
    )
    candidates = spark.sparkContext.broadcast((
        columns["item_id"].to_numpy(), columns["category"].to_numpy(), columns["price"].to_numpy(np.float64),
        vectors, columns[CHANGED].to_numpy(dtype=bool),
    ))
    finish = _finisher(CROSS_CATEGORY_ITEMS, run_id, catalog_version, recomputed)
    lists = rows.drop("price").groupBy("category").applyInPandas(
        _cross_category_lists(k, candidates, block_rows, run_id, catalog_version, finish),
        _output_schema(CROSS_CATEGORY_ITEMS, increment is not None),
    )
    return _conformed(lists, CROSS_CATEGORY_ITEMS, increment is not None)


def _conformed(lists: DataFrame, table: TableSchema, incremental: bool) -> DataFrame:
    """``lists`` cast to the table's schema, keeping ``_delete`` in incremental runs."""
    if not incremental:
        return conform(lists, table)
    return lists.select(*[lists[c.name].cast(c.data_type).alias(c.name) for c in table.columns], DELETE_FLAG)


def _with_increment(
    rows: DataFrame, increment: Increment, table: TableSchema, *, neighbour: str, last_key: Column
) -> DataFrame:
    """``rows`` with the incremental columns for ``table``'s lists.

    ``_changed``: the item changed. ``_must``: it changed, or its published list holds an item that
    changed (or was deleted). ``_previous_length`` and ``_last_key``: its published list's length
    and the ranking key (``last_key``, over the published rows) of its last row.
    ``_previous_list``: the published list's rows (content columns, by rank), to compare with.
    """
    previous = increment.previous[table.name]
    changed = increment.changed.select("item_id")
    holding = previous.join(changed.withColumnRenamed("item_id", neighbour), neighbour, "left_semi").select("item_id")
    must = changed.unionByName(holding).distinct().withColumn(MUST_RECOMPUTE, F.lit(True))
    content = [c for c in table.column_names if c not in _NOT_CONTENT]  # rank first: sorted by rank
    last = previous.groupBy("item_id").agg(
        F.count("*").alias(PREVIOUS_LENGTH), F.max_by(last_key, "rank").cast("double").alias(LAST_KEY),
        F.sort_array(F.collect_list(F.struct("rank", *[c for c in content if c != "rank"]))).alias(PREVIOUS_LIST),
    )
    return (
        rows.join(changed.withColumn(CHANGED, F.lit(True)), "item_id", "left")
        .join(must, "item_id", "left")
        .join(last, "item_id", "left")
    )


# fill_source of each tier (0 = the item's own partition), by display.price_window.
_TIER_NAMES = {
    "band": ("same_band", "neighbouring_band", "category"),
    "relative": ("price_window", "wider_price_window", "category"),
}
# Scores are in [-1, 1]: subtracting this per tier ranks every candidate of a nearer tier first.
_TIER_GAP = 4.0


@dataclass(frozen=True)
class DisplayRules:
    """The shop's rules for ``display_lookalikes`` (config section ``display``).

    Parameters
    ----------
    k : int
        Look-alikes per item, guaranteed whenever the category holds that many that pass the rules.
    price_window : str
        ``band``: the item's price band first, then the neighbouring bands; ``relative``: items within
        ``relative_price_pct`` % of its price first, then within twice that.
    relative_price_pct : float
        Width of the relative price window, in percent of the item's price.
    exclude_out_of_stock : bool
        Leave out items known to be out of stock (an unknown stock state counts as in stock).
    duplicate_score : float
        A candidate scoring at least this with the item or with a look-alike already listed is a
        near-duplicate photo and is left out; one with the same photo hash always is.
    max_per_brand : int
        Most look-alikes of one brand per list; 0 for no cap. Items without a brand are not capped.
    fill : bool
        Fill a list shorter than ``k`` from the neighbouring bands (or wider window), then the rest of the category.
    """

    k: int
    price_window: str = "band"
    relative_price_pct: float = 20.0
    exclude_out_of_stock: bool = True
    duplicate_score: float = 0.99
    max_per_brand: int = 0
    fill: bool = True

    def __post_init__(self) -> None:
        problems = [
            text for bad, text in (
                (self.k < 1, f"k must be at least 1, not {self.k}"),
                (self.price_window not in _TIER_NAMES, f"price_window must be one of {sorted(_TIER_NAMES)}, not {self.price_window!r}"),
                (not self.relative_price_pct > 0, f"relative_price_pct must be above 0, not {self.relative_price_pct}"),
                (not 0 < self.duplicate_score, f"duplicate_score must be above 0, not {self.duplicate_score}"),
                (self.max_per_brand < 0, f"max_per_brand must be 0 (no cap) or more, not {self.max_per_brand}"),
            ) if bad
        ]
        if problems:
            raise ValueError("display settings: " + "; ".join(problems))

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> "DisplayRules":
        """The rules of a config's ``display`` section."""
        return cls(
            k=int(settings["k"]), price_window=str(settings["price_window"]),
            relative_price_pct=float(settings["relative_price_pct"]),
            exclude_out_of_stock=bool(settings["exclude_out_of_stock"]),
            duplicate_score=float(settings["duplicate_score"]), max_per_brand=int(settings["max_per_brand"]),
            fill=bool(settings["fill"]),
        )


def _tiers(price: np.ndarray, band: np.ndarray, rules: DisplayRules, rows: np.ndarray, cols: Any = slice(None)) -> np.ndarray:
    """``(rows, cols)`` tier of each candidate for each query row: 0 own partition, 1 next to it, 2 rest of the category."""
    if rules.price_window == "band":
        return np.minimum(np.abs(band[None, cols] - band[rows, None]), 2).astype(np.int8)
    window = price[rows, None] * (rules.relative_price_pct / 100.0)
    distance = np.abs(price[None, cols] - price[rows, None])
    return np.where(distance <= window, 0, np.where(distance <= 2 * window, 1, 2)).astype(np.int8)


def _pick(
    order: np.ndarray, vectors: np.ndarray, hashes: np.ndarray, brands: np.ndarray, rules: DisplayRules
) -> list[int]:
    """Walk candidates best first and keep those the duplicate and brand rules allow, up to ``k``."""
    chosen: list[int] = []
    hashes_shown: set[str] = set()
    per_brand: dict[str, int] = {}
    for j in order:
        brand = brands[j]
        if rules.max_per_brand and brand is not None and per_brand.get(brand, 0) >= rules.max_per_brand:
            continue
        if hashes[j] in hashes_shown:
            continue
        if chosen and float(np.max(vectors[chosen] @ vectors[j])) >= rules.duplicate_score:
            continue
        chosen.append(int(j))
        hashes_shown.add(hashes[j])
        if brand is not None:
            per_brand[brand] = per_brand.get(brand, 0) + 1
        if len(chosen) == rules.k:
            break
    return chosen


def _display_lists(
    rules: DisplayRules, block_rows: int, run_id: str, catalog_version: int,
    finish: Callable[[pd.DataFrame, pd.DataFrame, np.ndarray], pd.DataFrame],
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per category: each item's look-alikes under the shop's rules, nearer tiers first."""
    names = np.array(_TIER_NAMES[rules.price_window])
    last_tier = 2 if rules.fill else 0
    # Candidates looked at before falling back to the whole category: room for duplicates and capped brands.
    pool = 4 * rules.k + 16

    def display(group: pd.DataFrame) -> pd.DataFrame:
        if _untouched(group):
            return finish(group, _empty(DISPLAY_LOOKALIKES), np.zeros(0, dtype=np.int64))
        group = group.sort_values("item_id", kind="stable").reset_index(drop=True)
        n = len(group)
        vectors = np.stack(group["embedding"].to_numpy()).astype(np.float64)
        price = group["price"].to_numpy(dtype=np.float64)
        band = group["price_band"].to_numpy(dtype=np.int64)
        hashes = group["image_hash"].to_numpy()
        brands = np.array([b.strip() or None if isinstance(b, str) else None for b in group["brand"]], dtype=object)
        buyable = _buyable(group, rules.exclude_out_of_stock)

        def entry_key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            # The walk's key, with only the rules that do not depend on the list (a superset of who may enter).
            tier = _tiers(price, band, rules, rows, cols)
            allowed = (tier <= last_tier) & buyable[None, cols] & (cols[None, :] != rows[:, None])
            return np.where(allowed, vectors[rows] @ vectors[cols].T - _TIER_GAP * tier, -np.inf)

        entrants = _entrants(group)
        wanted = _wanted_rows(group, rules.k, lambda rows: _best_keys(rows, entrants, entry_key, block_rows))
        queries, found, tiers = [], [], []
        step = bounded_block_rows(block_rows, n)
        for start in range(0, len(wanted), step):
            block = wanted[start : start + step]
            sims = vectors[block] @ vectors.T
            tier = _tiers(price, band, rules, block)
            allowed = (
                (tier <= last_tier) & buyable[None, :] & (hashes[None, :] != hashes[block, None])
                & (sims < rules.duplicate_score)
            )
            allowed[np.arange(len(block)), block] = False
            key = np.where(allowed, sims - _TIER_GAP * tier, -np.inf)
            head, head_keys = best_per_row(key, min(pool, n))
            for r in range(len(block)):
                order = head[r][np.isfinite(head_keys[r])]
                chosen = _pick(order, vectors, hashes, brands, rules)
                if len(chosen) < rules.k and len(order) == pool:
                    # The pool ran out before the list was full: walk the whole category (same order).
                    full = np.argsort(-key[r], kind="stable")
                    chosen = _pick(full[np.isfinite(key[r][full])], vectors, hashes, brands, rules)
                queries += [int(block[r])] * len(chosen)
                found += chosen
                tiers += tier[r, chosen].tolist()
        query_rows, found_rows = np.array(queries, dtype=np.int64), np.array(found, dtype=np.int64)
        scores = np.einsum("ij,ij->i", vectors[query_rows], vectors[found_rows]) if len(found_rows) else np.zeros(0)
        lists = pd.DataFrame(
            {
                "category": group["category"].to_numpy()[query_rows],
                "price_band": band[query_rows].astype(np.int32),
                "item_id": group["item_id"].to_numpy()[query_rows],
                "rank": _ranks(query_rows),
                "neighbour_id": group["item_id"].to_numpy()[found_rows],
                "neighbour_price": price[found_rows],
                "neighbour_price_band": band[found_rows].astype(np.int32),
                "neighbour_brand": brands[found_rows],
                "fill_source": names[np.array(tiers, dtype=np.int64)],
                **_scored_lineage(group, query_rows, scores.astype(np.float32), run_id, catalog_version),
            }
        )
        return finish(group, lists, wanted)

    return display


def display_lookalikes(
    state: DataFrame, catalog: DataFrame, *, rules: DisplayRules, block_rows: int, run_id: str, catalog_version: int,
    increment: Increment | None = None, recomputed: Any = None,
) -> DataFrame:
    """For every item, the look-alikes a product page shows: the shop's rules applied, filled to ``k``.

    Candidates are the other items of the category, ranked by tier (own price band or window, then
    the neighbouring bands or twice the window, then the rest of the category; the later tiers only
    with ``rules.fill``), then by cosine score, ties to the lower item id. Walking that order, an
    item is left out if it is known to be out of stock, if its photo has the same hash as the item's
    or as a look-alike already listed or scores at least ``rules.duplicate_score`` with one of them,
    or if its brand already has ``rules.max_per_brand`` look-alikes; the first ``k`` others are
    listed, each marked with the tier it came from. A list is shorter than ``k`` only when the
    category holds too few items that pass.

    Parameters
    ----------
    state : DataFrame
        The run's ``embeddings`` rows.
    catalog : DataFrame
        ``catalog`` at the version the embeddings were computed from (``brand``, ``in_stock``).
    rules : DisplayRules
    block_rows : int
        Query rows per BLAS block.
    run_id, catalog_version
        Recorded on every row.
    increment : Increment, optional
        Compute only the lists tonight's changes can affect (see the module docstring) and return
        only what changes (``_delete`` column added); default every list.
    recomputed : Accumulator, optional
        Incremental runs add the number of lists they recompute (a figure: a retried task adds twice).

    Returns
    -------
    DataFrame
        In the ``display_lookalikes`` schema.
    """
    rows = state.select(
        "category", "item_id", "embedding", "price", "price_band", "image_hash", "model_version"
    ).join(catalog.select("item_id", "brand", "in_stock"), "item_id", "left")
    if increment is not None:
        names = _TIER_NAMES[rules.price_window]
        tier = F.when(F.col("fill_source") == names[0], 0).when(F.col("fill_source") == names[1], 1).otherwise(2)
        rows = _with_increment(
            rows, increment, DISPLAY_LOOKALIKES, neighbour="neighbour_id", last_key=F.col("score") - _TIER_GAP * tier
        )
    finish = _finisher(DISPLAY_LOOKALIKES, run_id, catalog_version, recomputed)
    lists = rows.groupBy("category").applyInPandas(
        _display_lists(rules, block_rows, run_id, catalog_version, finish),
        _output_schema(DISPLAY_LOOKALIKES, increment is not None),
    )
    return _conformed(lists, DISPLAY_LOOKALIKES, increment is not None)


def misclassified_items(state: DataFrame, *, classes: Sequence[str], run_id: str, catalog_version: int) -> DataFrame:
    """Items whose given category is one of the classifier's ``classes`` but not its prediction.

    Items given a category the classifier never learnt (too few labelled items) cannot be
    judged and are left out.

    Returns
    -------
    DataFrame
        In the ``misclassified_items`` schema.
    """
    rows = state.where(
        F.col("given_category").isin(list(classes)) & (F.col("given_category") != F.col("predicted_category"))
    ).withColumn("run_id", F.lit(run_id)).withColumn("catalog_version", F.lit(catalog_version))
    return conform(rows, MISCLASSIFIED_ITEMS)


def misclassified_changes(
    state: DataFrame, *, classes: Sequence[str], run_id: str, catalog_version: int, increment: Increment
) -> DataFrame:
    """The ``misclassified_items`` rows of the changed items that differ from the published ones, and deletions.

    Returns
    -------
    DataFrame
        The table's columns plus ``_delete`` (true: the item is no longer listed).
    """
    previous = increment.previous[MISCLASSIFIED_ITEMS.name]
    changed = increment.changed.select("item_id")
    new = misclassified_items(state.join(changed, "item_id", "left_semi"), classes=classes, run_id=run_id,
                              catalog_version=catalog_version)
    content = [c for c in MISCLASSIFIED_ITEMS.column_names if c not in ("run_id", "catalog_version")]
    upserts = new.join(previous.select(*content), content, "left_anti").withColumn(DELETE_FLAG, F.lit(False))
    gone = previous.join(changed, "item_id", "left_semi").join(new.select("item_id"), "item_id", "left_anti")
    return upserts.unionByName(gone.withColumn(DELETE_FLAG, F.lit(True)))


def derived_tables(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    state: DataFrame,
    catalog: DataFrame,
    classes: Sequence[str],
    run_id: str,
    catalog_version: int,
    increment: Increment | None = None,
) -> list[DerivedRows]:
    """Every derived table of a run, from its embeddings and catalog.

    Parameters
    ----------
    increment : Increment, optional
        Tonight's changed items and the published tables: compute only the lists they can
        affect. Default: every list, whole.

    Returns
    -------
    list of DerivedRows
        Each table's whole content (no ``increment``), or the rows that change (with ``increment``):
        ``DerivedRows.materialised()`` computes and caches the rows that change, ``DerivedRows.release()`` drops them once they are merged.
    """
    settings = config["alternatives"]
    block_rows = int(config["index"]["block_rows"])
    incremental = increment is not None
    counters = {t.name: spark.sparkContext.accumulator(0) if incremental else None
                for t in (CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES)}
    lists = [
        (CHEAPER_ALTERNATIVES, cheaper_alternatives(
            state, catalog, k=int(settings["cheaper_k"]), in_stock_only=bool(settings["cheaper_in_stock_only"]),
            max_discount_pct=float(settings["cheaper_max_discount_pct"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version, increment=increment, recomputed=counters[CHEAPER_ALTERNATIVES.name],
        )),
        (CROSS_CATEGORY_ITEMS, cross_category_items(
            spark, state, k=int(settings["cross_category_k"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version, increment=increment, recomputed=counters[CROSS_CATEGORY_ITEMS.name],
        )),
        (DISPLAY_LOOKALIKES, display_lookalikes(
            state, catalog, rules=DisplayRules.from_config(config["display"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version, increment=increment, recomputed=counters[DISPLAY_LOOKALIKES.name],
        )),
    ]
    if increment is None:
        misclassified = misclassified_items(state, classes=classes, run_id=run_id, catalog_version=catalog_version)
        return [DerivedRows(table, rows, incremental=False) for table, rows in lists] + [
            DerivedRows(MISCLASSIFIED_ITEMS, misclassified, incremental=False)
        ]
    out = []
    # Items gone from the catalog are in no group: their published lists are deleted here.
    gone = increment.changed.select("item_id").join(state.select("item_id"), "item_id", "left_anti")
    for table, rows in lists:
        removed = increment.previous[table.name].join(gone, "item_id", "left_semi").withColumn(DELETE_FLAG, F.lit(True))
        out.append(DerivedRows(table, rows.unionByName(removed), incremental=True, counter=counters[table.name]))
    misclassified = misclassified_changes(
        state, classes=classes, run_id=run_id, catalog_version=catalog_version, increment=increment,
    )
    out.append(DerivedRows(MISCLASSIFIED_ITEMS, misclassified, incremental=True))
    return out

__all__ = [
    "DerivedRows", "DisplayRules", "Increment", "cheaper_alternatives", "cross_category_items", "derived_tables",
    "display_lookalikes", "misclassified_changes", "misclassified_items",
]
