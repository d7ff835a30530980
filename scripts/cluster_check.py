"""The jobs on a real Spark standalone cluster give the tables a local run gives, also when a worker dies mid-run.

    .venv/bin/python scripts/cluster_check.py [--items 100] [--port 7077] [--work DIR] [--report FILE]

From the repository root, every job submitted with ``./spark-submit.sh`` exactly as a user would:

1. A work folder as ``scripts/fault_injection.py`` builds it: ``--items`` real photos, a night-1
   catalog and a night-2 catalog (5 % of items changed: prices, bands, categories, photos, new and
   deleted items).
2. **Local run**, ``--master local[*]``, plain paths: ingest night-1, train, refresh night-1,
   refresh night-2. The store is copied after night-1.
3. A standalone cluster (``scripts/standalone_cluster.py``): a master on 127.0.0.1:``--port`` and two
   one-core workers on 127.0.0.2 and 127.0.0.3.
4. **Cluster run**, ``--master spark://127.0.0.1:<port>``, every path a ``file://`` URI (store,
   photos, catalogs), the local run's model in its model store: ingest night-1; refresh night-1,
   during which worker 1 is SIGKILLed with its executor and Python workers once a Python worker
   there is busy scoring; worker 1 is started again; train (Petastorm on the cluster; a new model
   version, not used below); refresh night-2. The store is copied after night-1.
5. In a local Spark session: the published ``catalog`` (without ``ingested_at``), ``embeddings``
   and ``similar_items`` and the ``publications`` rows of the two runs are compared, after night-1
   and after night-2, row for row.

The cluster is stopped whatever happens. Prints one line per check; ``--report`` writes JSON.
Exits 1 if a job fails, the kill did not land mid-task, or any table differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from count_spark_jobs import events
from fault_injection import REPO, WorkLayout, build_work, run_to_end, start
from standalone_cluster import Cluster, kill_worker, processes, python_workers, start_cluster, start_worker, stop_cluster

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "fashion-products"
BUSY_CPU_SECONDS = 1.5  # CPU a Python worker has used before it counts as busy scoring
_EMBED_STARTED = "lookalike.runs: stage embed: started"


@dataclass
class JobRun:
    """One submitted job: where it ran, how it ended, how long it took."""

    name: str
    master: str
    exit_code: int
    seconds: float
    log: str


@dataclass
class WorkerKill:
    """The worker killed during the cluster's night-1 refresh."""

    at_seconds: float = 0.0
    stage: str = ""
    busy_python_worker: int | None = None
    killed_pids: list[int] = field(default_factory=list)
    lost_tasks: int = 0  # tasks that were running on the killed executor (ExecutorLostFailure)
    executors_removed: int = 0
    task_failures: dict[str, int] = field(default_factory=dict)  # every failed task end, by reason


@dataclass
class Report:
    """Everything the check did and found."""

    items: int
    master: str
    jobs: list[JobRun] = field(default_factory=list)
    kill: WorkerKill = field(default_factory=WorkerKill)
    cluster_model: str | None = None
    differences: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    ok: bool = False
    notes: list[str] = field(default_factory=list)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[cluster-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def command(master: str, job: str, store: str, image_root: str, *extra: str) -> list[str]:
    """``./spark-submit.sh --master MASTER jobs/<job>.py --profile test`` against ``store``."""
    return ["./spark-submit.sh", "--master", master, f"jobs/{job}.py", "--profile", "test",
            "--set", f"storage.root={store}", "--set", f"catalog.image_root={image_root}",
            "--set", "spark.spark.executor.memory=2g",
            # ~25 labelled items in 100: the fixed holdout leaves 3-5 training items per category.
            "--set", "model.min_class_count=3", *extra]


def submit(report: Report, name: str, argv: list[str], logs: Path, timeout: float) -> JobRun:
    """Run one job to the end; raise if it fails."""
    log = logs / f"{name}.log"
    code, seconds = run_to_end(argv, log, timeout)
    run = JobRun(name=name, master=argv[2], exit_code=code, seconds=round(seconds, 1), log=log.name)
    report.jobs.append(run)
    progress(f"{name}: exit {code} in {seconds:.0f} s")
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}); see {log}")
    return run


def busy_python_worker(cluster: Cluster, number: int, before: dict[int, float],
                       last: dict[int, float]) -> tuple[int | None, dict[int, float]]:
    """A Python worker under worker ``number`` that is scoring now, and the CPU sample taken.

    Busy: it has used ``BUSY_CPU_SECONDS`` of CPU since ``before`` (the embed stage began) and more
    CPU since ``last`` (the previous sample), so a task is running in it at this moment, not just
    finished.
    """
    worker = cluster.workers[number]
    if worker is None:
        return None, last
    now = python_workers(worker.pid)
    busy = [pid for pid, cpu in now.items()
            if cpu - before.get(pid, 0.0) >= BUSY_CPU_SECONDS and cpu > last.get(pid, cpu)]
    return (busy[0] if busy else None), now


def task_failures(event_log: Path) -> tuple[dict[str, int], int]:
    """Failed task ends by reason, and executors removed, in one application's Spark event log."""
    failures: dict[str, int] = {}
    removed = 0
    for event in events(event_log):
        if event["Event"] == "SparkListenerTaskEnd":
            reason = event["Task End Reason"]["Reason"]
            if reason != "Success":
                failures[reason] = failures.get(reason, 0) + 1
        elif event["Event"] == "SparkListenerExecutorRemoved":
            removed += 1
    return failures, removed


def submit_killing_a_worker(report: Report, name: str, argv: list[str], logs: Path, cluster: Cluster,
                            timeout: float) -> None:
    """Run a refresh on the cluster and kill worker 1 once one of its Python workers is busy in the embed stage.

    The driver writes a Spark event log, from which the tasks the kill failed are counted.
    """
    log = logs / f"{name}.log"
    event_dir = logs / f"{name}-events"
    event_dir.mkdir()
    argv = [*argv, "--set", "spark.spark.eventLog.enabled=true", "--set", f"spark.spark.eventLog.dir=file:{event_dir}",
            "--set", "spark.spark.eventLog.compress=false"]
    began = time.monotonic()
    process = start(argv, log)
    kill = report.kill

    def watch() -> None:
        before: dict[int, float] | None = None
        last: dict[int, float] = {}
        while process.poll() is None:
            if before is None:
                if _EMBED_STARTED in log.read_text(errors="replace"):
                    before = {pid: cpu for pid, (_, _, cpu) in processes().items()}
            else:
                busy, last = busy_python_worker(cluster, 1, before, last)
                if busy is not None:
                    kill.at_seconds = round(time.monotonic() - began, 1)
                    kill.stage = "embed"
                    kill.busy_python_worker = busy
                    kill.killed_pids = kill_worker(cluster, 1)
                    progress(f"{name}: killed worker 1 ({len(kill.killed_pids)} processes) at {kill.at_seconds} s, "
                             f"Python worker {busy} busy scoring")
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = process.wait(timeout=timeout)
    except Exception:
        process.kill()
        raise
    watcher.join(timeout=5)
    (application,) = list(event_dir.iterdir())  # this job's, the only application logged there
    kill.task_failures, kill.executors_removed = task_failures(application)
    kill.lost_tasks = kill.task_failures.get("ExecutorLostFailure", 0)
    seconds = time.monotonic() - began
    report.jobs.append(JobRun(name=name, master=argv[2], exit_code=code, seconds=round(seconds, 1), log=log.name))
    progress(f"{name}: exit {code} in {seconds:.0f} s; {kill.lost_tasks} tasks lost with the executor, "
             f"failed tasks by reason {kill.task_failures}")
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}); see {log}")


def compare(report: Report, pairs: dict[str, tuple[Path, Path]], photos: Path) -> None:
    """Published tables and publications of each (local, cluster) store pair, compared row for row."""
    from lookalike.config import load_config
    from lookalike.publish import published_snapshot
    from lookalike.session import build_spark

    def config_of(store: Path) -> dict[str, Any]:
        return load_config("test", [f"storage.root={store}", f"catalog.image_root={photos}"], conf_dir=REPO / "conf")

    spark = build_spark("lookalike-cluster-check-verify", config_of(next(iter(pairs.values()))[0]), master="local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for label, (local, cluster) in pairs.items():
            found, counted = {}, {}
            snapshots = []
            for store in (local, cluster):
                _, tables = published_snapshot(spark, config_of(store))
                tables["catalog"] = tables["catalog"].drop("ingested_at")  # the time of the write
                tables["publications"] = spark.read.format("delta").load(f"{store}/tables/publications").select(
                    "run_id", "run_seq", "kind", "model_version", "catalog_version", "embeddings_version",
                    "similar_items_version")
                snapshots.append(tables)
            for name in snapshots[0]:
                a, b = snapshots[0][name], snapshots[1][name]
                found[name] = a.exceptAll(b).count() + b.exceptAll(a).count()
                counted[name] = a.count()
            report.differences[label], report.rows[label] = found, counted
            progress(f"{label}: rows {counted}, differing {found}")
    finally:
        spark.stop()


def model_version_of(store: Path) -> str:
    """The version LATEST names in a local store."""
    return (store / "models" / "LATEST").read_text(encoding="utf-8").strip()


def run(args: argparse.Namespace, work: Path, report: Report) -> None:
    """Steps 1-5 of the module docstring."""
    layout: WorkLayout = build_work(work, args.source_dir, args.items, args.seed)[0]
    logs = layout.logs
    local = work / "local"
    submit(report, "local-ingest", command("local[*]", "ingest", str(local), str(layout.photos),
                                           "--catalog", str(layout.night1), "--run-id", "ingest-1"), logs, args.job_timeout)
    submit(report, "local-train", command("local[*]", "train", str(local), str(layout.photos), "--run-id", "train-1"),
           logs, args.job_timeout)
    model = model_version_of(local)
    for night, catalog in (("night-1", layout.night1), ("night-2", layout.night2)):
        submit(report, f"local-{night}", command("local[*]", "refresh", str(local), str(layout.photos), "--catalog",
                                                 str(catalog), "--run-id", night, "--model-version", model),
               logs, args.job_timeout)
        shutil.copytree(local, work / f"local-after-{night}")

    store = work / "cluster"
    shutil.copytree(local / "models", store / "models")
    (store / "models" / "LATEST").write_text(model + "\n", encoding="utf-8")
    root, photos = f"file://{store}", f"file://{layout.photos}"
    cluster = start_cluster(work / "cluster-run", port=args.port, memory="3g")
    try:
        master = cluster.url
        progress(f"cluster up at {master}, workers on {', '.join(cluster.hosts)}")
        submit(report, "cluster-ingest", command(master, "ingest", root, photos, "--catalog", f"file://{layout.night1}",
                                                 "--run-id", "ingest-1"), logs, args.job_timeout)
        submit_killing_a_worker(report, "cluster-night-1", command(
            master, "refresh", root, photos, "--catalog", f"file://{layout.night1}", "--run-id", "night-1",
            "--model-version", model), logs, cluster, args.job_timeout)
        shutil.copytree(store, work / "cluster-after-night-1")
        if cluster.workers[1] is None:
            start_worker(cluster, 1)
        submit(report, "cluster-train", command(master, "train", root, photos, "--run-id", "train-2"), logs,
               args.job_timeout)
        report.cluster_model = model_version_of(store)
        submit(report, "cluster-night-2", command(master, "refresh", root, photos, "--catalog", f"file://{layout.night2}",
                                                  "--run-id", "night-2", "--model-version", model), logs, args.job_timeout)
        shutil.copytree(store, work / "cluster-after-night-2")
    finally:
        stop_cluster(cluster)
    compare(report, {"night-1": (work / "local-after-night-1", work / "cluster-after-night-1"),
                     "night-2": (work / "local-after-night-2", work / "cluster-after-night-2")}, layout.photos)
    if not report.kill.killed_pids:
        report.notes.append("worker 1 was never seen busy scoring: no worker was killed")
    elif report.kill.lost_tasks == 0:
        report.notes.append("no task failed with the lost executor (event log): the kill did not land mid-task")
    if report.cluster_model in (None, model):
        report.notes.append("the train job on the cluster saved no new model version")
    report.ok = (not report.notes and all(not any(d.values()) for d in report.differences.values())
                 and len(report.differences) == 2)


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when the cluster's tables equal the local run's."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100, help="photos in the catalog (default %(default)s)")
    parser.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE, help="images/<id>.jpg and labels.csv")
    parser.add_argument("--port", type=int, default=7077, help="the master's port (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the night-2 changes")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir, removed on success)")
    parser.add_argument("--report", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--job-timeout", type=float, default=1200.0, help="seconds any one job may run")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lookalike-cluster-check-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(items=args.items, master=f"spark://127.0.0.1:{args.port}")
    try:
        run(args, work, report)
    except Exception as error:  # reported, not raised: the report says what failed
        report.notes.append(f"{type(error).__name__}: {error}")
    for label, found in report.differences.items():
        print(f"after {label}: rows {report.rows[label]}; differing rows local vs cluster {found}")
    print(f"worker kill: {asdict(report.kill)}")
    print(f"cluster check: {'ok' if report.ok else 'FAILED'} {'; '.join(report.notes)}")
    if args.report:
        args.report.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    if report.ok and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    elif not report.ok:
        print(f"work folder kept: {work}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
