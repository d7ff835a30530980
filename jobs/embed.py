"""Score the catalog: predicted category, confidence and embedding per item -> Delta ``embeddings``.

    ./spark-submit.sh jobs/embed.py [--model-version 20261121T101500Z-1a2b3c4d]
"""

from __future__ import annotations

from datetime import datetime, timezone

from lookalike.cli import job_parser, start_job
from lookalike.runs import record_run
from lookalike.scoring import embed_catalog


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--model-version", default=None, help="model bundle (default: latest)")
    args = parser.parse_args()
    spark, config, run_id = start_job("embed", args)
    started = datetime.now(timezone.utc)
    counts = embed_catalog(spark, config, run_id=run_id, model_version=args.model_version)
    record_run(spark, config, run_id=run_id, job="embed", started_at=started,
               figures={"items": counts.items, "items_embedded": counts.embedded,
                        "items_quarantined": sum(counts.quarantined.values())})
    print(f"run {run_id}: {counts.embedded} of {counts.items} items embedded, quarantined {counts.quarantined}")
    spark.stop()


if __name__ == "__main__":
    main()
