"""The fine-tuning recipe runs of docs/MODELS.md: the fine-tuned Lite0 layout fed from numpy, no Spark.

    .venv/bin/python benchmarks/finetune_recipe.py --from-block 6 --epochs 8 --lr 5e-4 --evaluate-at 4,6,8
    .venv/bin/python benchmarks/finetune_recipe.py --flip-check lookalike-data/models/<version>
    .venv/bin/python benchmarks/finetune_recipe.py --seed 8 --save-holdout seed8.npz
    .venv/bin/python benchmarks/finetune_recipe.py --ensemble seed7.npz seed8.npz --error-sheet errors.png
    .venv/bin/python benchmarks/finetune_recipe.py --seed 8 --save-unlabelled teacher.npz
    .venv/bin/python benchmarks/finetune_recipe.py --seed 8 --pseudo-labels teacher.npz --epochs 4 --evaluate-at 2,3,4
    .venv/bin/python benchmarks/finetune_recipe.py --seed 8 --label-smoothing 0.1 --class-weights none
    .venv/bin/python benchmarks/finetune_recipe.py --seed 8 --save-weights teacher.weights.h5
    .venv/bin/python benchmarks/finetune_recipe.py --seed 8 --soup teacher.weights.h5 student.weights.h5

Trains on every reference item (all 25 subCategories and 63 articleTypes get a head output) and
measures on the fixed holdout (``lookalike.holdout``) at the epochs given: classifier accuracy over
all 497 queries, the articleType head's vote added to it, and the retrieval figures of the shared
256-d layer and of the backbone's pooled features, and the category pairs the classifier confuses most.
``--save-holdout`` keeps the last measured holdout probabilities; ``--ensemble`` averages several
such files and prints the accuracy of the average. ``--save-unlabelled`` keeps the trained network's
probabilities for every photo without labels (a teacher); ``--pseudo-labels`` trains on those
photos too, with the teacher's probabilities as soft targets (self-training). ``--save-weights`` keeps the trained
weights; ``--soup`` measures one network whose weights are the average of several such files
(a model soup; the runs must share ``--seed``, which initialises the new layers). ``--flip-check`` scores a trained bundle's
holdout photos and their mirror images and compares the classifier accuracy with and without
averaging the two.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import embedding_options as options


def labelled_items(args: argparse.Namespace) -> tuple[Any, np.ndarray, list[str], list[str], np.ndarray, np.ndarray]:
    """The labelled photos of ``--source-dir`` decoded at ``--size``, their classes and class indices."""
    items = options.load_items(Path(args.source_dir))
    pixels = options.decode_all(items.contents, args.size).astype(np.float32)
    categories, types = sorted(set(items.sub_category)), sorted(set(items.article_type))
    y_category = np.array([categories.index(c) for c in items.sub_category])
    y_type = np.array([types.index(a) for a in items.article_type])
    return items, pixels, categories, types, y_category, y_type


def recipe(args: argparse.Namespace) -> None:
    """Train the recipe network once, printing the holdout figures at the chosen epochs."""
    import keras

    items, pixels, categories, types, y_category, y_type = labelled_items(args)
    train = ~items.holdout
    # Probability targets, as in the train job: one-hot for labelled items, a teacher's for pseudo-labelled ones.
    x_train = pixels[train]
    category_targets = np.eye(len(categories), dtype=np.float32)[y_category[train]]
    type_targets = np.eye(len(types), dtype=np.float32)[y_type[train]]
    if args.pseudo_labels:
        x_train, category_targets, type_targets = with_pseudo_labels(
            args, x_train, category_targets, type_targets, categories, types)
    network = build_network(args, len(categories), len(types))
    model = network.model

    def weights(targets: np.ndarray, n: int) -> np.ndarray:
        labels = targets.argmax(axis=1)  # a soft target counts for its top class
        counts = np.bincount(labels, minlength=n).astype(float)
        if args.class_weights == "none":
            return np.ones(len(labels))
        return np.clip(counts.sum() / (n * np.maximum(counts, 1)), 0.5, 5.0)[labels]

    sample_weight = (weights(category_targets, len(categories)) + weights(type_targets, len(types))) / 2
    steps = args.epochs * int(np.ceil(len(x_train) / 32))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
                  loss=[keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)] * 2)
    evaluate_at = {int(e) for e in args.evaluate_at.split(",")}
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.fit(x_train, [category_targets, type_targets], sample_weight=sample_weight, batch_size=32,
                  epochs=1, verbose=0, shuffle=True)
        line = f"epoch {epoch} {time.perf_counter() - start:.0f}s"
        if epoch in evaluate_at:
            line += measure(args, network, items, pixels, categories, y_category, y_type, epoch=epoch)
        print(line, flush=True)
    if args.save_weights:
        model.save_weights(args.save_weights)
        print(f"wrote the trained weights to {args.save_weights}", flush=True)
    if args.save_unlabelled:
        ids, contents = load_unlabelled(Path(args.source_dir))
        _, p_category, p_type = network.scorer.predict(options.decode_all(contents, args.size).astype(np.float32),
                                               batch_size=64, verbose=0)
        np.savez(args.save_unlabelled, ids=np.array(ids), category=p_category, article_type=p_type,
                 categories=np.array(categories), types=np.array(types))
        print(f"wrote the probabilities of {len(ids)} unlabelled photos to {args.save_unlabelled}", flush=True)


@dataclass
class Network:
    """The recipe's layout: the trainer, and models reading its shared layer and pooled features."""

    model: Any
    scorer: Any
    features: Any


def build_network(args: argparse.Namespace, n_categories: int, n_types: int) -> Network:
    """Lite0 from block ``--from-block`` trainable, a 256-d shared layer and the two heads, seeded by ``--seed``."""
    import keras
    from keras import layers

    from lookalike.pretrained import load_pretrained_lite0

    keras.utils.set_random_seed(args.seed)
    inputs = keras.Input((args.size, args.size, 3))
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomTranslation(0.05, 0.05, fill_mode="constant", fill_value=255.0)(x)
    x = layers.RandomZoom(0.1, fill_mode="constant", fill_value=255.0)(x)
    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0)(x)
    backbone = load_pretrained_lite0(include_top=False, image_size=args.size)
    for layer in backbone.layers:
        parts = layer.name.split(".")
        layer.trainable = (parts[0] == "blocks" and int(parts[1]) >= args.from_block) or parts[0] in ("conv_head", "bn1")
    pooled = backbone(x)
    embedding = layers.Dense(256, name="embedding")(layers.Dropout(0.3)(pooled))
    head_input = layers.Dropout(0.2)(embedding)
    category = layers.Dense(n_categories, activation="softmax")(head_input)
    article_type = layers.Dense(n_types, activation="softmax")(head_input)
    return Network(keras.Model(inputs, [category, article_type]), keras.Model(inputs, [embedding, category, article_type]),
                   keras.Model(inputs, pooled))


def measure(args: argparse.Namespace, network: Network, items: Any, pixels: np.ndarray, categories: list[str],
            y_category: np.ndarray, y_type: np.ndarray, *, epoch: int) -> str:
    """The holdout figures of ``network`` as one line; saves its holdout probabilities with ``--save-holdout``."""
    train = ~items.holdout
    # Which subCategory each articleType's training items belong to, for the head's vote.
    type_to_category = np.zeros((y_type.max() + 1, len(categories)))
    np.add.at(type_to_category, (y_type[train], y_category[train]), 1)
    type_to_category /= np.maximum(type_to_category.sum(axis=1, keepdims=True), 1)
    vectors, p_category, p_type = network.scorer.predict(pixels, batch_size=64, verbose=0)
    q = items.holdout
    accuracy = float(np.mean(p_category[q].argmax(1) == y_category[q]))
    voted = float(np.mean((p_category[q] + p_type[q] @ type_to_category).argmax(1) == y_category[q]))
    shared = options.retrieval_metrics(options.l2_normalise(vectors), items)
    pooled = options.retrieval_metrics(options.l2_normalise(network.features.predict(pixels, batch_size=64, verbose=0)), items)
    line = (f" classifier {accuracy:.3f} ({int(np.sum(p_category[q].argmax(1) == y_category[q]))} of {int(q.sum())})"
            f" with articleType vote {voted:.3f}"
            f" | shared layer P@10 {shared['at_p10']:.3f} within {shared['at_p10_in_subcat']:.3f}"
            f" 1-NN {shared['subcat_1nn']:.3f} | pooled P@10 {pooled['at_p10']:.3f}"
            f" within {pooled['at_p10_in_subcat']:.3f}")
    line += "\n  most confused (truth -> predicted: count): " + most_confused(
        np.array(categories)[y_category[q]], np.array(categories)[p_category[q].argmax(1)])
    if args.save_holdout:
        np.savez(args.save_holdout, probabilities=p_category[q], truth=y_category[q],
                 categories=np.array(categories), epoch=epoch)
    return line


def average_weights(network: Network, paths: Sequence[str]) -> list[np.ndarray]:
    """The element-wise mean of the weights saved in ``paths`` (``--save-weights`` files of ``network``'s layout).

    Integer arrays (random layers' seed states) are taken from the first file.
    """
    runs = []
    for path in paths:
        network.model.load_weights(path)
        runs.append(network.model.get_weights())
    return [np.mean(arrays, axis=0).astype(arrays[0].dtype) if np.issubdtype(arrays[0].dtype, np.floating)
            else arrays[0] for arrays in zip(*runs)]


def soup(args: argparse.Namespace) -> Network:
    """The holdout figures of one network whose weights are the average of several saved runs' (a model soup).

    Networks fine-tuned from the same pretrained start (and the same seeded heads) usually lie in
    one basin, so their averaged weights can score like an ensemble at the cost of one network.
    """
    items, pixels, categories, types, y_category, y_type = labelled_items(args)
    network = build_network(args, len(categories), len(types))
    network.model.set_weights(average_weights(network, args.soup))
    print(f"soup of {len(args.soup)} saved runs:" + measure(args, network, items, pixels, categories, y_category, y_type, epoch=0),
          flush=True)
    return network

def load_unlabelled(source_dir: Path) -> tuple[list[str], list[bytes]]:
    """Ids and photo bytes of the photos in ``images/`` that have no row in ``labels.csv``, in id order."""
    with open(source_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        labelled = {row["id"] for row in csv.DictReader(handle)}
    paths = sorted(p for p in (source_dir / "images").glob("*.jpg") if p.stem not in labelled)
    return [p.stem for p in paths], [p.read_bytes() for p in paths]


def with_pseudo_labels(
    args: argparse.Namespace, pixels: np.ndarray, category_targets: np.ndarray, type_targets: np.ndarray,
    categories: list[str], types: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training set plus the unlabelled photos a teacher is confident about, with its probabilities as targets.

    A teacher (``--save-unlabelled`` of an earlier run) gives each unlabelled photo its category and
    articleType probabilities; photos whose top category probability is below ``--pseudo-threshold``
    are left out (many unlabelled photos are of kinds no label covers).
    """
    teacher = np.load(args.pseudo_labels)
    if list(teacher["categories"]) != categories or list(teacher["types"]) != types:
        raise SystemExit(f"{args.pseudo_labels} was trained on other classes than these labels")
    ids, contents = load_unlabelled(Path(args.source_dir))
    if list(teacher["ids"]) != ids:
        raise SystemExit(f"{args.pseudo_labels} holds other unlabelled photos than --source-dir's")
    confident = teacher["category"].max(axis=1) >= args.pseudo_threshold
    print(f"pseudo-labels: {confident.sum()} of {len(ids)} unlabelled photos, teacher probability >= "
          f"{args.pseudo_threshold}", flush=True)
    unlabelled = options.decode_all([c for c, keep in zip(contents, confident) if keep], args.size).astype(np.float32)
    return (np.concatenate([pixels, unlabelled]),
            np.concatenate([category_targets, teacher["category"][confident]]),
            np.concatenate([type_targets, teacher["article_type"][confident]]))


def most_confused(truth: np.ndarray, predicted: np.ndarray, top: int = 8) -> str:
    """The most frequent (truth, predicted) pairs among the misclassified items, as one line."""
    wrong = truth != predicted
    pairs, counts = np.unique(np.stack([truth[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return ", ".join(f"{pairs[i][0]} -> {pairs[i][1]}: {counts[i]}" for i in order)


def ensemble(paths: Sequence[str], source_dir: Path, error_sheet: str | None) -> None:
    """Classifier accuracy of each saved holdout run and of their averaged probabilities.

    Lists every holdout item the average misclassifies (id, labels, prediction) and, with
    ``error_sheet``, writes their photos side by side into one PNG, captioned.
    """
    runs = [np.load(path) for path in paths]
    truth = runs[0]["truth"]
    if any(not np.array_equal(run["truth"], truth) or not np.array_equal(run["categories"], runs[0]["categories"])
           for run in runs):
        raise SystemExit("the saved runs do not share the same holdout and categories")
    for path, run in zip(paths, runs):
        print(f"{path} (epoch {int(run['epoch'])}): accuracy {np.mean(run['probabilities'].argmax(1) == truth):.4f}")
    average = np.mean([run["probabilities"] for run in runs], axis=0).argmax(1)
    categories = runs[0]["categories"]
    print(f"average of {len(runs)}: accuracy {np.mean(average == truth):.4f} over {len(truth)} queries")
    print("  most confused (truth -> predicted: count): " + most_confused(categories[truth], categories[average]))
    items = options.load_items(source_dir)
    q = items.holdout
    ids, types, contents = np.array(items.ids)[q], items.article_type[q], [c for c, h in zip(items.contents, q) if h]
    if not np.array_equal(np.searchsorted(categories, items.sub_category[q]), truth):
        raise SystemExit("the saved runs were measured on another holdout than --source-dir's")
    wrong = np.flatnonzero(average != truth)
    captions = [f"{ids[i]} {categories[truth[i]]}/{types[i]} -> {categories[average[i]]}" for i in wrong]
    print("  misclassified (id subCategory/articleType -> predicted):\n    " + "\n    ".join(captions))
    if error_sheet:
        write_sheet([contents[i] for i in wrong], captions, error_sheet)
        print(f"  wrote {error_sheet}")


def write_sheet(photos: Sequence[bytes], captions: Sequence[str], path: str, columns: int = 6, side: int = 160) -> None:
    """Photos in a grid of ``columns``, each scaled to ``side`` pixels with its caption below, as a PNG."""
    import io

    from PIL import Image, ImageDraw

    rows = -(-len(photos) // columns)
    sheet = Image.new("RGB", (columns * side, rows * (side + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (photo, caption) in enumerate(zip(photos, captions)):
        x, y = (k % columns) * side, (k // columns) * (side + 28)
        sheet.paste(Image.open(io.BytesIO(photo)).convert("RGB").resize((side, side)), (x, y))
        label, prediction = caption.split(" -> ")
        draw.text((x + 3, y + side + 1), label[: side // 6], fill="black")
        draw.text((x + 3, y + side + 14), "-> " + prediction, fill="firebrick")
    sheet.save(path)


def flip_check(args: argparse.Namespace) -> None:
    """A bundle's classifier accuracy on the holdout, plain and averaged with the mirrored photo."""
    manifest, _, scorer = options.load_bundle(Path(args.flip_check))
    items = options.load_items(Path(args.source_dir))
    q = items.holdout
    pixels = options.decode_all([c for c, h in zip(items.contents, q) if h], manifest.image_size).astype(np.float32)
    plain = scorer.predict(pixels, batch_size=32, verbose=0)["probabilities"]
    mirrored = scorer.predict(pixels[:, :, ::-1], batch_size=32, verbose=0)["probabilities"]
    classes, truth = np.array(manifest.classes), items.sub_category[q]
    learnt = np.isin(truth, classes)
    for name, probabilities in (("plain", plain), ("flip-averaged", (plain + mirrored) / 2)):
        predicted = classes[probabilities.argmax(axis=1)]
        print(f"{name}: accuracy {np.mean(predicted == truth):.4f} over {q.sum()} queries, "
              f"{np.mean(predicted[learnt] == truth[learnt]):.4f} over the {learnt.sum()} of learnt subCategories")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe, the flip check with ``--flip-check`` or the average of saved runs with ``--ensemble``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-dir", default="../shared/data/fashion-products")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--from-block", type=int, default=6, help="first trained Lite0 block")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4, help="start of the cosine decay")
    parser.add_argument("--evaluate-at", default="4,6,8", help="epochs after which the holdout is measured")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="of both heads' cross-entropy")
    parser.add_argument("--class-weights", choices=("inverse", "none"), default="inverse",
                        help="per-row weight: inverse class frequency clipped to [0.5, 5], or none (train.finetune_class_weights)")
    parser.add_argument("--save-holdout", default=None, help="an .npz for the last measured holdout probabilities")
    parser.add_argument("--save-unlabelled", default=None,
                        help="an .npz for the trained network's probabilities of every photo without labels (a teacher)")
    parser.add_argument("--pseudo-labels", default=None, help="an .npz of --save-unlabelled: train on those photos too")
    parser.add_argument("--pseudo-threshold", type=float, default=0.5,
                        help="with --pseudo-labels: least top category probability of the teacher for a photo to be used")
    parser.add_argument("--ensemble", nargs="+", default=None, help=".npz files of --save-holdout to average")
    parser.add_argument("--error-sheet", default=None, help="with --ensemble: a PNG of the misclassified photos")
    parser.add_argument("--save-weights", default=None, help="a .weights.h5 file for the trained network's weights")
    parser.add_argument("--soup", nargs="+", default=None,
                        help=".weights.h5 files of --save-weights (same --seed): measure their averaged weights")
    parser.add_argument("--flip-check", default=None, help="a bundle folder: compare flip-averaged classification instead")
    args = parser.parse_args(argv)
    if args.ensemble:
        ensemble(args.ensemble, Path(args.source_dir), args.error_sheet)
    elif args.flip_check:
        flip_check(args)
    elif args.soup:
        soup(args)
    else:
        recipe(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
