"""Benchmark: a nightly refresh with ~1% of items changed vs. a full build of the same catalog.

    ./spark-submit.sh benchmarks/refresh_vs_full.py [--fraction 0.01] [--models-from lookalike-data/models] [--copies N]

In one Spark session, on the demo photos:
1. warm-up: a full build of night-1 (all photos but a few spares) in store A -- also the state
   the incremental run starts from;
2. baseline: a full build of night-2 (night-1 with ``fraction`` of items changed: prices, bands,
   categories, photos, new and deleted items) from empty, in store B -- timed;
3. measured: the incremental refresh of night-2 on store A -- timed;
4. floor: a refresh of the same catalog again as night-3 (nothing changed) on store A -- timed,
   after the comparison: the fixed cost of a refresh, whatever the share of items changed.
Both timed runs are warm (same Python workers, JIT). It prints both times, their ratio
(target <= 0.10) and whether the two stores' published tables are equal (floats within 1e-5). Training is not timed:
the model is copied from ``--models-from`` or trained once on night-1 first. ``--copies N`` (2-4)
runs it on a catalog N times the demo's: every item also as variant photos of its own (mirrored,
cropped; ``demo_catalog.scaled_catalog``), to see how the ratio moves with the catalog's size.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from pyspark.sql import functions as F

from lookalike.cli import setup_logging
from lookalike.config import load_config
from lookalike.demo_catalog import (
    build_demo_catalog, nightly_changes, read_catalog_csv, scaled_catalog, write_catalog_csv,
)
from lookalike.publish import PUBLISHED_KEYS, PUBLISHED_TABLES, published_table
from lookalike.refresh import refresh
from lookalike.session import build_spark

log = logging.getLogger("lookalike.benchmarks.refresh")


# Float columns may differ in the last bits: TensorFlow's results depend slightly on which photos
# share a batch. They are compared within a tolerance; every other column exactly.
FLOAT_COLUMNS = {
    "embeddings": ("embedding", "confidence"), "similar_items": ("score",), "cheaper_alternatives": ("score",),
    "cross_category_items": ("score",), "misclassified_items": ("confidence",), "display_lookalikes": ("score",),
}


def compare_stores(spark, config_a: dict, config_b: dict) -> dict[str, dict]:
    """Per published table: whether the rows are equal (lineage aside) and the largest float difference."""
    result = {}
    for table in PUBLISHED_TABLES:
        drop = ["run_id", "catalog_version", "ingested_at"]
        a = published_table(spark, config_a, table).drop(*drop)
        b = published_table(spark, config_b, table).drop(*drop)
        floats = FLOAT_COLUMNS.get(table.name, ())
        exact_a, exact_b = a.drop(*floats), b.drop(*floats)
        equal = exact_a.exceptAll(exact_b).isEmpty() and exact_b.exceptAll(exact_a).isEmpty()
        largest = 0.0
        if floats:
            keys = list(PUBLISHED_KEYS[table.name])
            joined = a.alias("a").join(b.alias("b"), keys)
            diffs = []
            for column in floats:
                if column == "embedding":
                    diff = F.array_max(F.zip_with("a.embedding", "b.embedding", lambda x, y: F.abs(x - y)))
                else:
                    diff = F.abs(F.col(f"a.{column}") - F.col(f"b.{column}"))
                diffs.append(F.max(diff))
            largest = max(float(v or 0.0) for v in joined.agg(*diffs).first())
        result[table.name] = {"equal": equal, "max_float_difference": largest}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-dir", default="../shared/data/fashion-products")
    parser.add_argument("--fraction", type=float, default=0.01, help="share of items changed in night-2")
    parser.add_argument("--work", default="lookalike-data/benchmark-refresh", help="folder for the two stores (emptied)")
    parser.add_argument("--copies", type=int, default=1,
                        help="catalog size in demo catalogs (2-4: variant photos of every item added; see scaled_catalog)")
    parser.add_argument("--models-from", default=None, help="a models/ folder to copy (default: train on night-1)")
    parser.add_argument("--profile", default="local")
    parser.add_argument("--conf-dir", default="conf")
    args = parser.parse_args()
    setup_logging()

    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    source = Path(args.source_dir).resolve()
    build_demo_catalog(source, work / "all.csv", seed=20261121)
    rows = read_catalog_csv(work / "all.csv")
    if args.copies > 1:
        rows = scaled_catalog(rows, source, work / "photos", copies=args.copies, seed=20261121)
        source = work / "photos"
    spares = max(2, int(round(args.fraction * len(rows) / 3)) + 2)
    night1, spare = rows[:-spares], [r["image_uri"] for r in rows[-spares:]]
    night2, affected = nightly_changes(night1, spare, fraction=args.fraction, seed=7)
    night1_csv = write_catalog_csv(night1, work / "night1.csv")
    night2_csv = write_catalog_csv(night2, work / "night2.csv")

    def store(name: str) -> dict:
        return load_config(args.profile, [f"storage.root={work / name}", f"catalog.image_root={source}"],
                           conf_dir=args.conf_dir)

    incremental, full = store("incremental"), store("full")
    spark = build_spark("lookalike-benchmark-refresh", incremental)
    spark.sparkContext.setLogLevel("WARN")
    if args.models_from:
        shutil.copytree(args.models_from, work / "incremental" / "models")
    warm = refresh(spark, incremental, catalog_path=str(night1_csv), run_id="night-1", train=not args.models_from)
    shutil.copytree(work / "incremental" / "models", work / "full" / "models")

    start = time.perf_counter()
    baseline = refresh(spark, full, catalog_path=str(night2_csv), run_id="full-build")
    full_seconds = time.perf_counter() - start
    start = time.perf_counter()
    nightly = refresh(spark, incremental, catalog_path=str(night2_csv), run_id="night-2")
    refresh_seconds = time.perf_counter() - start

    comparison = compare_stores(spark, incremental, full)
    equal = all(c["equal"] and c["max_float_difference"] <= 1e-5 for c in comparison.values())
    start = time.perf_counter()
    unchanged = refresh(spark, incremental, catalog_path=str(night2_csv), run_id="night-3")
    unchanged_seconds = time.perf_counter() - start
    changed = sum(len(v) for v in affected.values())
    report = {
        "copies": args.copies,
        "items_night2": len(night2),
        "items_changed": changed,
        "changes": {kind: len(ids) for kind, ids in affected.items()},
        "full_build_seconds": round(full_seconds, 1),
        "refresh_seconds": round(refresh_seconds, 1),
        "ratio": round(refresh_seconds / full_seconds, 3),
        "tables_equal": equal,
        "unchanged_refresh_seconds": round(unchanged_seconds, 1),
        "unchanged_ratio": round(unchanged_seconds / full_seconds, 3),
        "comparison": comparison,
        "stages_full": {k: round(v, 1) for k, v in baseline.seconds.items()},
        "stages_refresh": {k: round(v, 1) for k, v in nightly.seconds.items()},
        "lists_recomputed": nightly.figures.get("lists_recomputed"),
        "lists_changed": nightly.figures.get("lists_changed"),
        "photos_scored": {"full": baseline.figures.get("photos_scored"), "refresh": nightly.figures.get("photos_scored")},
        "stages_unchanged": {k: round(v, 1) for k, v in unchanged.seconds.items()},
        "warm_up_seconds": {k: round(v, 1) for k, v in warm.seconds.items()},
    }
    (work / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(
        f"refresh of {changed} changed items ({100 * changed / len(night2):.1f}%) / full build of {len(night2)} items: "
        f"{refresh_seconds:.1f} s / {full_seconds:.1f} s = {refresh_seconds / full_seconds:.3f} (target <= 0.10); "
        f"tables equal: {equal} (floats within 1e-5)"
    )
    print(
        f"refresh with nothing changed / full build: {unchanged_seconds:.1f} s / {full_seconds:.1f} s = "
        f"{unchanged_seconds / full_seconds:.3f} (the fixed floor of a refresh)"
    )
    spark.stop()


if __name__ == "__main__":
    main()
