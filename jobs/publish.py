"""Register every table in the Spark SQL database (storage.database) with its column comments.

    ./spark-submit.sh jobs/publish.py
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.tables import register_tables


def main() -> None:
    args = job_parser(__doc__).parse_args()
    spark, config, _ = start_job("publish", args)
    for name in register_tables(spark, config):
        print(name)
    spark.stop()


if __name__ == "__main__":
    main()
