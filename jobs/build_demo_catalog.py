"""Write a demo catalog CSV from the shared photos (prices SYNTHETIC, deterministic). No Spark needed.

    .venv/bin/python jobs/build_demo_catalog.py --out lookalike-data/demo/catalog.csv
"""

from __future__ import annotations

import argparse

from lookalike.config import load_config
from lookalike.demo_catalog import build_demo_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="CSV to write; image_uri values are relative to --source-dir")
    parser.add_argument("--source-dir", default=None)
    parser.add_argument("--profile", default="local")
    args = parser.parse_args()
    demo = load_config(args.profile)["demo"]
    rows = build_demo_catalog(
        args.source_dir or demo["source_dir"], args.out, seed=int(demo["price_seed"]), in_stock_rate=float(demo["in_stock_rate"])
    )
    print(f"wrote {rows} items to {args.out}; ingest with --set catalog.image_root={args.source_dir or demo['source_dir']}")


if __name__ == "__main__":
    main()
