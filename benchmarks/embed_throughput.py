"""Benchmark: the Spark embed stage against a plain Python loop running the same model on the same photos.

    ./spark-submit.sh benchmarks/embed_throughput.py [--models-from lookalike-data/models] [--photos 8758]
        [--sweep-tasks-per-core 1,3] [--set embed.tf_threads_per_task=2]

In one process, on the demo photos and one model bundle (copied from ``--models-from``; ``make
demo`` leaves one in ``lookalike-data/models``):

1. set-up (not timed): the photos are ingested into a Delta ``images`` table, as a refresh does;
2. baseline, the practical limit: a plain loop in the driver's Python that reads each photo
   file, decodes it with the job's own ``decode_batch`` and calls ``model.predict`` on batches of
   the job's Arrow batch size, TensorFlow using every core;
3. ours: ``scoring.score_images``, the embed stage's own function (Delta read, repartition,
   Arrow, the scalar-iterator pandas UDF, decode and model in the Python workers), first in fresh
   Python workers (model loading included: what a nightly run pays), then again warm.

Both produce the same vectors (checked). It prints images per second of each, the ratio ours /
loop (target >= 0.90, decode included) and a profile of the loop (TensorFlow import, model load,
decode, predict). ``--sweep-tasks-per-core`` repeats the warm Spark run with other task counts;
settings read once per Python worker (TF threads) need a run of their own (``--set``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from lookalike.cli import setup_logging
from lookalike.config import load_config
from lookalike.demo_catalog import build_demo_catalog, read_catalog_csv, write_catalog_csv
from lookalike.images import decode_batch
from lookalike.ingest import ingest_catalog
from lookalike.model_store import load_manifest, load_scorer_from_bytes, read_scorer_bytes
from lookalike.scoring import configured_batch_rows, score_images
from lookalike.session import build_spark
from lookalike.tables import read_table
from schemas import CATALOG, IMAGES

log = logging.getLogger("lookalike.benchmarks.embed")


def plain_loop(paths: list[Path], scorer, *, image_size: int, batch_rows: int) -> dict[str, float]:
    """Read, decode and ``predict`` the photos batch by batch; seconds per step and the vectors."""
    seconds = {"read": 0.0, "decode": 0.0, "predict": 0.0}
    vectors = []
    for start in range(0, len(paths), batch_rows):
        t0 = time.perf_counter()
        contents = [p.read_bytes() for p in paths[start:start + batch_rows]]
        t1 = time.perf_counter()
        images, errors = decode_batch(contents, image_size)
        t2 = time.perf_counter()
        out = scorer.predict(images.astype(np.float32), batch_size=len(images), verbose=0)
        t3 = time.perf_counter()
        seconds["read"] += t1 - t0
        seconds["decode"] += t2 - t1
        seconds["predict"] += t3 - t2
        vectors.append(np.asarray(out["embedding"], dtype=np.float32))
    return {**seconds, "vectors": np.concatenate(vectors)}


def spark_run(spark, config, manifest) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds for ``score_images`` over every photo of the store, and the vectors by photo hash."""
    hashes = read_table(spark, config, IMAGES).select("image_hash")
    start = time.perf_counter()
    scored, _ = score_images(spark, config, manifest, hashes)  # persists and counts: every photo is scored here
    seconds = time.perf_counter() - start
    vectors = {r["image_hash"]: np.asarray(r["embedding"], dtype=np.float32)
               for r in scored.select("image_hash", "embedding").collect()}
    scored.unpersist()
    return seconds, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-dir", default="../shared/data/fashion-products")
    parser.add_argument("--models-from", default="lookalike-data/models", help="a models/ folder holding a bundle")
    parser.add_argument("--version", default=None, help="model version (default: the latest in --models-from)")
    parser.add_argument("--photos", type=int, default=0, help="photos to score (default: all)")
    parser.add_argument("--sweep-tasks-per-core", default="", help="extra warm runs with these embed.tasks_per_core, e.g. 1,3")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, e.g. embed.tf_threads_per_task=2 (repeatable)")
    parser.add_argument("--work", default="lookalike-data/benchmark-embed", help="store for the run (emptied)")
    parser.add_argument("--profile", default="local")
    parser.add_argument("--conf-dir", default="conf")
    args = parser.parse_args()
    setup_logging()

    models = Path(args.models_from)
    if not any(models.glob("*/manifest.json")):
        raise SystemExit(f"no model bundle in {models}: run `make demo` first or pass --models-from")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    source = Path(args.source_dir).resolve()
    build_demo_catalog(source, work / "all.csv", seed=20261121)
    rows = read_catalog_csv(work / "all.csv")
    rows = rows[: args.photos] if args.photos else rows
    catalog_csv = write_catalog_csv(rows, work / "catalog.csv")
    shutil.copytree(models, work / "store" / "models")
    config = load_config(args.profile, [f"storage.root={work / 'store'}", f"catalog.image_root={source}", *args.set],
                         conf_dir=args.conf_dir)
    spark = build_spark("lookalike-benchmark-embed", config)
    spark.sparkContext.setLogLevel("WARN")
    cores = spark.sparkContext.defaultParallelism
    manifest = load_manifest(spark, config, args.version)
    ingest_catalog(spark, config, str(catalog_csv), run_id="benchmark")
    # One path per distinct photo: the store keeps each photo once (content-addressed), and so scores it once.
    catalog = read_table(spark, config, CATALOG).select("image_uri", "image_hash").orderBy("image_uri").collect()
    first_path = {}
    for r in catalog:
        first_path.setdefault(r["image_hash"], source / "images" / r["image_uri"].rsplit("/", 1)[-1])
    paths = sorted(first_path.values())
    photos = read_table(spark, config, IMAGES).count()
    assert photos == len(paths), (photos, len(paths))
    batch_rows = configured_batch_rows(config, image_size=manifest.image_size)

    # Baseline: TensorFlow in this process with every core; importing it and loading the model are
    # timed, as they are in each of Spark's fresh Python workers.
    assert "tensorflow" not in sys.modules, "TensorFlow must not be imported before the loop is timed"
    start = time.perf_counter()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    imported = time.perf_counter()
    scorer = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    loop = plain_loop(paths, scorer, image_size=manifest.image_size, batch_rows=batch_rows)
    loop_seconds = time.perf_counter() - start
    import_seconds = imported - start
    load_seconds = loop_seconds - import_seconds - loop["read"] - loop["decode"] - loop["predict"]

    cold_seconds, cold_vectors = spark_run(spark, config, manifest)
    warm_seconds, _ = spark_run(spark, config, manifest)
    # Same model, same decode: the Spark vectors equal the loop's, photo by photo.
    hash_of = {path: image_hash for image_hash, path in first_path.items()}
    loop_by_hash = {hash_of[p]: v for p, v in zip(paths, loop["vectors"], strict=True)}
    max_difference = max(float(np.abs(loop_by_hash[h] - v).max()) for h, v in cold_vectors.items())

    # Python workers are reused, so only settings that act per task can vary within one run:
    # tasks per core (how many partitions score). TF threads are set once per worker: vary them with --set.
    sweep = {}
    for per_core in (int(x) for x in filter(None, args.sweep_tasks_per_core.split(","))):
        varied = {**config, "embed": {**config["embed"], "tasks_per_core": per_core}}
        spark_run(spark, varied, manifest)
        sweep[per_core] = round(photos / spark_run(spark, varied, manifest)[0], 1)

    report = {
        "photos": photos,
        "model_version": manifest.version,
        "image_size": manifest.image_size,
        "cores": cores,
        "arrow_batch_rows": batch_rows,
        "loop_seconds": round(loop_seconds, 2),
        "loop_profile_seconds": {"tf_import": round(import_seconds, 2), "model_load": round(load_seconds, 2),
                                 "read": round(loop["read"], 2),
                                 "decode": round(loop["decode"], 2), "predict": round(loop["predict"], 2)},
        "spark_cold_seconds": round(cold_seconds, 2),
        "spark_warm_seconds": round(warm_seconds, 2),
        "images_per_second": {"loop": round(photos / loop_seconds, 1), "spark_cold": round(photos / cold_seconds, 1),
                              "spark_warm": round(photos / warm_seconds, 1)},
        "ratio_cold": round(loop_seconds / cold_seconds, 3),
        "ratio_warm": round(loop_seconds / warm_seconds, 3),
        "max_vector_difference": max_difference,
        "warm_images_per_second_by_tasks_per_core": sweep,
        "tf_threads_per_task": int(config["embed"]["tf_threads_per_task"]),
        "tasks_per_core": int(config["embed"]["tasks_per_core"]),
        "machine": f"{os.cpu_count()} CPUs",
    }
    (work / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(
        f"embed throughput, {photos} photos at {manifest.image_size} px: Spark {photos / cold_seconds:.1f} images/s "
        f"(fresh workers, model load included; warm {photos / warm_seconds:.1f}) / plain loop {photos / loop_seconds:.1f} "
        f"images/s = {loop_seconds / cold_seconds:.3f} (warm {loop_seconds / warm_seconds:.3f}; target >= 0.90); "
        f"vectors equal within {max_difference:.1e}"
    )
    spark.stop()


if __name__ == "__main__":
    main()
