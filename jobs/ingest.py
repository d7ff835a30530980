"""Ingest a catalog file and its photos into the Delta ``catalog`` and ``images`` tables.

    ./spark-submit.sh jobs/ingest.py --catalog catalog.csv --set catalog.image_root=/data/photos
"""

from __future__ import annotations

from datetime import datetime, timezone

from lookalike.cli import job_parser, start_job
from lookalike.ingest import ingest_catalog
from lookalike.runs import record_run


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--catalog", required=True, help="catalog file: .csv, .parquet or .jsonl (any Hadoop path)")
    parser.add_argument("--format", default=None, choices=["csv", "parquet", "json"], help="override the extension")
    args = parser.parse_args()
    spark, config, run_id = start_job("ingest", args)
    started = datetime.now(timezone.utc)
    counts = ingest_catalog(spark, config, args.catalog, run_id=run_id, file_format=args.format)
    figures = {"input_rows": counts.input_rows, "items_ingested": counts.ingested, "new_images": counts.new_images}
    figures.update({f"quarantined_{reason}": n for reason, n in counts.quarantined.items()})
    record_run(spark, config, run_id=run_id, job="ingest", started_at=started, figures=figures)
    print(f"run {run_id}: {counts.input_rows} rows in, {counts.ingested} ingested, "
          f"{counts.quarantined_total} quarantined {counts.quarantined}")
    spark.stop()


if __name__ == "__main__":
    main()
