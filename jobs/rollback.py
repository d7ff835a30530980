"""Restore the published tables to the previous published run (or --to-run RUN) and publish that.

    ./spark-submit.sh jobs/rollback.py [--to-run 2026-11-20]

Only rows that differ are rewritten (one MERGE per table from the time-travelled version), so
change-feed consumers see the rollback as ordinary changes.
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.refresh import rollback


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--to-run", default=None, help="published run to restore (default: the one before the current)")
    args = parser.parse_args()
    spark, config, run_id = start_job("rollback", args)
    restored = rollback(spark, config, run_id=f"rollback-{run_id}" if not args.run_id else run_id, to_run=args.to_run)
    print(f"published run is now {restored.run_id} (restored as seq {restored.run_seq}): "
          f"catalog v{restored.catalog_version}, embeddings v{restored.embeddings_version}, "
          f"similar_items v{restored.similar_items_version}")
    spark.stop()


if __name__ == "__main__":
    main()
