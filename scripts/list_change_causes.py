"""Which kinds of catalog change reached the lists a refresh changed, in the refresh benchmark's store.

    ./spark-submit.sh scripts/list_change_causes.py [--work lookalike-data/benchmark-refresh] [--table cross_category_items]

Reads the work folder ``benchmarks/refresh_vs_full.py`` leaves: night-1 and night-2 catalogs
(``night1.csv``, ``night2.csv``) and the incremental store, whose publications of ``night-1``
and ``night-2`` it compares. Each changed item gets one kind from the catalog diff (the first that
applies: deleted, new, category, photo, price, stock, brand, other). A list whose set of listed
items changed counts once for each kind among the items that entered or left it; items that did
not change themselves count as ``unchanged`` (pushed out or pulled in by the others).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from lookalike.config import load_config
from lookalike.demo_catalog import read_catalog_csv
from lookalike.publish import publications, published_table
from lookalike.session import build_spark
from schemas import CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES, SIMILAR_ITEMS

# Each list table, with the column naming the item a row lists.
_LISTED = {
    CHEAPER_ALTERNATIVES.name: (CHEAPER_ALTERNATIVES, "alternative_id"),
    CROSS_CATEGORY_ITEMS.name: (CROSS_CATEGORY_ITEMS, "neighbour_id"),
    DISPLAY_LOOKALIKES.name: (DISPLAY_LOOKALIKES, "neighbour_id"),
    SIMILAR_ITEMS.name: (SIMILAR_ITEMS, "neighbour_id"),
}
# Catalog columns whose change names the kind, in order of precedence.
_KINDS = (("category", "category"), ("photo", "image_uri"), ("price", "price"), ("stock", "in_stock"), ("brand", "brand"))


def change_kinds(night1: list[dict], night2: list[dict]) -> dict[str, str]:
    """The kind of every item whose catalog row differs between the two nights."""
    before = {row["item_id"]: row for row in night1}
    after = {row["item_id"]: row for row in night2}
    kinds = {item_id: "deleted" for item_id in before.keys() - after.keys()}
    kinds.update({item_id: "new" for item_id in after.keys() - before.keys()})
    for item_id in before.keys() & after.keys():
        old, new = before[item_id], after[item_id]
        if old != new:
            kinds[item_id] = next((kind for kind, column in _KINDS if old.get(column) != new.get(column)), "other")
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="lookalike-data/benchmark-refresh")
    parser.add_argument("--table", default=CROSS_CATEGORY_ITEMS.name, choices=sorted(_LISTED))
    parser.add_argument("--profile", default="local")
    args = parser.parse_args()
    work = Path(args.work)
    kinds = change_kinds(read_catalog_csv(work / "night1.csv"), read_catalog_csv(work / "night2.csv"))
    config = load_config(args.profile, [f"storage.root={work.resolve() / 'incremental'}"])
    spark = build_spark("lookalike-list-change-causes", config)
    by_run = {p.run_id: p for p in publications(spark, config)}
    table, listed = _LISTED[args.table]

    def lists(run_id: str) -> dict[str, set[str]]:
        rows = published_table(spark, config, table, by_run[run_id]).select("item_id", listed).collect()
        out: dict[str, set[str]] = {}
        for row in rows:
            out.setdefault(row["item_id"], set()).add(row[listed])
        return out

    before, after = lists("night-1"), lists("night-2")
    reached: Counter[str] = Counter()
    changed_lists = 0
    for item_id in before.keys() | after.keys():
        moved = before.get(item_id, set()) ^ after.get(item_id, set())
        if moved:
            changed_lists += 1
            reached.update({kinds.get(other, "unchanged") for other in moved})
    print(f"{args.table}: {changed_lists} of {len(after)} lists changed the items they list "
          f"({len(kinds)} items changed: {dict(Counter(kinds.values()))})")
    print("kind of the items entering or leaving them -> lists:")
    for kind, count in reached.most_common():
        print(f"  {kind:<10} {count:>7}")
    spark.stop()


if __name__ == "__main__":
    main()
