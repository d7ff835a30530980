"""The stages in order -- ingest, train, embed, index, publish -- with a summary of each."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Mapping

from pyspark.sql import SparkSession

from lookalike.evaluation import list_quality
from lookalike.ingest import ingest_catalog
from lookalike.neighbours import build_index
from lookalike.runs import StageTimer, record_run
from lookalike.scoring import embed_catalog
from lookalike.tables import read_table, register_tables
from schemas import SIMILAR_ITEMS
from lookalike.training import train_models

log = logging.getLogger(__name__)


def run_pipeline(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    catalog_path: str,
    run_id: str,
    train: bool = True,
) -> dict[str, Any]:
    """Run every stage on one catalog file and record the run.

    Parameters
    ----------
    catalog_path : str
        Catalog file to ingest.
    run_id : str
        Recorded on every row written.
    train : bool
        Train a new model bundle; if False, the latest one is used.

    Returns
    -------
    dict
        Counts, model metrics, list quality and seconds per stage.
    """
    started = datetime.now(timezone.utc)
    timer = StageTimer()
    with timer.stage("ingest"):
        ingested = ingest_catalog(spark, config, catalog_path, run_id=run_id)
    model_version, accuracy = None, None
    if train:
        with timer.stage("train"):
            manifest, metrics = train_models(spark, config)
        model_version, accuracy = manifest.version, metrics["classifier"]["accuracy"]
    with timer.stage("embed"):
        embedded = embed_catalog(spark, config, run_id=run_id, model_version=model_version)
    with timer.stage("index"):
        neighbour_rows = build_index(spark, config, run_id=run_id)
    with timer.stage("publish"):
        register_tables(spark, config)
    with timer.stage("evaluate"):
        quality = list_quality(spark, config, k=10)

    summary: dict[str, Any] = {
        "run_id": run_id,
        "model_version": model_version,
        "input_rows": ingested.input_rows,
        "items_ingested": ingested.ingested,
        "items_quarantined": ingested.quarantined_total + sum(embedded.quarantined.values()),
        "quarantined_by_reason": {**ingested.quarantined, **embedded.quarantined},
        "items_embedded": embedded.embedded,
        "items_indexed": read_table(spark, config, SIMILAR_ITEMS).select("item_id").distinct().count(),
        "neighbour_rows": neighbour_rows,
        "classifier_holdout_accuracy": accuracy,
        "article_type_precision_at_10": quality["precision"],
        "article_type_precision_at_10_strict": quality["strict_precision"],
        "random_list_precision_at_10": quality["random_baseline"],
        "items_evaluated": int(quality["items"]),
        "seconds": {name: round(s, 1) for name, s in timer.seconds.items()},
    }
    figures = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
    figures.update({f"seconds_{k}": v for k, v in timer.seconds.items()})
    record_run(spark, config, run_id=run_id, job="pipeline", started_at=started, figures=figures, model_version=model_version)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["quarantined_by_reason"].items())) or "none"
    lines = [
        f"run {summary['run_id']}  model {summary['model_version'] or '(latest)'}",
        f"  input rows            {summary['input_rows']:>8}",
        f"  items ingested        {summary['items_ingested']:>8}",
        f"  items quarantined     {summary['items_quarantined']:>8}   ({reasons})",
        f"  items embedded        {summary['items_embedded']:>8}",
        f"  items indexed         {summary['items_indexed']:>8}   ({summary['neighbour_rows']} neighbour rows)",
        f"  classifier accuracy   {pct(summary['classifier_holdout_accuracy']):>8}   (held-out split)",
        f"  articleType P@10      {pct(summary['article_type_precision_at_10']):>8}   "
        f"(over {summary['items_evaluated']} labelled items; random list in same partition: "
        f"{pct(summary['random_list_precision_at_10'])}; unlabelled neighbours as misses: "
        f"{pct(summary['article_type_precision_at_10_strict'])})",
        "  seconds per stage     " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()),
    ]
    return "\n".join(lines)
