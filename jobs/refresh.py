"""The nightly job: ingest tonight's whole catalog, re-embed and re-index only what changed, publish all-or-nothing.

    ./spark-submit.sh jobs/refresh.py --catalog catalog.parquet --run-id 2026-11-21 [--model-version V]

Use one run id per scheduled night (e.g. the date): a retry with the same id resumes the run and
repeats nothing it had committed; the same id with different input is refused (exit 2).
"""

from __future__ import annotations

import json
import sys

from lookalike.cli import job_parser, start_job
from lookalike.refresh import RunConflict, refresh


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--catalog", required=True, help="tonight's whole catalog: .csv, .parquet or .jsonl (any Hadoop path)")
    parser.add_argument("--format", default=None, choices=["csv", "parquet", "json"], help="override the extension")
    parser.add_argument("--model-version", default=None, help="model bundle (default: model.version, the best evaluated)")
    parser.add_argument("--rehash-images", action="store_true", help="read every photo, even unchanged ones")
    args = parser.parse_args()
    spark, config, run_id = start_job("refresh", args)
    try:
        result = refresh(
            spark, config, catalog_path=args.catalog, run_id=run_id, model_version=args.model_version,
            file_format=args.format, rehash_images=args.rehash_images,
        )
    except RunConflict as conflict:
        print(f"refused: {conflict}", file=sys.stderr)
        spark.stop()
        sys.exit(2)
    print(json.dumps({"run_id": result.run_id, "run_seq": result.run_seq, "status": result.status,
                      "figures": result.figures}, indent=2, sort_keys=True))
    spark.stop()


if __name__ == "__main__":
    main()
