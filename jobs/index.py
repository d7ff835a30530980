"""Precompute the top-k look-alikes of every item within its category and price band -> ``similar_items``.

    ./spark-submit.sh jobs/index.py [--set index.k=20]
"""

from __future__ import annotations

from datetime import datetime, timezone

from lookalike.cli import job_parser, start_job
from lookalike.neighbours import build_index
from lookalike.runs import record_run


def main() -> None:
    args = job_parser(__doc__).parse_args()
    spark, config, run_id = start_job("index", args)
    started = datetime.now(timezone.utc)
    rows = build_index(spark, config, run_id=run_id)
    record_run(spark, config, run_id=run_id, job="index", started_at=started, figures={"neighbour_rows": rows})
    print(f"run {run_id}: {rows} neighbour rows written")
    spark.stop()


if __name__ == "__main__":
    main()
