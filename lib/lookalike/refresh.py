"""The nightly refresh: ingest -> embed -> index -> publish for one run id, recomputing only what changed.

A run is registered in ``refresh_runs`` with a fingerprint of its input and a sequence number.
Everything it computes is staged under ``<root>/staging/<run_id>/`` first; publishing merges
the staged changes into the published tables and commits the pointer row last (see
``lookalike.publish``). Rerunning a run id resumes it: what was committed is skipped (Delta
idempotent writes keyed by the sequence number), what was staged is reused. Rerunning a
published run with the same input does nothing; with different input it is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike import hadoop_fs
from lookalike.alternatives import DerivedRows, Increment, derived_tables, moved_items
from lookalike.evaluation import record_index_recall, record_list_quality
from lookalike.ingest import CatalogInput, IngestCounts, allowed_image_roots, ingest_catalog, read_catalog_input
from lookalike.model_store import ModelManifest, load_manifest
from lookalike.neighbours import stage_lists
from lookalike.publish import (
    DELETE_FLAG,
    DERIVED_TABLES,
    LINEAGE_COLUMNS,
    PUBLISHED_TABLES,
    Publication,
    apply_changes,
    commit_publication,
    latest_publication,
    publications,
    published_table,
    register_published_views,
    replace_rows,
    sync_to_version,
    unfinished_run,
)
from lookalike.runs import StageTimer, record_run
from lookalike.scoring import EmbedCounts, stage_embeddings
from lookalike.session import run_concurrently
from lookalike.tables import conform, ensure_table, read_table, register_tables, storage_root, table_path, table_version
from schemas import ALL_TABLES, CATALOG, EMBEDDINGS, INDEX_RECALL, QUARANTINE, REFRESH_RUNS, SIMILAR_ITEMS

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class RunConflict(RuntimeError):
    """A run id that cannot run now: its input changed, it is older than the published run, or another run is half-published."""


class AccountingError(RuntimeError):
    """A run's counts do not balance: an input row was lost or counted twice. Nothing is published."""


@dataclass
class RefreshResult:
    """What a refresh did. ``status`` is ``published`` or ``already published`` (a rerun that did nothing)."""

    run_id: str
    run_seq: int
    status: str
    publication: Publication | None = None
    figures: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    ingest: IngestCounts | None = None
    embed: EmbedCounts | None = None


def checked_run_id(run_id: str) -> str:
    """Return ``run_id`` if it can name a folder and a commit (letters, digits, ``_.-``), else raise ValueError."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r}: use letters, digits, '_', '.', '-' (at most 128), starting with a letter or digit")
    return run_id


def staging_path(config: Mapping[str, Any], run_id: str) -> str:
    """Folder holding a run's staged changes until it is published."""
    return f"{storage_root(config)}/staging/{checked_run_id(run_id)}"


def input_fingerprint(
    spark: SparkSession, config: Mapping[str, Any], catalog_path: str, *, listing: DataFrame, model: str
) -> tuple[str, str]:
    """Hash of everything a run's output depends on: catalog file bytes, photo listing, model and list settings.

    Photos enter by path, length and modification time (no file is read).

    Parameters
    ----------
    listing : DataFrame
        ``lookalike.ingest.list_image_files`` of the catalog's usable rows.

    Returns
    -------
    (str, str)
        The SHA-256 hex digest, and a JSON description of what was hashed.
    """
    files = spark.read.format("binaryFile").load(catalog_path).select("path", F.sha2("content", 256).alias("sha"))
    photos = listing.agg(
        F.count("*").alias("n"),
        F.sum(F.xxhash64("path", "length", "modificationTime").cast("decimal(38,0)")).cast("string").alias("h"),
    ).first()
    description = {
        "catalog": catalog_path,
        "catalog_files": sorted(f"{r['path']}:{r['sha']}" for r in files.collect()),
        "photos": {"files": int(photos["n"]), "listing_hash": photos["h"]},
        "model": model,
        "image_root": str(config["catalog"]["image_root"]),
        "image_roots": allowed_image_roots(config),
        # The lists' settings: a retry under other rules would keep the lists committed under the first.
        **list_settings(config),
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), text


def claim_run(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    run_id: str,
    kind: str,
    fingerprint: str,
    description: str,
    publication: Publication | None,
) -> tuple[int, bool]:
    """Register a run, or find it registered; decide whether it may run.

    Returns
    -------
    (int, bool)
        The run's sequence number, and whether it is already published (nothing to do).

    Raises
    ------
    RunConflict
        The run id was used with different input; or it is older than the published run; or a
        different run was killed while publishing and must be rerun (or rolled back) first.
    """
    registered = read_table(spark, config, REFRESH_RUNS)
    existing = registered.where(F.col("run_id") == run_id).collect()
    if existing:
        row = existing[0]
        if row["input_fingerprint"] != fingerprint:
            raise RunConflict(
                f"run {run_id} was started before with different input (fingerprint {row['input_fingerprint'][:12]}, "
                f"now {fingerprint[:12]}); give this input a new run id. Recorded input: {row['input_description']}"
            )
        seq = int(row["run_seq"])
        if any(p.run_seq == seq for p in publications(spark, config)):
            return seq, True
        if publication is not None and seq < publication.run_seq:
            raise RunConflict(
                f"run {run_id} (seq {seq}) is older than the published run {publication.run_id} "
                f"(seq {publication.run_seq}) and cannot be rerun; start a new run id"
            )
        log.info("run %s (seq %d): resuming an interrupted run", run_id, seq)
        return seq, False
    if kind == "refresh":
        half = unfinished_run(spark, config, publication)
        if half is not None:
            raise RunConflict(
                f"run {half} was interrupted while publishing; rerun it first with --run-id {half} "
                f"(or restore the published run with jobs/rollback.py --to-run "
                f"{publication.run_id if publication else '<run>'})"
            )
    last = registered.agg(F.max("run_seq")).first()[0]
    seq = int(last or 0) + 1
    row = [(run_id, seq, kind, fingerprint, description, datetime.now(timezone.utc))]
    frame = spark.createDataFrame(row, REFRESH_RUNS.spark_schema)
    conform(frame, REFRESH_RUNS).write.format("delta").mode("append").save(table_path(config, REFRESH_RUNS))
    log.info("run %s: registered as seq %d", run_id, seq)
    return seq, False


def _staged(spark: SparkSession, path: str) -> DataFrame | None:
    return spark.read.format("delta").load(path) if DeltaTable.isDeltaTable(spark, path) else None


def new_state(previous: DataFrame, changes: DataFrame) -> DataFrame:
    """The embeddings after applying staged changes to the previous ones."""
    kept = previous.join(changes.select("item_id"), "item_id", "left_anti")
    return kept.unionByName(conform(changes.where(~F.col(DELETE_FLAG)), EMBEDDINGS))


_INDEX_SETTINGS = ("k", "price_bands", "price_band_edges", "quantile_bands", "approximate_above", "approximate_nprobe")


def list_settings(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings the published lists are computed under, by config section (part of every run's fingerprint)."""
    index = config["index"]
    settings = {
        "index": {key: index[key] for key in _INDEX_SETTINGS if key in index},
        "alternatives": dict(config["alternatives"]),
        "display": dict(config["display"]),
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_changed(
    spark: SparkSession, config: Mapping[str, Any], publication: Publication | None
) -> list[str]:
    """Sections of ``list_settings`` that differ from those the published run recorded (every section if unrecorded)."""
    if publication is None:
        return []
    recorded = read_table(spark, config, REFRESH_RUNS).where(F.col("run_id") == publication.run_id).select(
        "input_description"
    ).first()
    described = json.loads(recorded["input_description"]) if recorded is not None else {}
    current = list_settings(config)
    changed = [section for section, values in current.items() if described.get(section) != values]
    if changed:
        log.warning(
            "list settings %s differ from those of the published run %s: those lists are recomputed whole (%s, now %s)",
            changed, publication.run_id, {s: described.get(s) for s in changed}, {s: current[s] for s in changed},
        )
    return changed


def derived_increment(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    changes: DataFrame,
    previous_embeddings: DataFrame,
    publication: Publication | None,
    catalog_version: int,
    settings_differ: bool = False,
) -> Increment | None:
    """What the derived tables are recomputed from tonight, or None to recompute them whole.

    Whole: nothing published yet, a derived table missing from the publication, or
    ``settings_differ`` (the published lists were computed under other rules). Else the changed
    items are the embeddings changes plus every item whose ``catalog`` row changed since the
    published catalog version (stock and brand are not in ``embeddings``), read from the catalog's
    change feed; only those whose embedding, category or existence changed reach the
    cross-category lists (``alternatives.moved_items``).

    Parameters
    ----------
    changes : DataFrame
        The run's staged embeddings changes.
    previous_embeddings : DataFrame
        The published ``embeddings`` the changes were staged against.
    publication : Publication or None
        The published run the refresh starts from.
    catalog_version : int
        The ``catalog`` version the run embedded.
    settings_differ : bool
        The ``alternatives`` or ``display`` settings differ from the published run's.

    Returns
    -------
    Increment or None
    """
    if publication is None or settings_differ:
        return None
    missing = [t.name for t in DERIVED_TABLES if publication.version_of(t) is None]
    if missing:
        log.info("alternatives: %s not published yet: computed whole", ", ".join(missing))
        return None
    changed = changes.select("item_id")
    if catalog_version > publication.catalog_version:
        catalog_rows = (
            spark.read.format("delta").option("readChangeFeed", "true")
            .option("startingVersion", publication.catalog_version + 1).option("endingVersion", catalog_version)
            .load(table_path(config, CATALOG)).select("item_id")
        )
        changed = changed.unionByName(catalog_rows)
    # Collected once (a night's changed ids are few): every derived table's plan joins them three
    # times, and as a query each join would read the change feed and shuffle the ids again.
    ids = sorted(row["item_id"] for row in changed.distinct().collect())
    changed_ids = spark.createDataFrame([(item_id,) for item_id in ids], "item_id string")
    previous = {t.name: published_table(spark, config, t, publication) for t in DERIVED_TABLES}
    moved = frozenset(row["item_id"] for row in moved_items(previous_embeddings, changes).collect())
    log.info("alternatives: %d items changed since the published run, %d of them in embedding, category or existence",
             len(ids), len(moved))
    return Increment(changed=changed_ids, previous=previous, moved=moved)


def account_for_rows(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    run_id: str,
    ingested: IngestCounts,
    catalog_version: int,
    published_items: int,
) -> dict[str, float]:
    """Check that every input row of a run is published or quarantined, and return the figures per reason.

    Balances ``input_rows + items_kept == items_published + quarantined``, from counts taken
    independently: the catalog file, the ``catalog`` table at the version the run embedded, the
    embeddings the run publishes and the run's ``quarantine`` rows. An item whose row was refused
    tonight but keeps an earlier good row (``items_kept``) counts once as quarantined (tonight's
    row) and once as published (its earlier row).

    Parameters
    ----------
    ingested : IngestCounts
        What this run's ingest did.
    catalog_version : int
        The ``catalog`` version the run embedded.
    published_items : int
        Items in the embeddings the run publishes.

    Returns
    -------
    dict
        ``input_rows``, ``items_kept``, ``items_published``, ``items_quarantined`` and
        ``quarantined_<reason>`` for every reason met.

    Raises
    ------
    AccountingError
        If a balance fails; the message names it and its two sides.
    """
    refused = read_table(spark, config, QUARANTINE).where(F.col("run_id") == run_id).groupBy("stage", "reason").count().collect()
    by_stage = {stage: sum(r["count"] for r in refused if r["stage"] == stage) for stage in ("ingest", "embed")}
    catalog_items = read_table(spark, config, CATALOG, version=catalog_version).count()
    balances = {
        "input rows = rows accepted + rows quarantined at ingest": (ingested.input_rows, ingested.ingested + by_stage["ingest"]),
        "catalog items = rows accepted + items kept from earlier runs": (catalog_items, ingested.ingested + ingested.kept),
        "catalog items = items published + items quarantined at embed": (catalog_items, published_items + by_stage["embed"]),
    }
    failed = {name: sides for name, sides in balances.items() if sides[0] != sides[1]}
    if failed:
        raise AccountingError(f"run {run_id} does not balance, nothing published: "
                              + "; ".join(f"{name}: {left} != {right}" for name, (left, right) in failed.items()))
    figures: dict[str, float] = {
        "input_rows": ingested.input_rows,
        "items_kept": ingested.kept,
        "items_published": published_items,
        "items_quarantined": sum(r["count"] for r in refused),
    }
    figures.update({f"quarantined_{r['reason']}": r["count"] for r in sorted(refused, key=lambda r: r["reason"])})
    log.info(
        "run %s accounts for every row: %d input rows + %d kept = %d published + %d quarantined %s",
        run_id, ingested.input_rows, ingested.kept, published_items, figures["items_quarantined"],
        {k[len("quarantined_"):]: int(v) for k, v in figures.items() if k.startswith("quarantined_")},
    )
    return figures


def _publish_derived(
    spark: SparkSession, config: Mapping[str, Any], *, part: DerivedRows, run_id: str, run_seq: int
) -> dict[str, int]:
    """Compute a derived table's rows for the run and merge them; the MERGE's row counts, with ``lists_recomputed``."""
    started = time.perf_counter()
    part = part.materialised()
    computed = time.perf_counter()
    try:
        if part.incremental:
            merged = apply_changes(spark, config, part.table, part.rows, run_id=run_id, run_seq=run_seq)
        else:
            # Computed whole and merged row by row: only rows that changed are written.
            content = [c for c in part.table.column_names if c not in LINEAGE_COLUMNS]
            merged = replace_rows(
                spark, config, part.table, part.rows, run_id=run_id, run_seq=run_seq,
                app_id=f"lookalike.publish.{part.table.name}", compare=content,
            )
    finally:
        part.release()
    if part.incremental:
        recomputed = "" if part.lists_recomputed is None else f"{part.lists_recomputed} lists recomputed, "
        log.info("alternatives: %s: %schanged rows computed in %.1f s, merged in %.1f s %s", part.table.name,
                 recomputed, computed - started, time.perf_counter() - computed, merged)
    else:
        log.info("alternatives: %s: computed whole and merged in %.1f s %s", part.table.name,
                 time.perf_counter() - started, merged)
    if part.lists_recomputed is not None:
        merged["lists_recomputed"] = part.lists_recomputed
    return merged


def refresh(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    catalog_path: str,
    run_id: str,
    model_version: str | None = None,
    file_format: str | None = None,
    rehash_images: bool = False,
    train: bool = False,
) -> RefreshResult:
    """Run ingest -> embed -> index -> publish for one run id, recomputing only what changed.

    Parameters
    ----------
    catalog_path : str
        Tonight's whole catalog (CSV, Parquet, JSON Lines): items not in it are deleted.
    run_id : str
        Letters, digits, ``_.-``. Reuse the same id to resume a run that was killed.
    model_version : str, optional
        Model bundle to embed with (default: the one ``model.version`` names, the best evaluated
        by default). A version different from the published embeddings' re-embeds every item.
    file_format : str, optional
        Overrides the format told from the catalog's extension.
    rehash_images : bool
        Read every photo even when its length and modification time are unchanged.
    train : bool
        Train a new model bundle after ingest (the demo does), then embed with the version
        ``model.version`` selects: the new one unless an earlier one did better on the holdout.

    Returns
    -------
    RefreshResult

    Raises
    ------
    RunConflict
        See ``claim_run``.
    """
    checked_run_id(run_id)
    started = datetime.now(timezone.utc)
    timer = StageTimer(spark)
    catalog_input: CatalogInput | None = None
    try:
        with timer.stage("prepare"):
            for table in ALL_TABLES:
                ensure_table(spark, config, table)
            # Read once: the fingerprint needs its version, embedding the whole manifest.
            existing = None if train else load_manifest(spark, config, model_version)
            model = existing.version if existing else "trained by this run"
            # Read and listed once: the fingerprint and ingest both need them.
            catalog_input = read_catalog_input(spark, config, catalog_path, file_format=file_format)
            fingerprint, description = input_fingerprint(spark, config, catalog_path, listing=catalog_input.listing, model=model)
            publication = latest_publication(spark, config)
            run_seq, done = claim_run(
                spark, config, run_id=run_id, kind="refresh", fingerprint=fingerprint, description=description,
                publication=publication,
            )
        if done:
            # A run killed between committing its pointer row and deleting its staging folder left the folder behind.
            hadoop_fs.delete(spark, staging_path(config, run_id))
            log.info("run %s is already published with this input: nothing to do", run_id)
            return RefreshResult(run_id=run_id, run_seq=run_seq, status="already published", publication=publication)
        with timer.stage("ingest", unit="rows") as progress:
            ingested = ingest_catalog(
                spark, config, catalog_path, run_id=run_id, file_format=file_format, run_seq=run_seq,
                delete_missing=True, rehash_images=rehash_images, prepared=catalog_input,
            )
            progress.done(ingested.input_rows)
    finally:
        if catalog_input is not None:
            catalog_input.unpersist()
    manifest: ModelManifest
    if train:
        from lookalike.training import train_models  # TensorFlow is only imported when training

        with timer.stage("train"):
            trained, _ = train_models(spark, config)
        # model.version decides, as for runs that do not train: by default the best evaluated
        # version, which is the new one unless an earlier version did better on the holdout.
        manifest = load_manifest(spark, config, model_version)
        if manifest.version != trained.version:
            log.warning(
                "the model trained by this run (%s) is not the one model.version = %r selects; scoring with %s",
                trained.version, model_version or config["model"]["version"], manifest.version,
            )
    else:
        assert existing is not None
        manifest = existing

    catalog_version = table_version(spark, config, CATALOG)
    previous_embeddings = published_table(spark, config, EMBEDDINGS, publication)
    previous_lists = published_table(spark, config, SIMILAR_ITEMS, publication)
    staging = staging_path(config, run_id)
    changed_settings = settings_changed(spark, config, publication)
    embedded = None
    with timer.stage("embed", unit="photos") as progress:
        changes = _staged(spark, f"{staging}/embeddings")
        if changes is None:
            embedded = stage_embeddings(
                spark, config, manifest=manifest, catalog=read_table(spark, config, CATALOG, version=catalog_version),
                previous=previous_embeddings, run_id=run_id, catalog_version=catalog_version,
                staging_path=f"{staging}/embeddings", run_seq=run_seq,
            )
            progress.done(embedded.photos_scored)
            changes = _staged(spark, f"{staging}/embeddings")
        else:
            log.info("embed: reusing the changes staged by an earlier attempt of run %s", run_id)
    # Read once for the index, the row accounting and the derived tables.
    state = new_state(previous_embeddings, changes).persist()
    try:
        with timer.stage("index", unit="lists") as progress:
            lists = _staged(spark, f"{staging}/similar_items")
            recomputed = None
            if lists is None:
                recomputed = stage_lists(
                    spark, config, state=state, changes=changes,
                    previous=previous_lists, run_id=run_id, catalog_version=catalog_version,
                    staging_path=f"{staging}/similar_items", recall_staging_path=f"{staging}/index_recall",
                    full="index" in changed_settings,
                )
                progress.done(recomputed)
                lists = _staged(spark, f"{staging}/similar_items")
            else:
                log.info("index: reusing the lists staged by an earlier attempt of run %s", run_id)
        with timer.stage("alternatives") as progress:
            published_items = state.count()
            # Checked before any published table is written: a gap publishes nothing and blocks no later run.
            accounting = account_for_rows(
                spark, config, run_id=run_id, ingested=ingested, catalog_version=catalog_version,
                published_items=published_items,
            )
            increment = derived_increment(
                spark, config, changes=changes, previous_embeddings=previous_embeddings, publication=publication,
                catalog_version=catalog_version,
                settings_differ=bool({"alternatives", "display"} & set(changed_settings)),
            )
            derived = derived_tables(
                spark, config, state=state, catalog=read_table(spark, config, CATALOG, version=catalog_version),
                classes=manifest.classes, run_id=run_id, catalog_version=catalog_version, increment=increment,
            )
            # One thread and session per table: one table's Python lists run while another's MERGE commits.
            derived_merges = run_concurrently(
                spark, {part.table.name: functools.partial(_publish_derived, config=config, part=part, run_id=run_id,
                                                           run_seq=run_seq) for part in derived},
            )
            progress.done(published_items)
    finally:
        state.unpersist()
    with timer.stage("publish"):
        staged_recall = _staged(spark, f"{staging}/index_recall")
        written = run_concurrently(spark, {
            EMBEDDINGS.name: lambda session: apply_changes(
                session, config, EMBEDDINGS, changes, run_id=run_id, run_seq=run_seq),
            SIMILAR_ITEMS.name: lambda session: apply_changes(
                session, config, SIMILAR_ITEMS, lists, run_id=run_id, run_seq=run_seq),
            INDEX_RECALL.name: lambda session: record_index_recall(
                session, config, staged_recall, run_id=run_id, run_seq=run_seq, model_version=manifest.version),
            "lists_changed": lambda session: lists.select("item_id").distinct().count(),  # rewritten, shortened or removed
        })
        embeddings_merge, lists_merge, recall_rows = (
            written[EMBEDDINGS.name], written[SIMILAR_ITEMS.name], written[INDEX_RECALL.name])
        # Reads both merged tables.
        quality_partitions = record_list_quality(
            spark, config, run_id=run_id, run_seq=run_seq, model_version=manifest.version, catalog_version=catalog_version,
        )
        figures: dict[str, float] = {
            "embeddings_inserted": embeddings_merge["inserted"],
            "embeddings_updated": embeddings_merge["updated"],
            "embeddings_deleted": embeddings_merge["deleted"],
            "list_rows_inserted": lists_merge["inserted"],
            "list_rows_updated": lists_merge["updated"],
            "list_rows_deleted": lists_merge["deleted"],
            "lists_changed": written["lists_changed"],
            "catalog_version": catalog_version,
            "list_quality_partitions": quality_partitions,
            "index_recall_rows": recall_rows,
        }
        if recomputed is not None:
            figures["lists_recomputed"] = recomputed
        for name, merged in derived_merges.items():
            figures.update({
                f"{name}_{kind}" if kind == "lists_recomputed" else f"{name}_rows_{kind}": n for kind, n in merged.items()
            })
        figures.update(accounting)
        figures.update(items_ingested=ingested.ingested, photos_read=ingested.photos_read,
                       catalog_rows_changed=ingested.changed, catalog_rows_deleted=ingested.deleted)
        if embedded is not None:
            figures.update(photos_scored=embedded.photos_scored, items_embedded=embedded.embedded)
        figures.update({f"seconds_{name}": round(s, 3) for name, s in timer.seconds.items()})
        record_run(spark, config, run_id=run_id, job="refresh", started_at=started, figures=figures,
                   model_version=manifest.version, run_seq=run_seq)
        published = commit_publication(
            spark, config, run_id=run_id, run_seq=run_seq, kind="refresh", model_version=manifest.version,
            input_fingerprint=fingerprint, figures=figures,
        )
    register_tables(spark, config)
    register_published_views(spark, config, published)
    hadoop_fs.delete(spark, staging)
    log.info("refresh %s published: %s", run_id, {k: v for k, v in figures.items() if not k.startswith("seconds_")})
    return RefreshResult(
        run_id=run_id, run_seq=run_seq, status="published", publication=published, figures=figures,
        seconds=dict(timer.seconds), ingest=ingested, embed=embedded,
    )


def rollback(
    spark: SparkSession, config: Mapping[str, Any], *, run_id: str, to_run: str | None = None
) -> Publication:
    """Restore the published tables to an earlier published run and publish that as a new pointer row.

    Parameters
    ----------
    run_id : str
        Id of this rollback (registered like a run).
    to_run : str, optional
        Run to restore; default the run published before the current one.

    Returns
    -------
    Publication
        The new pointer row (kind ``rollback``, run id of the restored run).

    Raises
    ------
    ValueError
        Nothing published, or no earlier run to go back to, or ``to_run`` was never published.
    """
    checked_run_id(run_id)
    for table in ALL_TABLES:
        ensure_table(spark, config, table)
    history = publications(spark, config)
    if not history:
        raise ValueError("nothing has been published yet: there is no run to roll back to")
    current = history[-1]
    if to_run is None:
        first_of_current = min(p.run_seq for p in history if p.run_id == current.run_id)
        earlier = [p for p in history if p.run_seq < first_of_current and p.run_id != current.run_id]
        if not earlier:
            raise ValueError(f"run {current.run_id} is the first published run: there is no earlier run to roll back to")
        target = earlier[-1]
    else:
        matching = [p for p in history if p.run_id == to_run]
        if not matching:
            raise ValueError(f"run {to_run!r} was never published; published runs: {[p.run_id for p in history]}")
        target = matching[-1]
    fingerprint = hashlib.sha256(f"rollback to {target.run_id} seq {target.run_seq}".encode()).hexdigest()
    run_seq, done = claim_run(
        spark, config, run_id=run_id, kind="rollback", fingerprint=fingerprint,
        description=json.dumps({"rollback_to": target.run_id, "run_seq": target.run_seq}), publication=current,
    )
    if done:
        return history[-1]
    for table in PUBLISHED_TABLES:
        counts = sync_to_version(spark, config, table, target.version_of(table), run_id=run_id, run_seq=run_seq)
        log.info("rollback %s: %s restored to version %d of run %s: %s", run_id, table.name,
                 target.version_of(table), target.run_id, counts)
    published = commit_publication(
        spark, config, run_id=target.run_id, run_seq=run_seq, kind="rollback", model_version=target.model_version,
        input_fingerprint=target.input_fingerprint, figures={"restored_run_seq": target.run_seq},
    )
    register_tables(spark, config)
    register_published_views(spark, config, published)
    return published
