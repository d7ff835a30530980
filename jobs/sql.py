"""Run Spark SQL against the published tables (registered first in storage.database).

    ./spark-submit.sh jobs/sql.py -e "SELECT category, count(*) FROM lookalike.embeddings GROUP BY category"
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.tables import register_tables


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("-e", "--execute", required=True, help="one SQL statement")
    parser.add_argument("--rows", type=int, default=50)
    args = parser.parse_args()
    spark, config, _ = start_job("sql", args)
    register_tables(spark, config)
    spark.sql(args.execute).show(args.rows, truncate=80)
    spark.stop()


if __name__ == "__main__":
    main()
