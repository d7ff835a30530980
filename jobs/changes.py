"""For a consumer: the rows of a published table that changed since the version it last read.

    ./spark-submit.sh jobs/changes.py --table similar_items --since-version 12 --out changed-lists.parquet

Prints the published version to remember for next time. Rows carry ``_change_type``
(insert, update_postimage, delete) and ``_commit_version``.
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.publish import PUBLISHED_TABLES, changes_since, latest_publication


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--table", default="similar_items", choices=[t.name for t in PUBLISHED_TABLES])
    parser.add_argument("--since-version", type=int, required=True, help="the table version last read")
    parser.add_argument("--out", default=None, help="write the changed rows here as Parquet (default: show them)")
    args = parser.parse_args()
    spark, config, _ = start_job("changes", args)
    table = next(t for t in PUBLISHED_TABLES if t.name == args.table)
    publication = latest_publication(spark, config)
    changed = changes_since(spark, config, table, args.since_version, publication)
    if args.out:
        changed.write.mode("overwrite").parquet(args.out)
    else:
        changed.show(50, truncate=False)
    until = publication.version_of(table) if publication else None
    print(f"{args.table}: changes after version {args.since_version} up to published version {until} "
          f"(run {publication.run_id if publication else None}); read from {until} next time")
    spark.stop()


if __name__ == "__main__":
    main()
