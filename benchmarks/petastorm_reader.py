"""Benchmark: the reproducible Petastorm reader (one thread, seeded) against two unseeded threads.

    ./spark-submit.sh benchmarks/petastorm_reader.py [--rows 1900] [--repeats 3]

``train.reproducible`` (the default) reads the training rows with one Petastorm thread, in an order
drawn from ``model.seed``; with it off, ``train.petastorm_workers`` (2) threads read them in
whichever order they finish. This reads ``--rows`` training rows of 224 x 224 photos (the size
of the train job's labelled split; random pixels, different in every row, which cost the reader
at least what photos cost: it copies bytes and decodes none, and they do not compress) through
``lookalike.training.petastorm_dataset`` exactly as training does (shuffled, batches of
``train.finetune_batch_size``), both ways in turn, and prints
the rows per second of each, their ratio, and whether each setting gave the same batches on
every repeat. The train job's fine-tuning consumes about 25 rows/s on a 2-core machine (an
epoch of 1,892 rows in 60-85 s), so a reader is only a cost when it is slower than that.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike.config import load_config
from lookalike.session import build_spark
from lookalike.training import petastorm_dataset


def read_once(spark, config: dict, rows) -> tuple[float, list[int]]:
    """Rows per second of an epoch's worth of ``rows``, and the order the row keys came in."""
    batch_size = int(config["train"]["finetune_batch_size"])
    # Endless, as training reads (a finite read is always one thread).
    with petastorm_dataset(spark, config, rows, with_labels=False, shuffle=True, ids="row",
                           batch_size=batch_size) as (dataset, count):
        start = time.perf_counter()
        order = [int(key) for _, keys in dataset.take(count // batch_size) for key in keys.numpy()]
        seconds = time.perf_counter() - start
    return len(order) / seconds, order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1900, help="training rows read per pass (default: 1900)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per setting, interleaved (default: 3)")
    parser.add_argument("--profile", default="local")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lookalike-reader-") as work:
        settings = {
            "reproducible (1 thread, seeded)": ["train.reproducible=true"],
            "unseeded (train.petastorm_workers threads)": ["train.reproducible=false"],
        }
        configs = {name: load_config(args.profile, [f"storage.root={Path(work) / 'store'}", *overrides])
                   for name, overrides in settings.items()}
        first = next(iter(configs.values()))
        spark = build_spark("lookalike-benchmark-reader", first)
        size = int(first["model"]["image_size"])
        def random_photos(batches):
            # Each row's own pixels, so that Parquet cannot compress repeats away.
            for batch in batches:
                batch["pixels"] = [np.random.default_rng(int(i)).integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes()
                                   for i in batch["row"]]
                yield batch[["pixels", "row"]]

        rows = spark.range(args.rows).withColumnRenamed("id", "row").mapInPandas(random_photos, "pixels binary, row long").cache()
        rows.count()
        read_once(spark, first, rows)  # warm-up: Spark, the converter's cache, TensorFlow

        rates: dict[str, list[float]] = {name: [] for name in configs}
        orders: dict[str, list[list[int]]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for name, config in configs.items():
                rate, order = read_once(spark, config, rows)
                rates[name].append(rate)
                orders[name].append(order)
        spark.stop()

    print(f"\n{args.rows} rows of {size} x {size} pixels, {args.repeats} passes per setting, interleaved")
    print("| reader | rows/s (median) | passes | same batches every pass |")
    print("|---|---:|---|---|")
    for name in configs:
        same = all(order == orders[name][0] for order in orders[name])
        print(f"| {name} | {np.median(rates[name]):.0f} | {', '.join(f'{r:.0f}' for r in rates[name])} | {'yes' if same else 'no'} |")
    reproducible, unseeded = (float(np.median(rates[name])) for name in configs)
    print(f"ratio reproducible / unseeded: {reproducible / unseeded:.2f}")


if __name__ == "__main__":
    main()
