"""Benchmark: image-embedding options side by side on a held-out split of labelled catalog photos.

    .venv/bin/python benchmarks/embedding_options.py [--source-dir ../shared/data/fashion-products]
        [--limit N] [--batch-size 32] [--options pixels32,pca128,lite0_224,lite0_128]
        [--models-from lookalike-data/models] [--bundles FOLDER ...] [--report out.json]

No Spark is needed: numpy and TensorFlow/Keras only. Without ``--models-from`` / ``--bundles`` no
trained model is needed either.

Items are the rows of ``labels.csv`` whose photo ``images/<id>.jpg`` exists. The split is the train
job's fixed holdout (``lookalike.holdout``): ``zlib.crc32(id) % 100 < 20`` is the holdout (queries,
~20 %), the rest is the reference set (candidates). Options, each giving one L2-normalised vector
per item:

- ``pixels32``: raw RGB pixels at 32 x 32, flattened (3,072-d), standardised per dimension with
  the reference items' mean and standard deviation;
- ``pca128``: the same standardised pixels projected on the first 128 principal components of the
  reference items (numpy SVD);
- ``lite0_224``: pretrained (ImageNet) EfficientNet-Lite0 pooled features (1,280-d) at 224 px, as
  the pipeline uses them;
- ``lite0_128``: the same network and weights on 128 px input (the network is fully convolutional:
  ``efficientnet_lite0(..., image_size=128)``);
- every trained bundle given (``<embedding>_<image size>``: the convolutional autoencoder, the
  classifier's penultimate layer, fine-tuned Lite0, ...), scored with its own saved scorer, which
  also gives its classifier's holdout accuracy. A bundle must have been trained with this holdout
  kept out (its ``metrics.json`` records the split); others are refused.

Metrics per option, cosine similarity, queries = holdout, candidates = reference:

- ``subcat_1nn``: 1-NN subCategory accuracy (label of the nearest reference item);
- ``at_p10``: articleType precision@10 over all reference items;
- ``at_p10_in_subcat``: articleType precision@10 with candidates restricted to reference items of
  the query's true subCategory (precision over min(10, candidates); queries whose subCategory has
  no reference item are left out and counted);
- ``images_per_s``: items embedded per second, JPEG decode included (bytes already in memory, so
  disk reads are not counted), one process, batches of ``--batch-size``; fitting (reference stats,
  PCA) and model building/warm-up are timed apart.

It prints a markdown table and, with ``--report``, writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lookalike.holdout import SPLIT_RULE, TOP_K, retrieval_metrics as holdout_metrics, split_of
from lookalike.images import decode_image
from lookalike.model_store import ModelManifest, check_scorer_bytes, load_scorer_from_bytes

log = logging.getLogger("lookalike.benchmarks.embedding_options")

HOLDOUT_PERCENT = 20
PIXEL_SIZE = 32
PCA_DIM = 128
ALL_OPTIONS = ("pixels32", "pca128", "lite0_224", "lite0_128")


# ---------------------------------------------------------------------------------------------
# Items and split
# ---------------------------------------------------------------------------------------------


@dataclass
class Items:
    """Labelled catalog items with their photo bytes and split.

    Attributes
    ----------
    ids : list of str
        Item ids, in ``labels.csv`` order.
    sub_category, article_type : numpy.ndarray
        String labels, one per item.
    contents : list of bytes
        The encoded photos, read into memory once.
    holdout : numpy.ndarray
        Boolean mask: True for holdout (query) items, False for reference items.
    """

    ids: list[str]
    sub_category: np.ndarray
    article_type: np.ndarray
    contents: list[bytes]
    holdout: np.ndarray = field(repr=False)


def in_holdout(item_id: str) -> bool:
    """Whether an item is a query: the train job's fixed holdout (``lookalike.holdout``, 20 %).

    Parameters
    ----------
    item_id : str
        The catalog id as written in ``labels.csv``.

    Returns
    -------
    bool
        True for holdout (query) items. Trained model bundles never saw these items.
    """
    return split_of(item_id, holdout_fraction=HOLDOUT_PERCENT / 100) == "holdout"


def load_items(source_dir: Path, limit: int | None = None) -> Items:
    """Read ``labels.csv`` and the photos of the rows whose ``images/<id>.jpg`` exists.

    Parameters
    ----------
    source_dir : pathlib.Path
        Folder with ``labels.csv`` and ``images/``.
    limit : int, optional
        Keep only the first ``limit`` labelled items with a photo (file order), for a quick run.

    Returns
    -------
    Items
        The items, their labels, photo bytes and split.
    """
    ids: list[str] = []
    sub: list[str] = []
    art: list[str] = []
    contents: list[bytes] = []
    with open(source_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            path = source_dir / "images" / f"{row['id']}.jpg"
            if not path.is_file():
                continue
            ids.append(row["id"])
            sub.append(row["subCategory"])
            art.append(row["articleType"])
            contents.append(path.read_bytes())
            if limit is not None and len(ids) >= limit:
                break
    holdout = np.array([in_holdout(i) for i in ids], dtype=bool)
    return Items(ids, np.array(sub), np.array(art), contents, holdout)


def decode_all(contents: Sequence[bytes], size: int) -> np.ndarray:
    """Decode every photo with the pipeline's :func:`lookalike.images.decode_image`.

    Parameters
    ----------
    contents : sequence of bytes
        Encoded photos.
    size : int
        Output side in pixels.

    Returns
    -------
    numpy.ndarray
        ``(n, size, size, 3)`` uint8.
    """
    return np.stack([decode_image(c, size) for c in contents])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm (rows of zeros stay zero).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, d)`` vectors.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` float32 unit vectors.
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass
class Embedded:
    """One option's vectors and timings.

    Attributes
    ----------
    vectors : numpy.ndarray
        ``(n_items, dim)`` L2-normalised float32.
    embed_s : float
        Seconds to decode and embed all items (fitting excluded).
    fit_s : float
        Seconds spent fitting on reference items, or building and warming up the model.
    """

    vectors: np.ndarray
    embed_s: float
    fit_s: float
    classifier_accuracy: float | None = None


def embed_pixels(items: Items, *, pca_dim: int | None) -> Embedded:
    """Raw 32 x 32 pixels, standardised with reference stats; optionally PCA-projected.

    Parameters
    ----------
    items : Items
        All items; statistics and principal components come from the reference items only.
    pca_dim : int, optional
        Number of principal components to keep; None for the standardised pixels themselves.

    Returns
    -------
    Embedded
        Vectors, decode+transform time over all items and fit time.
    """
    start = time.perf_counter()
    pixels = decode_all(items.contents, PIXEL_SIZE).reshape(len(items.ids), -1).astype(np.float32)
    decode_s = time.perf_counter() - start

    start = time.perf_counter()
    reference = pixels[~items.holdout]
    mean = reference.mean(axis=0)
    std = reference.std(axis=0) + 1e-6
    components = None
    if pca_dim is not None:
        centred = (reference - mean) / std  # already zero-mean per dimension
        # Rows of vt are the principal directions, by decreasing singular value.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:pca_dim].T.astype(np.float32)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    x = (pixels - mean) / std
    if components is not None:
        x = x @ components
    vectors = l2_normalise(x)
    transform_s = time.perf_counter() - start
    return Embedded(vectors, decode_s + transform_s, fit_s)


def traced_inference(model: Callable, *, size: int, batch_size: int, items: int) -> Callable:
    """``model`` in inference mode as a ``tf.function``, traced for a full and the last partial batch.

    Parameters
    ----------
    model : keras.Model
        Takes ``(n, size, size, 3)`` float32 pixels.
    size, batch_size, items : int
        Input side, batch size and the number of items that will be fed.

    Returns
    -------
    callable
        The traced function: no tracing lands in the timed loop.
    """
    import tensorflow as tf

    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    infer(tf.zeros((batch_size, size, size, 3), tf.float32))
    if items % batch_size:
        infer(tf.zeros((items % batch_size, size, size, 3), tf.float32))
    return infer


def embed_lite0(items: Items, *, size: int, batch_size: int) -> Embedded:
    """Pretrained Lite0 features at ``size`` px, decode and inference batch by batch.

    Parameters
    ----------
    items : Items
        All items.
    size : int
        Input side in pixels.
    batch_size : int
        Photos per inference call.

    Returns
    -------
    Embedded
        Vectors, decode+embed time over all items and model build + warm-up time.
    """
    import tensorflow as tf

    from lookalike.models import build_lite0_embedder

    start = time.perf_counter()
    # The train job's own lite0 embedder: uint8 pixels in, (x - 127) / 128 inside the model.
    model = build_lite0_embedder(image_size=size)
    infer = traced_inference(model, size=size, batch_size=batch_size, items=len(items.ids))
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    chunks = []
    for i in range(0, len(items.contents), batch_size):
        batch = decode_all(items.contents[i : i + batch_size], size)
        chunks.append(infer(tf.constant(batch, tf.float32)).numpy())
    vectors = l2_normalise(np.concatenate(chunks))
    embed_s = time.perf_counter() - start
    return Embedded(vectors, embed_s, fit_s)


def load_bundle(folder: Path) -> tuple[ModelManifest, dict, object]:
    """A trained bundle's manifest, metrics and scorer, read from a model store folder.

    Parameters
    ----------
    folder : pathlib.Path
        ``<storage.root>/models/<version>``.

    Returns
    -------
    (ModelManifest, dict, keras.Model)

    Raises
    ------
    SystemExit
        If the bundle was not trained with this command's holdout kept out (its figures would
        count items it trained on), or its scorer file is not the one saved.
    """
    manifest = ModelManifest(**json.loads((folder / "manifest.json").read_text(encoding="utf-8")))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    split = metrics.get("split") or {}
    if split.get("rule") != SPLIT_RULE or split.get("holdout_fraction") != HOLDOUT_PERCENT / 100:
        raise SystemExit(
            f"bundle {manifest.version} was not trained with this holdout ({SPLIT_RULE} < {HOLDOUT_PERCENT} kept out; "
            f"its metrics say {split or 'nothing'}): retrain it with the train job"
        )
    content = check_scorer_bytes((folder / manifest.scorer_file).read_bytes(), manifest)
    return manifest, metrics, load_scorer_from_bytes(content)


def embed_bundle(items: Items, folder: Path, *, batch_size: int) -> Embedded:
    """A trained bundle's scorer: its embedding, and its classifier's holdout accuracy.

    Parameters
    ----------
    items : Items
        All items, decoded at the bundle's image size.
    folder : pathlib.Path
        The bundle's folder in the model store.
    batch_size : int
        Photos per inference call.

    Returns
    -------
    Embedded
        Vectors (already L2-normalised by the scorer), decode+score time, load time, and the
        share of holdout items whose subCategory the classifier predicts (a subCategory it never
        learnt counts as a miss).
    """
    import tensorflow as tf

    start = time.perf_counter()
    manifest, _, scorer = load_bundle(folder)
    size = manifest.image_size
    infer = traced_inference(scorer, size=size, batch_size=batch_size, items=len(items.ids))
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    vectors, predicted = [], []
    for i in range(0, len(items.contents), batch_size):
        out = infer(tf.constant(decode_all(items.contents[i : i + batch_size], size), tf.float32))
        vectors.append(out["embedding"].numpy())
        predicted.append(out["probabilities"].numpy().argmax(axis=1))
    embed_s = time.perf_counter() - start
    names = np.array(manifest.classes)[np.concatenate(predicted)]
    accuracy = float(np.mean(names[items.holdout] == items.sub_category[items.holdout]))
    return Embedded(np.concatenate(vectors), embed_s, fit_s, classifier_accuracy=accuracy)


def bundle_folders(models_from: str | None, bundles: Sequence[str]) -> list[Path]:
    """The bundle folders to evaluate: those named, then every version in a model store folder.

    Parameters
    ----------
    models_from : str, optional
        A model store folder (``<storage.root>/models``); every subfolder with a manifest is a version.
    bundles : sequence of str
        Bundle folders given one by one.

    Returns
    -------
    list of pathlib.Path
        Each folder once, in that order.
    """
    folders = [Path(b) for b in bundles]
    if models_from:
        folders += sorted(p for p in Path(models_from).iterdir() if (p / "manifest.json").is_file())
    return list(dict.fromkeys(folders))


def option_runners(batch_size: int) -> dict[str, Callable[[Items], Embedded]]:
    """The options by name.

    Parameters
    ----------
    batch_size : int
        Inference batch size for the Lite0 options.

    Returns
    -------
    dict of str to callable
        Name to a function embedding all items.
    """
    return {
        "pixels32": lambda items: embed_pixels(items, pca_dim=None),
        "pca128": lambda items: embed_pixels(items, pca_dim=PCA_DIM),
        "lite0_224": lambda items: embed_lite0(items, size=224, batch_size=batch_size),
        "lite0_128": lambda items: embed_lite0(items, size=128, batch_size=batch_size),
    }


DESCRIPTIONS = {
    "pixels32": "raw pixels 32x32, standardised (3072-d)",
    "pca128": "PCA-128 of those pixels (fit on reference)",
    "lite0_224": "pretrained Lite0, 224 px (1280-d)",
    "lite0_128": "pretrained Lite0, 128 px (1280-d)",
}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def retrieval_metrics(vectors: np.ndarray, items: Items, k: int = TOP_K) -> dict[str, float | int]:
    """:func:`lookalike.holdout.retrieval_metrics` on ``items``' labels and split.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(n_items, dim)`` L2-normalised vectors, in ``items`` order.
    items : Items
        Labels and split.
    k : int, default 10
        List length for precision.

    Returns
    -------
    dict
        ``subcat_1nn``, ``at_p10``, ``at_p10_in_subcat``, ``queries``, ``queries_in_subcat``.
    """
    return holdout_metrics(vectors, items.sub_category, items.article_type, items.holdout, k=k)


def linear_probe_accuracy(vectors: np.ndarray, items: Items, *, epochs: int = 500, seed: int = 0) -> float:
    """subCategory accuracy on the holdout of a softmax classifier trained on the reference vectors.

    A linear head on frozen features: what a trained classifier on this embedding reaches at
    least. Features are standardised with the reference items' mean and deviation (on the unit
    vectors alone the head underfits: their logits start tiny); full-batch Adam with a
    small L2 penalty and fixed epochs (nothing is tuned on the holdout); holdout items of a
    subCategory absent from the reference count as misses.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(n_items, dim)`` vectors, in ``items`` order.
    items : Items
        Labels and split.
    epochs, seed : int
        Training length and Keras seed (the result repeats for the same seed).

    Returns
    -------
    float
        Holdout accuracy.
    """
    import keras

    keras.utils.set_random_seed(seed)
    r, q = ~items.holdout, items.holdout
    classes = sorted(set(items.sub_category[r]))
    index = {c: i for i, c in enumerate(classes)}
    x = vectors.astype(np.float32)
    x = (x - x[r].mean(axis=0)) / (x[r].std(axis=0) + 1e-6)
    y = np.array([index[c] for c in items.sub_category[r]])
    head = keras.Sequential([
        keras.Input((x.shape[1],)),
        keras.layers.Dense(len(classes), activation="softmax", kernel_regularizer=keras.regularizers.L2(1e-4)),
    ])
    head.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    head.fit(x[r], y, batch_size=len(y), epochs=epochs, verbose=0)
    predicted = np.array(classes)[head.predict(x[q], batch_size=1024, verbose=0).argmax(axis=1)]
    return float(np.mean(predicted == items.sub_category[q]))


def chance_levels(items: Items, k: int = TOP_K) -> dict[str, float]:
    """Expected metrics for a random ranking, as a floor for the table.

    Parameters
    ----------
    items : Items
        Labels and split.
    k : int, default 10
        List length (the expectation of precision under random order does not depend on it,
        except through the min(k, candidates) cut, which is ignored here).

    Returns
    -------
    dict
        ``subcat_1nn``, ``at_p10``, ``at_p10_in_subcat`` under uniformly random candidates.
    """
    q = np.flatnonzero(items.holdout)
    r = np.flatnonzero(~items.holdout)
    ref_sub, ref_art = items.sub_category[r], items.article_type[r]
    sub_hit = [np.mean(ref_sub == items.sub_category[i]) for i in q]
    art_hit = [np.mean(ref_art == items.article_type[i]) for i in q]
    within = []
    for i in q:
        mask = ref_sub == items.sub_category[i]
        if mask.any():
            within.append(np.mean(ref_art[mask] == items.article_type[i]))
    return {
        "subcat_1nn": float(np.mean(sub_hit)),
        "at_p10": float(np.mean(art_hit)),
        "at_p10_in_subcat": float(np.mean(within)) if within else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def markdown_table(results: dict[str, dict], chance: dict[str, float]) -> str:
    """Render the results as a markdown table, with a chance-level row last.

    Parameters
    ----------
    results : dict
        Option name to its metrics and timings.
    chance : dict
        Output of :func:`chance_levels`.

    Returns
    -------
    str
        The table.
    """
    lines = [
        "| option | subCategory 1-NN acc. | subCategory linear probe acc. | subCategory classifier acc. "
        "| articleType P@10 | articleType P@10 within subCategory | images/s (decode+embed) | fit / model build s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        classifier = "" if res.get("classifier_accuracy") is None else f"{res['classifier_accuracy']:.3f}"
        lines.append(
            f"| `{name}`: {res.get('description') or DESCRIPTIONS[name]} | {res['subcat_1nn']:.3f} | "
            f"{res['subcat_linear_probe']:.3f} | {classifier} | {res['at_p10']:.3f} | "
            f"{res['at_p10_in_subcat']:.3f} | {res['images_per_s']:.0f} | {res['fit_s']:.1f} |"
        )
    lines.append(
        f"| random ranking (chance) | {chance['subcat_1nn']:.3f} | | | {chance['at_p10']:.3f} | "
        f"{chance['at_p10_in_subcat']:.3f} | | |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-dir", default="../shared/data/fashion-products",
                        help="folder with labels.csv and images/ (default: %(default)s, relative to the repo root)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N labelled items (quick run)")
    parser.add_argument("--batch-size", type=int, default=32, help="Lite0 inference batch size (default: %(default)s)")
    parser.add_argument("--options", default=",".join(ALL_OPTIONS),
                        help="comma-separated subset of " + ", ".join(ALL_OPTIONS))
    parser.add_argument("--bundles", nargs="*", default=[],
                        help="trained model bundle folders (<storage.root>/models/<version>) to evaluate as well")
    parser.add_argument("--models-from", default=None,
                        help="a model store folder (<storage.root>/models): evaluate every version in it")
    parser.add_argument("--report", default=None, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # In the order given, each once.
    names = list(dict.fromkeys(n.strip() for n in args.options.split(",") if n.strip()))
    unknown = sorted(set(names) - set(ALL_OPTIONS))
    if unknown:
        parser.error(f"unknown options: {unknown}")

    started = time.perf_counter()
    source = Path(args.source_dir)
    items = load_items(source, args.limit)
    n_hold = int(items.holdout.sum())
    print(f"labelled items with a photo: {len(items.ids)}; holdout (queries): {n_hold}; "
          f"reference (candidates): {len(items.ids) - n_hold}"
          + (f"  [--limit {args.limit}]" if args.limit else ""))
    if n_hold == 0 or n_hold == len(items.ids):
        raise SystemExit("need both holdout and reference items")

    # One untimed decode first, so the first option timed does not pay for Pillow's lazy set-up.
    decode_image(items.contents[0], PIXEL_SIZE)
    runners: dict[str, Callable[[Items], Embedded]] = {n: option_runners(args.batch_size)[n] for n in names}
    descriptions: dict[str, str] = {}
    for folder in bundle_folders(args.models_from, args.bundles):
        manifest = ModelManifest(**json.loads((folder / "manifest.json").read_text(encoding="utf-8")))
        name = f"{manifest.embedding}_{manifest.image_size}"
        name = name if name not in runners else f"{name} ({manifest.version})"
        runners[name] = lambda items, folder=folder: embed_bundle(items, folder, batch_size=args.batch_size)
        descriptions[name] = f"trained bundle {manifest.version}, {manifest.embedding_dim}-d"
    results: dict[str, dict] = {}
    for name, runner in runners.items():
        log.info("option %s ...", name)
        embedded = runner(items)
        metrics = retrieval_metrics(embedded.vectors, items)
        metrics["subcat_linear_probe"] = linear_probe_accuracy(embedded.vectors, items)
        results[name] = {
            **metrics,
            "dim": int(embedded.vectors.shape[1]),
            "embed_s": embedded.embed_s,
            "images_per_s": len(items.ids) / embedded.embed_s,
            "fit_s": embedded.fit_s,
            "classifier_accuracy": embedded.classifier_accuracy,
            "description": descriptions.get(name),
        }
        log.info("option %s: %s", name, {k: round(v, 4) if isinstance(v, float) else v
                                          for k, v in results[name].items()})
    chance = chance_levels(items)

    print()
    print(markdown_table(results, chance))
    total_s = time.perf_counter() - started
    print(f"\ntotal {total_s:.0f} s; {os.cpu_count()} CPU(s); queries {n_hold}; "
          f"queries with reference items of their subCategory: "
          f"{next(iter(results.values()))['queries_in_subcat'] if results else '-'}")

    if args.report:
        report = {
            "source_dir": str(args.source_dir),
            "limit": args.limit,
            "items": len(items.ids),
            "holdout": n_hold,
            "reference": len(items.ids) - n_hold,
            "split": f"{SPLIT_RULE} < {HOLDOUT_PERCENT} -> holdout",
            "k": TOP_K,
            "batch_size": args.batch_size,
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
            "options": results,
            "chance": chance,
            "total_s": total_s,
        }
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
