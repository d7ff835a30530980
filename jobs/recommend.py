"""Per-user recommendations from the look-alikes of the items each user liked most.

    ./spark-submit.sh jobs/recommend.py [--interactions events.csv]

With --interactions, the file (user_id, item_id, event, rating, event_time; CSV, Parquet or JSON
Lines) first replaces the ``interactions`` table, its unusable rows going to quarantine. Then
``user_recommendations`` is replaced with lists from the published run.
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.recommend import ingest_interactions, publish_recommendations


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--interactions", default=None, help="interactions file to ingest first (any Hadoop path)")
    parser.add_argument("--format", default=None, choices=["csv", "parquet", "json"], help="override the extension")
    args = parser.parse_args()
    spark, config, run_id = start_job("recommend", args)
    if args.interactions:
        counts = ingest_interactions(spark, config, args.interactions, run_id=run_id, file_format=args.format)
        print(f"interactions: {counts.input_rows} rows in, {counts.ingested} kept, quarantined {counts.quarantined}")
    users = publish_recommendations(spark, config)
    print(f"user_recommendations: {users} users")
    spark.stop()


if __name__ == "__main__":
    main()
