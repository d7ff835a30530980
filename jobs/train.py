"""Train the category classifier and the embedding model from the catalog, through Petastorm.

    ./spark-submit.sh jobs/train.py [--set model.embedding=classifier]
"""

from __future__ import annotations

from datetime import datetime, timezone

from lookalike.cli import job_parser, start_job
from lookalike.runs import record_run
from lookalike.training import train_models


def main() -> None:
    args = job_parser(__doc__).parse_args()
    spark, config, run_id = start_job("train", args)
    started = datetime.now(timezone.utc)
    manifest, metrics = train_models(spark, config)
    accuracy = metrics["classifier"]["accuracy"]
    record_run(spark, config, run_id=run_id, job="train", started_at=started,
               figures={"holdout_accuracy": accuracy or 0.0, "classes": len(manifest.classes)},
               model_version=manifest.version)
    print(f"model {manifest.version}: {manifest.embedding} embedding, {len(manifest.classes)} classes, "
          f"held-out accuracy {accuracy:.3f}")
    spark.stop()


if __name__ == "__main__":
    main()
