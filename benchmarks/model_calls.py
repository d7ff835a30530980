"""Benchmark: how the scoring UDF calls the model -- photos/s and peak memory of one Python worker.

    .venv/bin/python benchmarks/model_calls.py --models-from lookalike-data/models [--photos 256] [--json out.json]

Each setting runs in a fresh Python process with one TensorFlow thread, as a scoring worker does
(``embed.tf_threads_per_task`` = 1). It decodes ``--photos`` demo photos at the bundle's image
size, scores them once to warm up, then times scoring them all and reads the process's peak
resident memory (``ru_maxrss``). Settings:

- ``eager, Arrow batch``: the model called op by op on a whole Arrow batch (``arrow_batch_rows``
  photos: 55 at 224 px), as scoring did before 2026-12-02: the baseline;
- ``graph, N``: the model traced once (``tf.function``) and called with exactly N photos, the last
  call padded, as ``lookalike.scoring`` does now with ``embed.model_batch_rows`` = N.

It prints both side by side with the ratio to the baseline, and checks that with one call size a
photo's embedding has the same bits whichever photos share its call (photos shifted by 5 places,
and a padded last call).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _measure(bundle: str, photos: int, call: int, graph: bool, source: str) -> dict:
    """Runs in the child process: throughput and peak RSS of one setting."""
    import resource
    import time

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from lookalike.images import decode_batch
    from lookalike.model_store import load_scorer_from_bytes
    from lookalike.scoring import score_in_calls

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    size = int(manifest["image_size"])
    model = load_scorer_from_bytes((Path(bundle) / manifest["scorer_file"]).read_bytes())
    paths = sorted((Path(source) / "images").glob("*.jpg"))[:photos]
    images, _ = decode_batch([p.read_bytes() for p in paths], size)
    images = images.astype(np.float32)
    if graph:
        traced = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    else:
        traced = lambda x: model(x, training=False)  # noqa: E731 -- the eager baseline

    def embed(batch: np.ndarray) -> np.ndarray:
        if graph:  # as the scoring UDF calls it
            return score_in_calls(traced, batch, call)["embedding"]
        return np.concatenate([np.asarray(traced(batch[s : s + call])["embedding"]) for s in range(0, len(batch), call)])

    embed(images[:call])
    start = time.perf_counter()
    reference = embed(images)
    seconds = time.perf_counter() - start
    result = {
        "photos": len(images), "image_size": size, "call_rows": call, "graph": graph,
        "photos_per_s": round(len(images) / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if graph:
        shifted = embed(images[5:])
        result["bits_equal_when_shifted"] = bool(np.array_equal(shifted, reference[5:]))
        result["bits_equal_when_padded"] = bool(np.array_equal(embed(images[: call // 2 + 1]), reference[: call // 2 + 1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-from", required=True, help="a models/ folder (its LATEST bundle is used)")
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--calls", default="16,32,64", help="photos per traced call to measure")
    parser.add_argument("--source-dir", default=str(REPO.parent / "shared" / "data" / "fashion-products"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        bundle, call, graph = json.loads(args.child)
        print(json.dumps(_measure(bundle, args.photos, call, graph, args.source_dir)))
        return

    from lookalike.config import load_config
    from lookalike.scoring import arrow_batch_rows

    models = Path(args.models_from)
    bundle = models / (models / "LATEST").read_text().strip()
    size = int(json.loads((bundle / "manifest.json").read_text())["image_size"])
    embed = load_config("local")["embed"]
    # The Arrow batch rows before model calls were sliced (no rounding to whole calls).
    arrow_rows = arrow_batch_rows(image_size=size, target_bytes=int(embed["arrow_batch_bytes"]),
                                  max_rows=int(embed["max_rows_per_batch"]))
    settings = [(arrow_rows, False)] + [(int(c), True) for c in args.calls.split(",")]
    results = []
    for call, graph in settings:
        child = [sys.executable, __file__, "--models-from", str(models), "--photos", str(args.photos),
                 "--source-dir", args.source_dir, "--child", json.dumps([str(bundle), call, graph])]
        out = subprocess.run(child, check=True, capture_output=True, text=True, cwd=REPO).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    base = results[0]
    print(f"bundle {bundle.name}, {base['photos']} photos at {size} px, one TensorFlow thread per process")
    print(f"{'setting':<24} {'photos/s':>9} {'ratio':>6} {'peak RSS MB':>12} {'ratio':>6}  bits equal (shifted, padded)")
    for r in results:
        name = f"graph, {r['call_rows']}" if r["graph"] else f"eager, Arrow batch {r['call_rows']}"
        bits = f"{r['bits_equal_when_shifted']}, {r['bits_equal_when_padded']}" if r["graph"] else "(baseline)"
        print(f"{name:<24} {r['photos_per_s']:>9.1f} {r['photos_per_s'] / base['photos_per_s']:>6.2f} "
              f"{r['peak_rss_mb']:>12} {r['peak_rss_mb'] / base['peak_rss_mb']:>6.2f}  {bits}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bundle": bundle.name, "results": results}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
