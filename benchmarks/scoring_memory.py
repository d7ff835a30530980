"""Benchmark: peak memory of scoring 6000x4000 photos at the configured Arrow batch size, vs. catalog photos.

    .venv/bin/python benchmarks/scoring_memory.py [--photos N] [--profile local] [--no-fix] [--uncapped]

What it does, with the configuration of ``--profile`` (default ``local``: spark.driver.memory=6g):

1. prepare (one Spark session): a model bundle of the configured architecture (untrained: weights
   do not change memory; ``--models-from`` uses a trained one), and two Delta ``images`` tables:
   ``catalog``, N rows of the largest real catalog photo, and ``large``, ``--photos`` rows (default
   N) of 6000x4000 JPEGs of about 5.6 MB (``--noise``). Rows repeat a few encoded photos, each made
   distinct by bytes appended after the JPEG end marker (decoders ignore them), so every row
   carries a full file.
2. measure (a fresh Spark JVM and fresh Python workers per scenario): the plan of
   ``lookalike.scoring.score_images`` -- read ``images``, repartition by hash, sort within
   partitions, the real pandas UDF of ``make_score_udf``, persist, count -- with
   ``spark.sql.execution.arrow.maxRecordsPerBatch`` = ``arrow_batch_rows(...)`` as scoring sets it.
   N is that row count, and everything goes to one partition, so one task gets one full
   configured batch. (``score_images`` itself spreads photos over up to 2 x cores partitions,
   so it reaches a full batch only with more than 4 x N photos on 2 cores; the batch is the same.)
   Spark 4.0 also closes a batch at ``spark.sql.execution.arrow.maxBytesPerBatch`` (an internal
   setting, default 256 MiB); ``scoring.configure_arrow_batches`` sets it to ``embed.arrow_batch_bytes``.
   Scenarios ``catalog`` and ``large+cap`` use the settings as scoring makes them; ``large`` the
   same photos with Spark's default byte cap (scoring before 2026-11-21); ``--no-fix`` skips
   ``large+cap``. ``--uncapped`` adds ``large-uncapped``: the
   cap lifted (as before Spark 4.0), so batches hold the full configured row count.

Memory is sampled from outside every 50 ms: VmRSS/VmHWM in /proc of the Spark JVM and of the
Python worker processes (the ``pyspark.daemon`` and its forked workers; peaks reset through
/proc/<pid>/clear_refs when a scenario starts), and the JVM's heap in use through its MemoryMXBean.
It prints the configured limits and, side by side per scenario, the rows per Arrow batch, the
photo bytes per batch they imply, the peaks and peak/limit, plus a projection onto the cluster
profile's executors. A guard kills this benchmark's own Spark processes if they together pass
``--ceiling-gib``, so a run cannot take the machine down. Work files go under ``--work`` (deleted
at the end unless ``--keep``).

Run time on a 2-vCPU machine: 8 to 12 minutes at the default with ``--uncapped`` (682 large
photos, 3.8 GB moved through Spark per scenario). ``--photos 96`` takes about 5 but understates
the large-photo worker peak (two batches only: a worker's memory grows over its first batches),
and cannot show ``large-uncapped`` failing (96 photos stay under Arrow's limit).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULT_MARKER = "SCORING_MEMORY_RESULT "
SCENARIOS = ("catalog", "large", "large+cap", "large-uncapped")
MAX_BYTES_KEY = "spark.sql.execution.arrow.maxBytesPerBatch"  # lookalike.scoring.ARROW_MAX_BYTES_KEY
# The largest value Spark accepts ("less than INT_MAX"): no byte cap in practice.
UNCAPPED = 2**31 - 2
SAMPLE_SECONDS = 0.05
HEAP_SAMPLE_SECONDS = 0.2
ROWS_PER_FILE = 16
MIB = 1024 * 1024
GIB = 1024 * MIB
# Spark's defaults for a cluster executor container: overhead = max(384 MiB, 10% of the heap).
MIN_OVERHEAD = 384 * MIB
OVERHEAD_FACTOR = 0.10


# --------------------------------------------------------------------------- /proc sampling


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process in bytes; empty if it has exited.

    Parameters
    ----------
    pid : int
        Process id.

    Returns
    -------
    dict
        ``{"VmRSS": bytes, "VmHWM": bytes}`` (whichever the kernel reports).
    """
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, amount = line.split(":", 1)
                    values[name] = int(amount.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return values


def reset_peak(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0); ignored where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def python_workers(jvm_pid: int) -> list[int]:
    """Pids of the JVM's Python workers: the ``pyspark.daemon`` it started and the workers forked from it.

    Parameters
    ----------
    jvm_pid : int
        The Spark JVM (in local mode the driver, which is also the executor).

    Returns
    -------
    list of int
        Descendants of the JVM whose command line names pyspark.
    """
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                # The command name may hold spaces and parentheses: the fields start after the last ')'.
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found: list[int] = []
    frontier = [jvm_pid]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                frontier.append(pid)
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        if b"pyspark" in handle.read():
                            found.append(pid)
                except OSError:
                    continue
    return found


@dataclass
class Peaks:
    """Peaks seen while one scenario ran (bytes)."""

    jvm_rss_start: int = 0
    jvm_rss_peak: int = 0
    jvm_heap_peak: int = 0
    worker_rss_peak: int = 0
    workers_sum_peak: int = 0
    workers_seen: int = 0
    ceiling_hit: str | None = None
    per_worker: dict[int, int] = field(default_factory=dict)


class MemorySampler(threading.Thread):
    """Samples the Spark JVM and its Python workers from outside until stopped.

    Parameters
    ----------
    jvm_pid : int
        The Spark JVM.
    heap_used : callable
        Returns the JVM's heap in use in bytes (a MemoryMXBean call through Py4J).
    ceiling : int
        Bytes; when JVM plus workers pass it, the workers (and, if needed, the JVM) are killed.
    """

    def __init__(self, jvm_pid: int, heap_used: Callable[[], int], ceiling: int) -> None:
        super().__init__(daemon=True)
        self.jvm_pid, self.heap_used, self.ceiling = jvm_pid, heap_used, ceiling
        self.peaks = Peaks()
        self._stop_event = threading.Event()

    def start(self) -> None:
        """Reset the kernel's peak counters of the JVM and live workers, then start sampling."""
        for pid in [self.jvm_pid, *python_workers(self.jvm_pid)]:
            reset_peak(pid)
        self.peaks.jvm_rss_start = proc_status(self.jvm_pid).get("VmRSS", 0)
        super().start()

    def run(self) -> None:
        """Sample until :meth:`stop`."""
        next_heap = 0.0
        workers: list[int] = []
        next_scan = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now >= next_scan:
                # Scanning /proc costs more than reading a few status files: rescan a few times a second.
                workers, next_scan = python_workers(self.jvm_pid), now + 0.25
            self._sample(workers)
            if now >= next_heap:
                try:
                    self.peaks.jvm_heap_peak = max(self.peaks.jvm_heap_peak, int(self.heap_used()))
                except Exception:  # the JVM may be gone (killed by the guard, or shutting down)
                    pass
                next_heap = now + HEAP_SAMPLE_SECONDS
            self._stop_event.wait(SAMPLE_SECONDS)

    def _sample(self, workers: list[int]) -> None:
        jvm = proc_status(self.jvm_pid)
        # VmHWM catches spikes shorter than the sampling interval.
        self.peaks.jvm_rss_peak = max(self.peaks.jvm_rss_peak, jvm.get("VmRSS", 0), jvm.get("VmHWM", 0))
        total = 0
        for pid in workers:
            status = proc_status(pid)
            if not status:
                continue
            rss = status.get("VmRSS", 0)
            total += rss
            peak = max(rss, status.get("VmHWM", 0))
            self.peaks.per_worker[pid] = max(self.peaks.per_worker.get(pid, 0), peak)
        self.peaks.workers_sum_peak = max(self.peaks.workers_sum_peak, total)
        self.peaks.worker_rss_peak = max(self.peaks.per_worker.values(), default=0)
        self.peaks.workers_seen = len(self.peaks.per_worker)
        if total + jvm.get("VmRSS", 0) > self.ceiling and self.peaks.ceiling_hit is None:
            self._kill(workers, total + jvm.get("VmRSS", 0))

    def _kill(self, workers: list[int], seen: int) -> None:
        # Only this benchmark's own Spark processes, by pid: the task fails and the scenario reports it.
        self.peaks.ceiling_hit = f"JVM + Python workers reached {seen / GIB:.1f} GiB > ceiling {self.ceiling / GIB:.1f} GiB"
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc_status(self.jvm_pid).get("VmRSS", 0) > self.ceiling:
            os.kill(self.jvm_pid, signal.SIGKILL)

    def stop(self) -> Peaks:
        """Stop sampling, take a last sample and return the peaks."""
        self._stop_event.set()
        self.join()
        self._sample(python_workers(self.jvm_pid))
        return self.peaks


# --------------------------------------------------------------------------- configuration


def parse_spark_memory(text: str | None, default_unit: str = "m") -> int | None:
    """Bytes in a Spark memory setting (``6g``, ``512m``, ``8192``: MiB without a unit); None if unset.

    Parameters
    ----------
    text : str or None
        The setting's value.
    default_unit : str
        Unit of a bare number (Spark reads executor and driver memory as MiB).

    Returns
    -------
    int or None
    """
    if text is None or str(text).strip() == "":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"not a Spark memory size: {text!r}")
    number, unit = int(match.group(1)), match.group(2) or default_unit
    return number * 1024 ** "bkmgtp".index(unit)


def load(profile: str, root: Path, overrides: list[str], conf_dir: Path) -> dict[str, Any]:
    """The job configuration with storage under ``root`` and an in-memory SQL catalog (no Derby for a benchmark)."""
    from lookalike.config import load_config

    return load_config(profile, [f"storage.root={root}", "storage.metastore=in-memory", *overrides], conf_dir=conf_dir)


# --------------------------------------------------------------------------- prepare


def large_jpeg(width: int, height: int, noise: float, seed: int) -> bytes:
    """A photo-like JPEG (smooth colour gradients plus sensor-like noise) at quality 92.

    Parameters
    ----------
    width, height : int
        Pixels.
    noise : float
        Standard deviation of the grey noise in levels; it sets the file size (4: ~5.6 MB at 6000x4000).
    seed : int
        Noise seed, so several distinct files can be made.

    Returns
    -------
    bytes
        The encoded file.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    phase = seed * 0.7
    channels = np.broadcast_arrays(200 * x + 40 * y, 120 + 80 * np.sin(6 * x + 3 * y + phase), 220 - 150 * y + 0 * x)
    pixels = np.stack(channels, axis=-1) + rng.normal(0, noise, (height, width, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def write_images(spark: Any, config: dict[str, Any], photos: list[bytes], rows: int) -> None:
    """Write ``rows`` rows to the config's ``images`` table, cycling through ``photos``.

    Each row's content is a photo plus a row-numbered trailer after the end of the image, so the
    hashes differ while every row carries the whole file. The rows are built in the JVM: the
    photos cross Py4J once, not once per row.
    """
    from pyspark.sql import functions as F

    from lookalike.tables import conform, ensure_table, table_path
    from schemas import IMAGES

    bases = spark.createDataFrame([(i, p) for i, p in enumerate(photos)], "base int, photo binary")
    content = F.concat(F.col("photo"), F.encode(F.format_string("\nlookalike-benchmark-row-%08d", F.col("id")), "UTF-8"))
    frame = (
        # Few rows per file: with 341 of these photos per task the Parquet writer ran the 6g heap
        # out of memory (it buffers a row group and checks its size only every so many rows).
        spark.range(0, rows, 1, max(1, math.ceil(rows / ROWS_PER_FILE)))
        .withColumn("base", (F.col("id") % len(photos)).cast("int"))
        .join(F.broadcast(bases), "base")
        .select(content.alias("content"))
        .select(
            F.sha2("content", 256).alias("image_hash"),
            "content",
            F.length("content").cast("long").alias("size_bytes"),
            F.lit("benchmark-scoring-memory").alias("run_id"),
        )
    )
    ensure_table(spark, config, IMAGES)
    conform(frame, IMAGES).write.format("delta").mode("overwrite").save(table_path(config, IMAGES))


def save_model(spark: Any, config: dict[str, Any], models_from: str | None) -> None:
    """A model bundle in the config's model store: a copy of ``models_from``, or the configured architecture untrained."""
    from lookalike.model_store import model_root, save_bundle

    if models_from:
        shutil.copytree(models_from, model_root(config), dirs_exist_ok=True)  # the benchmark's store is local
        return
    from lookalike import models

    model = config["model"]
    size, dim = int(model["image_size"]), int(model["embedding_dim"])
    classes = ["Bags", "Bottomwear", "Eyewear", "Flip Flops", "Shoes", "Topwear", "Watches"]
    classifier = models.build_classifier(num_classes=len(classes), image_size=size, embedding_dim=dim, seed=7)
    embedder = None
    if model["embedding"] == "autoencoder":
        _, embedder = models.build_autoencoder(image_size=size, embedding_dim=dim, seed=7)
    elif model["embedding"] != "classifier":
        raise SystemExit(f"model.embedding = {model['embedding']!r}: pass --models-from with a trained bundle")
    scorer = models.build_scorer(classifier, embedder)
    save_bundle(spark, config, scorer, classes=classes, embedding=str(model["embedding"]), metrics={"benchmark": "untrained"})


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Stage ``prepare``: the model bundle and the two images tables. Returns what was written."""
    from lookalike.scoring import configured_batch_rows
    from lookalike.session import build_spark

    work = Path(args.work)
    base = load(args.profile, work / "catalog", args.set, args.conf_dir)
    rows = configured_batch_rows(base, image_size=int(base["model"]["image_size"]))
    catalog_photos = sorted((Path(args.source_dir) / "images").glob("*.jpg"), key=lambda p: (p.stat().st_size, p.name))
    if not catalog_photos:
        raise SystemExit(f"no catalog photos in {Path(args.source_dir) / 'images'}")
    largest = catalog_photos[-1]
    large = [large_jpeg(6000, 4000, args.noise, seed) for seed in range(args.distinct)]
    spark = build_spark("lookalike-benchmark-scoring-memory-prepare", base, master=args.master)
    spark.sparkContext.setLogLevel("WARN")
    save_model(spark, load(args.profile, work / "model", args.set, args.conf_dir), args.models_from)
    write_images(spark, base, [largest.read_bytes()], rows)
    write_images(spark, load(args.profile, work / "large", args.set, args.conf_dir), large, args.photos or rows)
    spark.stop()
    return {
        "rows": rows,
        "large_rows": args.photos or rows,
        "catalog_photo": {"name": largest.name, "bytes": largest.stat().st_size},
        "large_photo_bytes": [len(p) for p in large],
    }


# --------------------------------------------------------------------------- measure


def short_error(error: BaseException) -> str:
    """The root cause of a (Py4J) error on one line."""
    text = str(error)
    causes = re.findall(r"Caused by: ([^\n]+)", text)
    line = causes[-1] if causes else next((ln for ln in text.splitlines() if ln.strip()), repr(error))
    return line.strip()[:300]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Stage ``measure``: score one scenario's table in a fresh session and sample memory.

    Returns
    -------
    dict
        Settings used, the outcome and the :class:`Peaks`.
    """
    from pyspark.sql import functions as F
    from pyspark.storagelevel import StorageLevel

    from lookalike.model_store import load_manifest, ship_scorer
    from lookalike.scoring import make_score_udf
    from lookalike.session import build_spark
    from lookalike.tables import read_table
    from schemas import IMAGES

    work = Path(args.work)
    table = "large" if args.scenario.startswith("large") else "catalog"
    config = load(args.profile, work / table, args.set, args.conf_dir)
    model_config = load(args.profile, work / "model", args.set, args.conf_dir)
    spark = build_spark(f"lookalike-benchmark-scoring-memory-{args.scenario}", config, master=args.master)
    manifest = load_manifest(spark, model_config)
    spark.sparkContext.setLogLevel("ERROR")
    jvm = spark.sparkContext._jvm
    jvm_pid = int(jvm.java.lang.ProcessHandle.current().pid())
    memory_bean = jvm.java.lang.management.ManagementFactory.getMemoryMXBean()

    from lookalike.scoring import configure_arrow_batches

    rows = configure_arrow_batches(spark, config, image_size=manifest.image_size)  # as score_images sets them
    if args.scenario == "large":
        spark.conf.unset(MAX_BYTES_KEY)  # Spark's default, as scoring did before it set a byte cap
    elif args.scenario == "large-uncapped":
        spark.conf.set(MAX_BYTES_KEY, str(UNCAPPED))
    # The byte cap in force.
    max_bytes = parse_spark_memory(spark.conf.get(MAX_BYTES_KEY), default_unit="b")
    images = read_table(spark, config, IMAGES)
    sizes = images.agg(F.count("*"), F.max("size_bytes"), F.avg("size_bytes")).first()
    n, largest, mean = int(sizes[0]), int(sizes[1]), float(sizes[2])
    ship_scorer(spark, model_config, manifest)
    score = make_score_udf(
        manifest, tf_threads=int(config["embed"]["tf_threads_per_task"]),
        model_batch_rows=int(config["embed"]["model_batch_rows"]),
    )

    sampler = MemorySampler(jvm_pid, lambda: memory_bean.getHeapMemoryUsage().getUsed(), int(args.ceiling_gib * GIB))
    sampler.start()
    start = time.perf_counter()
    outcome, scored, failed = "ok", 0, 0
    try:
        # The plan of score_images, in one partition so that one task gets one full batch.
        frame = (
            images.select("image_hash", "content")
            .repartition(args.partitions, "image_hash")
            .sortWithinPartitions("image_hash")
            .withColumn("out", score("content"))
            .select("image_hash", "out.*")
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        scored = frame.count()
        failed = frame.where(F.col("decode_error").isNotNull()).count()
        frame.unpersist()
    except Exception as error:  # noqa: BLE001 -- the failure is the measurement
        outcome = f"failed: {short_error(error)}"
    seconds = time.perf_counter() - start
    peaks = sampler.stop()
    if peaks.ceiling_hit:
        outcome = f"aborted: {peaks.ceiling_hit}"
    heap_max = int(jvm.java.lang.Runtime.getRuntime().maxMemory()) if not peaks.ceiling_hit else 0
    # Rows Spark puts in one batch: the row limit, or fewer when the byte cap is reached first
    # (Spark checks the cap after each row, so a batch passes it by at most one row).
    batch_rows = min(rows, n)
    if max_bytes and max_bytes < UNCAPPED:
        batch_rows = min(batch_rows, max(1, math.ceil(max_bytes / mean)))
    peaks_dict = asdict(peaks)
    peaks_dict.pop("per_worker")
    result = {
        "scenario": args.scenario,
        "photos": n,
        "photo_bytes_max": largest,
        "photo_bytes_mean": mean,
        "max_records_per_batch": rows,
        "max_bytes_per_batch": max_bytes,
        "max_bytes_is_spark_default": args.scenario == "large",
        "batch_rows": batch_rows,
        "batch_content_bytes": int(batch_rows * mean),
        "partitions": args.partitions,
        "outcome": outcome,
        "scored": scored,
        "decode_errors": failed,
        "seconds": round(seconds, 1),
        "jvm_heap_max": heap_max,
        **peaks_dict,
    }
    try:
        spark.stop()
    except Exception:  # noqa: BLE001 -- the guard may have killed the JVM
        pass
    return result


# --------------------------------------------------------------------------- report


def gib(value: float | None) -> str:
    """Bytes as GiB with two decimals, or a dash."""
    return "-" if value is None else f"{value / GIB:.2f}"


def mib(value: float | None) -> str:
    """Bytes as MiB with one decimal, or a dash."""
    return "-" if value is None else f"{value / MIB:,.1f}"


def max_bytes_label(result: dict[str, Any]) -> str:
    """The byte cap of a scenario's batches, marked where it is Spark's default."""
    value = result["max_bytes_per_batch"]
    if value is None or value >= UNCAPPED:
        return "none"
    return f"{value / MIB:,.0f} MiB" + (" (Spark default)" if result["max_bytes_is_spark_default"] else "")


def ratio(value: float, limit: int | None) -> str:
    """value / limit as a percentage, or ``no limit``."""
    return "no limit" if not limit else f"{100 * value / limit:.0f}%"


def limits(profile: str, conf_dir: Path) -> dict[str, Any]:
    """The memory settings of ``profile`` (the measured run) and of the cluster profile (the projection)."""
    from lookalike.config import load_config

    def settings(name: str) -> dict[str, Any]:
        spark = load_config(name, conf_dir=conf_dir).get("spark", {})
        executor = parse_spark_memory(spark.get("spark.executor.memory")) or parse_spark_memory("1g")
        overhead = parse_spark_memory(spark.get("spark.executor.memoryOverhead"))
        return {
            "profile": name,
            "driver_memory": parse_spark_memory(spark.get("spark.driver.memory")) or parse_spark_memory("1g"),
            "executor_memory": executor,
            "executor_memory_set": "spark.executor.memory" in spark,
            "executor_cores": int(spark.get("spark.executor.cores", 1)),
            "memory_overhead": overhead or max(MIN_OVERHEAD, int(OVERHEAD_FACTOR * executor)),
            "memory_overhead_set": overhead is not None,
            "pyspark_memory": parse_spark_memory(spark.get("spark.executor.pyspark.memory")),
        }

    return {"run": settings(profile), "cluster": settings("cluster")}


def report(prepared: dict[str, Any], results: list[dict[str, Any]], conf: dict[str, Any], args: argparse.Namespace) -> str:
    """The printed report: limits, the side-by-side table and the cluster projection."""
    run, cluster = conf["run"], conf["cluster"]
    lines = [
        f"profile {run['profile']}, master {args.master}: spark.driver.memory = {gib(run['driver_memory'])} GiB "
        f"(local mode: the executor is the driver JVM; its max heap as the JVM reports it: "
        f"{gib(max((r['jvm_heap_max'] for r in results), default=0))} GiB); spark.executor.pyspark.memory = "
        f"{gib(run['pyspark_memory']) + ' GiB' if run['pyspark_memory'] else 'not set (Python workers unlimited)'}",
        f"catalog photo: {prepared['catalog_photo']['name']} ({prepared['catalog_photo']['bytes']:,} bytes, the largest in "
        f"{args.source_dir}); large photos: 6000x4000 JPEG, {', '.join(f'{b:,}' for b in prepared['large_photo_bytes'])} bytes",
        "",
    ]
    header = [
        "scenario", "photos", "photo MB", "maxRecords", "maxBytes", "rows/batch", "MB/batch",
        "worker RSS peak MiB", "workers sum MiB", "JVM heap peak GiB", "heap/limit", "JVM RSS peak GiB", "RSS/limit",
        "seconds", "outcome",
    ]
    rows = []
    for r in results:
        limit = run["driver_memory"]
        rows.append([
            r["scenario"], str(r["photos"]), f"{r['photo_bytes_mean'] / 1e6:.2f}", str(r["max_records_per_batch"]),
            max_bytes_label(r), str(r["batch_rows"]),
            f"{r['batch_content_bytes'] / 1e6:,.0f}", mib(r["worker_rss_peak"]), mib(r["workers_sum_peak"]),
            gib(r["jvm_heap_peak"]), ratio(r["jvm_heap_peak"], limit), gib(r["jvm_rss_peak"]),
            ratio(r["jvm_rss_peak"], limit), str(r["seconds"]), r["outcome"],
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
    python_budget = cluster["pyspark_memory"] or cluster["memory_overhead"]
    budget_name = "spark.executor.pyspark.memory" if cluster["pyspark_memory"] else (
        "spark.executor.memoryOverhead" + ("" if cluster["memory_overhead_set"] else " (default max(384 MiB, 10%))")
    )
    lines += [
        "",
        f"cluster profile projection (conf/cluster.toml): spark.executor.memory = {gib(cluster['executor_memory'])} GiB, "
        f"spark.executor.cores = {cluster['executor_cores']} -> {cluster['executor_cores']} concurrent tasks, each with "
        f"its own Python worker; Python workers are charged to {budget_name} = {mib(python_budget)} MiB.",
    ]
    for r in results:
        if not r["outcome"].startswith("ok"):
            lines.append(f"  {r['scenario']}: did not complete ({r['outcome']})")
            continue
        workers = cluster["executor_cores"] * r["worker_rss_peak"]
        # YARN and Kubernetes enforce the whole container: heap + overhead (+ pyspark memory).
        container = cluster["executor_memory"] + cluster["memory_overhead"] + (cluster["pyspark_memory"] or 0)
        lines.append(
            f"  {r['scenario']}: {cluster['executor_cores']} x {mib(r['worker_rss_peak'])} MiB = {mib(workers)} MiB of Python "
            f"workers = {ratio(workers, python_budget)} of {budget_name}; they leave {gib(container - workers)} GiB of the "
            f"{gib(container)} GiB container for a JVM with an {gib(cluster['executor_memory'])} GiB heap"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def run_stage(stage: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Run a stage in a child process (a fresh JVM each) and return the JSON it prints."""
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, *extra, *args.passthrough]
    log_path = Path(args.work) / f"{stage}{'-' + extra[-1] if extra else ''}.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=os.getcwd())
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    raise SystemExit(f"stage {stage} {extra} failed (exit {done.returncode}); end of {log_path}:\n{tail}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the ones after ``--stage`` are internal."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=0, help="large photos (default: the configured Arrow batch rows)")
    parser.add_argument("--profile", default="local")
    parser.add_argument("--conf-dir", type=Path, default=REPO / "conf")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="configuration override")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--source-dir", default=str(REPO.parent / "shared" / "data" / "fashion-products"))
    parser.add_argument("--noise", type=float, default=4.0, help="noise of the large photos: sets their size (4: ~5.6 MB)")
    parser.add_argument("--distinct", type=int, default=4, help="distinct large photos encoded (rows cycle through them)")
    parser.add_argument("--partitions", type=int, default=1, help="scoring partitions (1: one task gets every row)")
    parser.add_argument("--models-from", default=None, help="a models/ folder with LATEST (default: untrained bundle)")
    parser.add_argument("--no-fix", action="store_true", help="skip the large+cap scenario")
    parser.add_argument("--uncapped", action="store_true", help="add large-uncapped: no byte cap on Arrow batches")
    parser.add_argument("--ceiling-gib", type=float, default=14.0, help="kill this run's Spark processes above this")
    parser.add_argument("--work", default="/tmp/lookalike-benchmark-scoring-memory", help="work folder (emptied)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--stage", choices=("all", "prepare", "measure"), default="all", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=SCENARIOS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # What children need to see the same configuration and folders.
    args.passthrough = [
        "--profile", args.profile, "--conf-dir", str(args.conf_dir), "--master", args.master, "--work", args.work,
        "--source-dir", args.source_dir, "--noise", str(args.noise), "--distinct", str(args.distinct),
        "--partitions", str(args.partitions), "--photos", str(args.photos), "--ceiling-gib", str(args.ceiling_gib),
        *[f"--set={s}" for s in args.set], *(["--models-from", args.models_from] if args.models_from else []),
    ]
    return args


def main(argv: list[str] | None = None) -> None:
    """Prepare the tables, measure each scenario in its own Spark application, print the report."""
    args = parse_args(argv)
    if args.stage == "prepare":
        print(RESULT_MARKER + json.dumps(prepare(args)), flush=True)
        return
    if args.stage == "measure":
        print(RESULT_MARKER + json.dumps(measure(args)), flush=True)
        return
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        started = time.perf_counter()
        prepared = run_stage("prepare", args, [])
        print(
            f"prepared {prepared['rows']} catalog and {prepared['large_rows']} large photos in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        results = []
        for scenario in SCENARIOS:
            if (scenario == "large+cap" and args.no_fix) or (scenario == "large-uncapped" and not args.uncapped):
                continue
            results.append(run_stage("measure", args, ["--scenario", scenario]))
            print(f"measured {scenario}: {results[-1]['outcome']}", flush=True)
        conf = limits(args.profile, args.conf_dir)
        print()
        print(report(prepared, results, conf, args))
        if args.json:
            Path(args.json).write_text(json.dumps({"prepared": prepared, "limits": conf, "results": results}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
