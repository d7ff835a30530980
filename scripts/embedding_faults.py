"""Faults while embedding: a killed Python worker, a killed executor, a straggler under speculation.

    .venv/bin/python scripts/embedding_faults.py [--photos DIR] [--copies 4] [--report FILE]
                                                 [--faults python-worker executor speculation]

For each fault, real photos are scored twice through the production pandas UDF
(``lookalike.scoring.make_score_udf``), each time in a fresh Spark application: once clean,
once with the fault injected from outside (signals to the processes Spark started; nothing in
the job's code knows about the test). Every photo's predicted category, confidence and
embedding must be the same in both. The faults:

- ``python-worker``: ``local[2,4]`` (a task may be tried 4 times); the first Python worker
  busy scoring gets SIGKILL.
- ``executor``: a standalone cluster of two workers, on 127.0.0.2 and 127.0.0.3 (two "hosts"
  on one machine); one executor JVM running a scoring task gets SIGKILL.
- ``speculation``: the same cluster with ``spark.speculation=true``; one busy Python worker is
  stopped (SIGSTOP) for ``--stall`` seconds, so its task straggles. A speculative copy on the
  other host must finish the job long before the stall ends. (Spark never runs a copy on the
  host of the original attempt, so this needs two hosts.)

Prints one line per fault and writes ``--report`` as JSON. Exits 1 if any fault changes a
result or was not actually injected mid-task.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pyspark.sql import DataFrame, SparkSession

from lookalike.config import load_config
from lookalike.model_store import save_bundle, ship_scorer
from lookalike.scoring import make_score_udf
from standalone_cluster import processes, python_workers, start_cluster, stop_cluster

REPO = Path(__file__).resolve().parents[1]

DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "fashion-products" / "images"
CLASSES = ["Bags", "Shoes", "Topwear"]
PARTITIONS = 2  # one scoring task per core (local) or per single-core executor (cluster)
TOLERANCE = 1e-6
BUSY_CPU_SECONDS = 1.5  # CPU a Python worker has used in this job before it counts as mid-task
MASTER_PORT = 7177  # not 7077: scripts/cluster_check.py's cluster may be up at the same time


@dataclass
class FaultResult:
    """One fault: what was done, to which process, and whether the scores stayed the same."""

    fault: str
    master: str
    photos: int
    clean_seconds: float
    faulty_seconds: float
    injected: str = ""
    failed_tasks: int = 0  # failed task attempts plus stage retries
    differing_photos: int = 0
    max_difference: float = 0.0
    ok: bool = False
    notes: list[str] = field(default_factory=list)


def executor_of(worker: int) -> int | None:
    """The executor JVM a Python worker runs under, if any (none in local mode)."""
    table = processes()
    pid = worker
    while pid in table and pid != os.getpid():
        if "CoarseGrainedExecutorBackend" in table[pid][1]:
            return pid
        pid = table[pid][0]
    return None


def busiest_worker(before: dict[int, float]) -> int | None:
    """The Python worker that used the most CPU since ``before`` (new workers count from zero)."""
    now = python_workers(os.getpid())
    if not now:
        return None
    return max(now, key=lambda pid: now[pid] - before.get(pid, 0.0))


@contextmanager
def spark_app(master: str, name: str, extra: dict[str, str]) -> Iterator[SparkSession]:
    """A fresh Spark application (new executors and Python workers), stopped on exit."""
    builder = (
        SparkSession.builder.master(master).appName(name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .config("spark.python.worker.reuse", "true")
    )
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        yield spark
    finally:
        spark.stop()
        SparkSession._instantiatedSession = None  # the next application starts from a clean builder


def score(spark: SparkSession, photos: list[tuple[str, bytes]], config: dict, manifest) -> tuple[dict, float, int]:
    """Score every photo; (name -> (category, confidence, embedding), seconds, failed task attempts + stage retries)."""
    ship_scorer(spark, config, manifest)
    udf = make_score_udf(manifest, tf_threads=1)
    frame: DataFrame = spark.createDataFrame(photos, "name string, content binary")
    group = f"score-{time.monotonic_ns()}"
    spark.sparkContext.setJobGroup(group, "embedding under a fault")
    started = time.perf_counter()
    rows = (
        frame.repartition(PARTITIONS, "name").sortWithinPartitions("name")
        .withColumn("out", udf("content")).select("name", "out.*").collect()
    )
    seconds = time.perf_counter() - started
    tracker = spark.sparkContext.statusTracker()
    # Failed attempts, plus stage retries: a lost executor takes its shuffle output along, so its
    # stage may be run again as a new attempt, whose counters start from zero.
    failed = 0
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else []:
            stage_info = tracker.getStageInfo(stage)
            failed += (stage_info.numFailedTasks + stage_info.currentAttemptId) if stage_info else 0
    return {r["name"]: (r["predicted_category"], r["confidence"], np.array(r["embedding"])) for r in rows}, seconds, failed


def compare(clean: dict, faulty: dict, result: FaultResult) -> None:
    """Count photos whose category differs or whose outputs differ beyond the tolerance."""
    differing, largest = 0, 0.0
    for name, (category, confidence, embedding) in clean.items():
        other = faulty.get(name)
        if other is None or other[0] != category:
            differing += 1
            continue
        gap = max(abs(other[1] - confidence), float(np.abs(other[2] - embedding).max()))
        largest = max(largest, gap)
        differing += gap > TOLERANCE
    differing += len(set(faulty) - set(clean))
    result.differing_photos, result.max_difference = differing, largest


def inject(fault: str, stall: float, done: threading.Event, result: FaultResult) -> None:
    """Wait until a Python worker is busy scoring, then apply the fault to it (or to its executor).

    A worker only uses CPU while it runs a task, so one that has used ``BUSY_CPU_SECONDS`` since
    the job started is mid-task: the fault cannot land between tasks.
    """
    started, before = time.monotonic(), python_workers(os.getpid())
    worker = None
    while worker is None:
        if done.wait(0.2):
            result.notes.append("the job ended before a Python worker got busy")
            return
        now = python_workers(os.getpid())
        busy = sorted(pid for pid, cpu in now.items() if cpu - before.get(pid, 0.0) >= BUSY_CPU_SECONDS)
        worker = busy[0] if busy else None
    at = time.monotonic() - started
    if fault == "python-worker":
        os.kill(worker, signal.SIGKILL)
        result.injected = f"SIGKILL to Python worker {worker} at {at:.1f} s"
    elif fault == "executor":
        executor = executor_of(worker)
        if executor is None:
            result.notes.append("no executor JVM above the busy worker")
            return
        os.kill(executor, signal.SIGKILL)
        result.injected = f"SIGKILL to executor JVM {executor} (running worker {worker}) at {at:.1f} s"
    else:
        os.kill(worker, signal.SIGSTOP)
        result.injected = f"SIGSTOP to Python worker {worker} at {at:.1f} s for up to {stall:.0f} s"
        done.wait(stall)
        try:
            os.kill(worker, signal.SIGCONT)
        except ProcessLookupError:
            pass  # Spark killed the straggler once its copy won


def run_fault(fault: str, master: str, extra: dict[str, str], photos: list[tuple[str, bytes]], config: dict,
              manifest, stall: float) -> FaultResult:
    """Clean run, then the same run with the fault; compare."""
    with spark_app(master, f"clean-{fault}", extra) as spark:
        clean, clean_seconds, _ = score(spark, photos, config, manifest)
    result = FaultResult(fault=fault, master=master, photos=len(photos), clean_seconds=round(clean_seconds, 1),
                         faulty_seconds=0.0)
    with spark_app(master, f"{fault}-fault", extra) as spark:
        done = threading.Event()
        injector = threading.Thread(target=inject, args=(fault, stall, done, result), daemon=True)
        injector.start()
        try:
            faulty, faulty_seconds, failed = score(spark, photos, config, manifest)
        finally:
            done.set()
            injector.join()
    result.faulty_seconds, result.failed_tasks = round(faulty_seconds, 1), failed
    compare(clean, faulty, result)
    injected = bool(result.injected)
    if fault == "speculation":
        # The copy must have won: the job ended well before the stopped worker was let go.
        finished_early = faulty_seconds < clean_seconds + stall * 0.8
        if not finished_early:
            result.notes.append("the job waited for the stopped worker: no speculative copy finished it")
        result.ok = injected and finished_early and result.differing_photos == 0
    else:
        if result.failed_tasks == 0:
            result.notes.append("no task failed and no stage was retried: the kill did not land mid-task")
        result.ok = injected and result.failed_tasks > 0 and result.differing_photos == 0
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the faults; print a line each; exit 1 if any is not ok."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of .jpg photos")
    parser.add_argument("--limit", type=int, default=200, help="photos taken from the folder (name order)")
    parser.add_argument("--copies", type=int, default=4, help="rows per photo, so each task runs for a while")
    parser.add_argument("--stall", type=float, default=120.0, help="seconds the straggler is stopped")
    parser.add_argument("--faults", nargs="+", default=["python-worker", "executor", "speculation"],
                        choices=["python-worker", "executor", "speculation"])
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers run this interpreter, which has the job's packages

    files = sorted(args.photos.glob("*.jpg"))[: args.limit]
    photos = [(f"{f.stem}-{copy}", f.read_bytes()) for f in files for copy in range(args.copies)]
    from lookalike.models import build_classifier, build_scorer  # TensorFlow is imported here only

    results = []
    with tempfile.TemporaryDirectory(prefix="embedding-faults-") as tmp:
        work = Path(tmp)
        config = load_config("test", [f"storage.root={work / 'store'}"], conf_dir=REPO / "conf")
        classifier = build_classifier(num_classes=len(CLASSES), image_size=32, embedding_dim=16, seed=3)
        with spark_app("local[1]", "save-model", {}) as spark:
            manifest = save_bundle(spark, config, build_scorer(classifier), classes=CLASSES, embedding="classifier", metrics={})
        if "python-worker" in args.faults:
            results.append(run_fault("python-worker", "local[2,4]", {}, photos, config, manifest, args.stall))
        cluster_faults = [f for f in args.faults if f != "python-worker"]
        if cluster_faults:
            cluster = start_cluster(work, port=MASTER_PORT)
            try:
                master = cluster.url
                common = {"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.task.maxFailures": "4"}
                speculation = {
                    "spark.speculation": "true", "spark.speculation.interval": "200ms",
                    "spark.speculation.multiplier": "1.5", "spark.speculation.quantile": "0.5",
                    "spark.speculation.minTaskRuntime": "1s",
                }
                for fault in cluster_faults:
                    extra = {**common, **(speculation if fault == "speculation" else {})}
                    results.append(run_fault(fault, master, extra, photos, config, manifest, args.stall))
            finally:
                stop_cluster(cluster)
    for r in results:
        print(f"{r.fault:14s} {'ok' if r.ok else 'FAILED':6s} clean {r.clean_seconds:6.1f} s"
              f"  with fault {r.faulty_seconds:6.1f} s"
              f"  failed tasks {r.failed_tasks}  differing photos {r.differing_photos}/{r.photos}"
              f"  max difference {r.max_difference:.1e}  [{r.injected}] {'; '.join(r.notes)}")
    if args.report:
        args.report.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
