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

import functools
import logging
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
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
GROUP = "_group"                      # the category a published list row is grouped with: its item's current one
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
    moved : frozenset of str, optional
        The changed items whose embedding, category or model version changed, or that are new or
        deleted (see ``moved_items``): a cross-category list is a function of those alone, so a
        price, stock or brand change reaches none. Default: every changed item.
    """

    changed: DataFrame
    previous: Mapping[str, DataFrame]
    moved: frozenset[str] | None = None

    @cached_property
    def changed_ids(self) -> frozenset[str]:
        """The changed item ids, on the driver (they go to the executors with the list functions); collected once."""
        return frozenset(row["item_id"] for row in self.changed.select("item_id").collect())

    @property
    def cross_category_ids(self) -> frozenset[str]:
        """The changed items a cross-category list can see: the ``moved`` ones."""
        return self.changed_ids if self.moved is None else self.moved


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
    group: pd.DataFrame, published: pd.DataFrame, lists: pd.DataFrame, wanted: np.ndarray, table: TableSchema,
    run_id: str, catalog_version: int,
) -> pd.DataFrame:
    """The rows that turn the published lists of the recomputed rows into their new lists.

    A new list is kept whole, and only if it differs from the published one (lineage aside), so
    every row of a list carries the lineage of the run that last changed it; published ranks past
    the new list's end come back with ``_delete`` true. Compared column by column over all the
    group's lists at once (a published float32 score equals its recomputed float32 exactly).
    """
    content = _content(table)
    old = published.loc[published["item_id"].isin(group["item_id"].to_numpy()[wanted]), ["item_id", *content]]
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
    return pd.concat([out, _deletions(stale, out.columns, run_id, catalog_version)], ignore_index=True)


def _content(table: TableSchema) -> list[str]:
    """A list table's columns that say what the list is (rank first)."""
    return [c for c in table.column_names if c not in _NOT_CONTENT]


def _score_key(published: pd.DataFrame) -> np.ndarray:
    """The ranking key of a list ranked by score alone."""
    return published["score"].to_numpy(dtype=np.float64)


def _deletions(rows: pd.DataFrame, columns: Sequence[str], run_id: str, catalog_version: int) -> pd.DataFrame:
    """Published list rows to remove, in the output columns (``_delete`` true)."""
    return rows.assign(run_id=run_id, catalog_version=catalog_version, **{DELETE_FLAG: True}).reindex(columns=columns)


@dataclass(frozen=True)
class _PublishedLists:
    """How a derived list table's published rows are read: the column of the listed item, and each row's ranking key."""

    table: TableSchema
    neighbour: str
    ranking_key: Callable[[pd.DataFrame], np.ndarray]


def _annotated(group: pd.DataFrame, published: pd.DataFrame, changed: frozenset[str], lists: _PublishedLists) -> pd.DataFrame:
    """``group`` with the incremental columns, from its items' published lists and tonight's changed ids.

    ``_changed``: the item changed. ``_must``: it changed, or its published list holds an item that
    changed (or was deleted). ``_previous_length`` and ``_last_key``: its published list's length
    and the ranking key of its last row (missing without a list).
    """
    ids = group["item_id"]
    holding = published.loc[published[lists.neighbour].isin(changed), "item_id"]
    last = published.assign(**{LAST_KEY: lists.ranking_key(published)}).sort_values(["item_id", "rank"]).groupby(
        "item_id", sort=False
    ).agg(length=("rank", "size"), last=(LAST_KEY, "last"))
    return group.assign(**{
        CHANGED: ids.isin(changed).to_numpy(),
        MUST_RECOMPUTE: (ids.isin(changed) | ids.isin(holding)).to_numpy(),
        PREVIOUS_LENGTH: ids.map(last["length"]).to_numpy(dtype=np.float64),
        LAST_KEY: ids.map(last["last"]).to_numpy(dtype=np.float64),
    })


# A list function: a category's rows, sorted by item id, to the lists it computes and the rows they are of.
ListsOf = Callable[[pd.DataFrame], tuple[pd.DataFrame, np.ndarray]]


def _by_item(group: pd.DataFrame) -> pd.DataFrame:
    return group.sort_values("item_id", kind="stable").reset_index(drop=True)


def _lists_per_category(
    rows: DataFrame, lists_of: ListsOf, published: _PublishedLists, *, run_id: str, catalog_version: int,
    increment: Increment | None, categories: DataFrame, recomputed: Any, changed: frozenset[str] | None = None,
) -> DataFrame:
    """``lists_of`` run on each category's rows: every list, or with ``increment`` only the rows that change.

    Incremental runs co-group each category's rows with the published lists of its items (an item
    moved tonight brings its lists to its new category; ``categories`` maps every current item to
    its category), so no list is joined to its item in Spark: the published rows arrive flat.
    Published lists of items no longer in the catalog are deleted in their category's group.
    ``changed``: the changed items this table depends on (default all of ``increment``'s).
    """
    table = published.table
    if increment is None:
        return _conformed(rows.groupBy("category").applyInPandas(lambda group: lists_of(_by_item(group))[0], table.spark_schema),
                          table, incremental=False)
    changed = increment.changed_ids if changed is None else changed
    columns = ["item_id", *_content(table)]
    previous = increment.previous[table.name].select(*columns).join(
        F.broadcast(categories.select("item_id", F.col("category").alias(GROUP))), "item_id", "left"
    ).withColumn(GROUP, F.coalesce(F.col(GROUP), F.col("category")))
    output = list(_output_schema(table, incremental=True).fieldNames())

    def changes(group: pd.DataFrame, published_rows: pd.DataFrame) -> pd.DataFrame:
        out = []
        if len(group):
            group = _annotated(_by_item(group), published_rows, changed, published)
            lists, wanted = lists_of(group)
            if len(wanted):
                if recomputed is not None:
                    recomputed.add(len(wanted))
                out.append(_list_changes(group, published_rows, lists, wanted, table, run_id, catalog_version)[output])
        gone = published_rows[~published_rows["item_id"].isin(group["item_id"])]
        out.append(_deletions(gone, output, run_id, catalog_version))
        return pd.concat(out, ignore_index=True)

    lists = rows.groupBy("category").cogroup(previous.groupBy(GROUP)).applyInPandas(
        changes, _output_schema(table, incremental=True)
    )
    return _conformed(lists, table, incremental=True)


def _output_schema(table: TableSchema, incremental: bool) -> Any:
    schema = table.spark_schema
    return schema.add(DELETE_FLAG, "boolean", nullable=False) if incremental else schema


def _untouched(group: pd.DataFrame) -> bool:
    """An incremental group with no changed item and no list to recompute: nothing to do."""
    return MUST_RECOMPUTE in group and not (group[MUST_RECOMPUTE].eq(True).any() or group[CHANGED].eq(True).any())


def _cheaper_lists(
    k: int, in_stock_only: bool, max_discount_pct: float, block_rows: int, run_id: str, catalog_version: int,
) -> ListsOf:
    """Per category: each item's top-k among the items of the category priced below it (at most ``max_discount_pct`` below, if > 0)."""
    def cheaper(group: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        if _untouched(group):
            return _empty(CHEAPER_ALTERNATIVES), np.zeros(0, dtype=np.int64)
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
        return lists, wanted

    return cheaper


def _cross_category_lists(
    k: int, candidates: Any, block_rows: int, run_id: str, catalog_version: int,
) -> ListsOf:
    """Per category: each item's top-k among every item of the other categories (``candidates`` is broadcast)."""
    def cross(group: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        ids, categories, vectors, changed = candidates.value
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
                **_scored_lineage(group, queries, scores, run_id, catalog_version),
            }
        )
        return lists, wanted

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
    return _lists_per_category(
        rows, _cheaper_lists(k, in_stock_only, max_discount_pct, block_rows, run_id, catalog_version),
        _PublishedLists(CHEAPER_ALTERNATIVES, "alternative_id", _score_key), run_id=run_id,
        catalog_version=catalog_version, increment=increment, categories=state, recomputed=recomputed,
    )


def cross_category_items(
    spark: SparkSession, state: DataFrame, *, k: int, block_rows: int, run_id: str, catalog_version: int,
    increment: Increment | None = None, recomputed: Any = None,
) -> DataFrame:
    """For every item, the ``k`` most similar items of the other categories.

    Every category's items are compared with the whole catalog, which is broadcast to the
    executors (item id, category and embedding: about ``items x (dim x 4 + 56)`` bytes). The rows
    hold no price: a list depends on embeddings and categories only, so a price change rewrites
    none of them (the ``published_cross_category_items`` view joins the neighbour's price in).

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
    rows = state.select("category", "item_id", "embedding", "model_version")
    columns = state.select("item_id", "category", "embedding").orderBy("item_id").toPandas()
    vectors = (
        np.stack(columns["embedding"].to_numpy()).astype(np.float32) if len(columns) else np.zeros((0, 0), np.float32)
    )
    changed = increment.cross_category_ids if increment is not None else frozenset()
    candidates = spark.sparkContext.broadcast((
        columns["item_id"].to_numpy(), columns["category"].to_numpy(), vectors,
        columns["item_id"].isin(changed).to_numpy(dtype=bool),
    ))
    return _lists_per_category(
        rows, _cross_category_lists(k, candidates, block_rows, run_id, catalog_version),
        _PublishedLists(CROSS_CATEGORY_ITEMS, "neighbour_id", _score_key), run_id=run_id,
        catalog_version=catalog_version, increment=increment, categories=state, recomputed=recomputed,
        changed=changed,
    )


def _conformed(lists: DataFrame, table: TableSchema, incremental: bool) -> DataFrame:
    """``lists`` cast to the table's schema, keeping ``_delete`` in incremental runs."""
    if not incremental:
        return conform(lists, table)
    return lists.select(*[lists[c.name].cast(c.data_type).alias(c.name) for c in table.columns], DELETE_FLAG)


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
) -> ListsOf:
    """Per category: each item's look-alikes under the shop's rules, nearer tiers first."""
    names = np.array(_TIER_NAMES[rules.price_window])
    last_tier = 2 if rules.fill else 0
    # Candidates looked at before falling back to the whole category: room for duplicates and capped brands.
    pool = 4 * rules.k + 16

    def display(group: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        if _untouched(group):
            return _empty(DISPLAY_LOOKALIKES), np.zeros(0, dtype=np.int64)
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
        return lists, wanted

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
    names = _TIER_NAMES[rules.price_window]

    def walk_key(published: pd.DataFrame) -> np.ndarray:
        tier = np.select([published["fill_source"] == names[0], published["fill_source"] == names[1]], [0, 1], 2)
        return published["score"].to_numpy(dtype=np.float64) - _TIER_GAP * tier

    return _lists_per_category(
        rows, _display_lists(rules, block_rows, run_id, catalog_version),
        _PublishedLists(DISPLAY_LOOKALIKES, "neighbour_id", walk_key), run_id=run_id,
        catalog_version=catalog_version, increment=increment, categories=state, recomputed=recomputed,
    )


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


# The columns of an embeddings row a cross-category list depends on (with the item's existence).
_CROSS_CATEGORY_INPUTS = ("category", "embedding", "model_version")


def moved_items(previous: DataFrame, changes: DataFrame) -> DataFrame:
    """``item_id`` of the staged embeddings changes a cross-category list can see.

    New and deleted items, and upserted rows whose category, embedding or model version differ
    from the item's ``previous`` row; not those where only the price, price band or classifier
    output changed (the cross-category lists rank by embeddings and categories alone), nor items
    whose catalog row alone changed (stock, brand: they stage no embeddings row).

    Parameters
    ----------
    previous : DataFrame
        The published ``embeddings``.
    changes : DataFrame
        The run's staged changes: ``embeddings`` rows with the ``_delete`` flag.
    """
    staged = changes.where(~F.col(DELETE_FLAG)).select(
        "item_id", *[F.col(c).alias(f"_staged_{c}") for c in _CROSS_CATEGORY_INPUTS]
    )
    same = functools.reduce(
        lambda a, b: a & b, [F.col(c).eqNullSafe(F.col(f"_staged_{c}")) for c in _CROSS_CATEGORY_INPUTS]
    )
    unmoved = previous.join(staged, "item_id").where(same).select("item_id")
    return changes.select("item_id").join(unmoved, "item_id", "left_anti")


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

    def kept(table: TableSchema) -> DerivedRows:
        return DerivedRows(table, spark.createDataFrame([], _output_schema(table, incremental=True)), incremental=True,
                           counter=counters.get(table.name))

    if incremental and not increment.changed_ids:
        # Every list is a function of the items' rows and the settings: none changed, none moves.
        log.info("alternatives: no item changed since the published run: every derived list is kept")
        return [kept(table) for table in (CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES, MISCLASSIFIED_ITEMS)]
    lists = [
        (CHEAPER_ALTERNATIVES, lambda: cheaper_alternatives(
            state, catalog, k=int(settings["cheaper_k"]), in_stock_only=bool(settings["cheaper_in_stock_only"]),
            max_discount_pct=float(settings["cheaper_max_discount_pct"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version, increment=increment, recomputed=counters[CHEAPER_ALTERNATIVES.name],
        )),
        (CROSS_CATEGORY_ITEMS, lambda: cross_category_items(
            spark, state, k=int(settings["cross_category_k"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version, increment=increment, recomputed=counters[CROSS_CATEGORY_ITEMS.name],
        )),
        (DISPLAY_LOOKALIKES, lambda: display_lookalikes(
            state, catalog, rules=DisplayRules.from_config(config["display"]), block_rows=block_rows, run_id=run_id,
            catalog_version=catalog_version, increment=increment, recomputed=counters[DISPLAY_LOOKALIKES.name],
        )),
    ]
    if increment is None:
        misclassified = misclassified_items(state, classes=classes, run_id=run_id, catalog_version=catalog_version)
        return [DerivedRows(table, rows(), incremental=False) for table, rows in lists] + [
            DerivedRows(MISCLASSIFIED_ITEMS, misclassified, incremental=False)
        ]
    out = []
    for table, rows in lists:
        if table is CROSS_CATEGORY_ITEMS and not increment.cross_category_ids:
            # Only prices, stock, brands or classifier outputs changed: no cross-category list can.
            log.info("alternatives: no changed item moved (embedding, category, existence): every cross-category list is kept")
            out.append(kept(table))
        else:
            out.append(DerivedRows(table, rows(), incremental=True, counter=counters[table.name]))
    misclassified = misclassified_changes(
        state, classes=classes, run_id=run_id, catalog_version=catalog_version, increment=increment,
    )
    out.append(DerivedRows(MISCLASSIFIED_ITEMS, misclassified, incremental=True))
    return out


__all__ = [
    "DerivedRows", "DisplayRules", "Increment", "cheaper_alternatives", "cross_category_items", "derived_tables",
    "display_lookalikes", "misclassified_changes", "misclassified_items", "moved_items",
]
