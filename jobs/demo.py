"""Demo: the shared fashion-products photos -> demo catalog -> every stage -> summary.

    ./spark-submit.sh jobs/demo.py [--source-dir ../shared/data/fashion-products] [--set index.k=20]
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from lookalike import hadoop_fs
from lookalike.cli import job_parser, start_job
from lookalike.demo_catalog import build_demo_catalog, build_demo_interactions, read_catalog_csv
from lookalike.pipeline import format_summary, run_pipeline
from lookalike.tables import storage_root

log = logging.getLogger("lookalike.jobs.demo")


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--source-dir", default=None, help="photos + labels.csv (default: demo.source_dir)")
    args = parser.parse_args()
    source = args.source_dir
    if source:
        args.overrides.append(f"demo.source_dir={source}")
    spark, config, run_id = start_job("demo", args)
    source_dir = str(config["demo"]["source_dir"])
    config["catalog"]["image_root"] = source_dir
    demo_folder = f"{storage_root(config)}/demo"
    catalog_path = f"{demo_folder}/catalog.csv"
    interactions_path = f"{demo_folder}/interactions.csv"
    # The demo photos are a local folder, so the catalog is written locally, then copied to the store (any Hadoop path).
    with tempfile.TemporaryDirectory(prefix="lookalike-demo-") as local:
        rows = build_demo_catalog(
            source_dir, Path(local) / "catalog.csv", seed=int(config["demo"]["price_seed"]),
            in_stock_rate=float(config["demo"]["in_stock_rate"]),
        )
        hadoop_fs.write_bytes_atomically(spark, catalog_path, (Path(local) / "catalog.csv").read_bytes())
        events = build_demo_interactions(
            read_catalog_csv(Path(local) / "catalog.csv"), Path(local) / "interactions.csv",
            users=int(config["demo"]["users"]), seed=int(config["demo"]["interactions_seed"]),
        )
        hadoop_fs.write_bytes_atomically(spark, interactions_path, (Path(local) / "interactions.csv").read_bytes())
    log.info("demo catalog: %d items from %s (prices, stock and brands are SYNTHETIC)", rows, source_dir)
    log.info("demo interactions: %d events of %s users (SYNTHETIC)", events, config["demo"]["users"])
    summary = run_pipeline(spark, config, catalog_path=catalog_path, run_id=run_id, interactions_path=interactions_path)
    hadoop_fs.write_bytes_atomically(spark, f"{demo_folder}/summary.json", json.dumps(summary, indent=2).encode("utf-8"))
    print(format_summary(summary), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
