"""The demo's pipeline: one refresh run that also trains, the quality of the published lists, then
the merchandiser products built on them: clusters, per-user recommendations and the HTML report."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.clusters import publish_clusters
from lookalike.evaluation import list_quality
from lookalike.model_store import load_metrics
from lookalike.publish import published_table
from lookalike.recommend import ingest_interactions, publish_recommendations
from lookalike.refresh import refresh
from lookalike.report import write_report
from lookalike.runs import StageTimer
from schemas import (
    CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES, EMBEDDINGS, MISCLASSIFIED_ITEMS, SIMILAR_ITEMS,
    TableSchema,
)

log = logging.getLogger(__name__)


def run_pipeline(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    catalog_path: str,
    run_id: str,
    train: bool = True,
    interactions_path: str | None = None,
) -> dict[str, Any]:
    """Run every stage on one catalog file as one refresh run, measure the published lists, then
    cluster them, recommend from them and write the report.

    Parameters
    ----------
    catalog_path : str
        Catalog file to ingest.
    run_id : str
        Recorded on every row written.
    train : bool
        Train a new model bundle after ingest; either way the run scores with the version ``model.version`` selects.
    interactions_path : str, optional
        User interactions to ingest before the recommendations; default: the interactions table as it is.

    Returns
    -------
    dict
        Counts, model metrics, list quality and seconds per stage.
    """
    result = refresh(spark, config, catalog_path=catalog_path, run_id=run_id, train=train)
    if result.publication is None:
        raise RuntimeError(f"run {run_id} published nothing")
    timer = StageTimer(spark)
    with timer.stage("evaluate"):
        quality = list_quality(spark, config, k=10)
    with timer.stage("clusters") as progress:
        clusters = publish_clusters(spark, config, publication=result.publication)
        progress.done(clusters.items)
    interactions = None
    with timer.stage("recommend", unit="users") as progress:
        if interactions_path is not None:
            interactions = ingest_interactions(spark, config, interactions_path, run_id=run_id)
        users_recommended = publish_recommendations(spark, config, publication=result.publication)
        progress.done(users_recommended)
    with timer.stage("report"):
        report_uri = write_report(spark, config, publication=result.publication)
    model_version = result.publication.model_version
    metrics = load_metrics(spark, config, model_version)
    figures = result.figures
    quarantined = {name[len("quarantined_"):]: int(n) for name, n in figures.items() if name.startswith("quarantined_")}

    def items_listed(table: TableSchema) -> int:
        return published_table(spark, config, table, result.publication).select("item_id").distinct().count()

    summary: dict[str, Any] = {
        "run_id": run_id,
        "model_version": model_version,
        "status": result.status,
        "input_rows": int(figures.get("input_rows", 0)),
        "items_ingested": int(figures.get("items_ingested", 0)),
        "items_quarantined": int(figures.get("items_quarantined", 0)),
        "quarantined_by_reason": quarantined,
        "items_embedded": published_table(spark, config, EMBEDDINGS).count(),
        "photos_scored": int(figures.get("photos_scored", 0)),
        "items_indexed": published_table(spark, config, SIMILAR_ITEMS).select("item_id").distinct().count(),
        "neighbour_rows": published_table(spark, config, SIMILAR_ITEMS).count(),
        "items_with_cheaper_alternatives": items_listed(CHEAPER_ALTERNATIVES),
        "items_with_cross_category_items": items_listed(CROSS_CATEGORY_ITEMS),
        "items_misclassified": items_listed(MISCLASSIFIED_ITEMS),
        **display_figures(published_table(spark, config, DISPLAY_LOOKALIKES, result.publication)),
        "items_clustered": clusters.items,
        "clusters_per_category": dict(sorted(clusters.chosen_k.items())),
        "interaction_rows": interactions.input_rows if interactions else None,
        "interactions_quarantined": dict(interactions.quarantined) if interactions else {},
        "users_recommended": users_recommended,
        "report": report_uri,
        "lists_recomputed": int(figures.get("lists_recomputed", 0)),
        "lists_changed": int(figures.get("lists_changed", 0)),
        "classifier_holdout_accuracy": metrics["classifier"]["accuracy"],
        # Versions trained before the label audit have neither figure.
        "classifier_undisputed_accuracy": (metrics["classifier"].get("title_consistent") or {}).get("accuracy"),
        "labels_disputed": metrics["classifier"].get("disputed_labels"),
        "article_type_precision_at_10": quality["precision"],
        "article_type_precision_at_10_strict": quality["strict_precision"],
        "random_list_precision_at_10": quality["random_baseline"],
        "items_evaluated": int(quality["items"]),
        "seconds": {name: round(s, 1) for name, s in {**result.seconds, **timer.seconds}.items()},
    }
    return summary


def display_figures(lists: DataFrame) -> dict[str, int]:
    """Items with a display list, its rows, and the rows filled from outside the item's own band or window (one job)."""
    own = F.col("fill_source").isin("same_band", "price_window")
    row = lists.agg(
        F.countDistinct("item_id").alias("items"), F.count("*").alias("rows"), F.sum((~own).cast("long")).alias("filled")
    ).first()
    return {
        "items_with_display_lookalikes": int(row["items"]), "display_rows": int(row["rows"]),
        "display_rows_filled": int(row["filled"] or 0),
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["quarantined_by_reason"].items())) or "none"
    clusters = ", ".join(f"{c} {k}" for c, k in summary["clusters_per_category"].items() if k > 1) or "none"
    interactions = "interactions table as it was" if summary["interaction_rows"] is None else (
        f"{summary['interaction_rows']} interaction rows in, quarantined "
        + (", ".join(f"{k}={v}" for k, v in sorted(summary["interactions_quarantined"].items())) or "none")
    )
    lines = [
        f"run {summary['run_id']}  model {summary['model_version'] or '(latest)'}",
        f"  input rows            {summary['input_rows']:>8}",
        f"  items ingested        {summary['items_ingested']:>8}",
        f"  items quarantined     {summary['items_quarantined']:>8}   ({reasons})",
        f"  items embedded        {summary['items_embedded']:>8}",
        f"  items indexed         {summary['items_indexed']:>8}   ({summary['neighbour_rows']} neighbour rows)",
        f"  cheaper alternatives  {summary['items_with_cheaper_alternatives']:>8}   items with at least one",
        f"  cross-category lists  {summary['items_with_cross_category_items']:>8}   items",
        f"  misclassified         {summary['items_misclassified']:>8}   items whose photo the classifier files elsewhere",
        f"  display lists         {summary['items_with_display_lookalikes']:>8}   items, {summary['display_rows']} rows "
        f"({summary['display_rows_filled']} filled from outside the item's band)",
        f"  clustered             {summary['items_clustered']:>8}   items, k per category by silhouette: {clusters}",
        f"  recommendations       {summary['users_recommended']:>8}   users ({interactions})",
        f"  classifier accuracy   {pct(summary['classifier_holdout_accuracy']):>8}   (held-out split; "
        f"{pct(summary['classifier_undisputed_accuracy'])} over the queries whose title does not dispute their label, "
        f"{'n/a' if summary['labels_disputed'] is None else summary['labels_disputed']} labels disputed: jobs/labels.py)",
        f"  articleType P@10      {pct(summary['article_type_precision_at_10']):>8}   "
        f"(over {summary['items_evaluated']} labelled items; random list in same partition: "
        f"{pct(summary['random_list_precision_at_10'])}; unlabelled neighbours as misses: "
        f"{pct(summary['article_type_precision_at_10_strict'])})",
        "  seconds per stage     " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()),
        f"  report                {summary['report']}",
    ]
    return "\n".join(lines)
