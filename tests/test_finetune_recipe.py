"""benchmarks/finetune_recipe.py: averaging saved runs (their holdout probabilities, or their weights).

The saved runs are built here from the real holdout of the fixed photo subset, with probabilities
or weights chosen so that the average's answers are known; no network is trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark
from PIL import Image


@pytest.fixture(scope="module")
def recipe():
    load_benchmark("embedding_options")  # the recipe imports its sibling by name
    return load_benchmark("finetune_recipe")


@pytest.fixture(scope="module")
def holdout(photo_subset: Path):
    items = load_benchmark("embedding_options").load_items(photo_subset)
    categories = np.array(sorted(set(items.sub_category)))
    truth = np.searchsorted(categories, items.sub_category[items.holdout])
    return items, categories, truth


def _save(path: Path, probabilities: np.ndarray, truth: np.ndarray, categories: np.ndarray) -> str:
    np.savez(path, probabilities=probabilities, truth=truth, categories=categories, epoch=8)
    return str(path)


def test_most_confused_counts_wrong_pairs_only(recipe):
    truth = np.array(["Shoes", "Shoes", "Shoes", "Sandal", "Bags"])
    predicted = np.array(["Sandal", "Sandal", "Shoes", "Flip Flops", "Bags"])
    assert recipe.most_confused(truth, predicted) == "Shoes -> Sandal: 2, Sandal -> Flip Flops: 1"


def test_ensemble_averages_runs_and_lists_its_errors(recipe, holdout, photo_subset, tmp_path, capsys):
    items, categories, truth = holdout
    n, k = len(truth), len(categories)
    assert n >= 4 and k >= 2
    right, wrong = np.eye(k)[truth], np.eye(k)[(truth + 1) % k]
    # Run a is wrong on the first two queries, run b on the first and the third, each sure of itself
    # (1.0); where they disagree the average is a tie, which argmax breaks towards the lower index.
    # Give b a 0.9 instead, so the average follows a: only the first query stays wrong.
    a, b = right.copy(), right.copy()
    a[:2], b[[0, 2]] = wrong[:2], 0.9 * wrong[[0, 2]] + 0.1 * right[[0, 2]]
    paths = [_save(tmp_path / "a.npz", a, truth, categories), _save(tmp_path / "b.npz", b, truth, categories)]
    sheet = tmp_path / "errors.png"

    recipe.ensemble(paths, photo_subset, str(sheet))

    out = capsys.readouterr().out
    assert f"a.npz (epoch 8): accuracy {(n - 2) / n:.4f}" in out
    assert f"b.npz (epoch 8): accuracy {(n - 2) / n:.4f}" in out
    assert f"average of 2: accuracy {(n - 1) / n:.4f} over {n} queries" in out
    first_id = np.array(items.ids)[items.holdout][0]
    expected = (f"{first_id} {categories[truth[0]]}/{items.article_type[items.holdout][0]}"
                f" -> {categories[(truth[0] + 1) % k]}")
    listed = out.split("misclassified (id subCategory/articleType -> predicted):\n")[1].splitlines()
    assert [line.strip() for line in listed if line.startswith("    ")] == [expected]
    assert Image.open(sheet).size == (6 * 160, 160 + 28)


def test_ensemble_refuses_runs_of_another_holdout(recipe, holdout, photo_subset, tmp_path):
    _, categories, truth = holdout
    probabilities = np.eye(len(categories))[truth]
    paths = [_save(tmp_path / "a.npz", probabilities, truth, categories),
             _save(tmp_path / "b.npz", probabilities[1:], truth[1:], categories)]
    with pytest.raises(SystemExit, match="do not share the same holdout"):
        recipe.ensemble(paths, photo_subset, None)
    shifted = [_save(tmp_path / "c.npz", probabilities, (truth + 1) % len(categories), categories)]
    with pytest.raises(SystemExit, match="another holdout"):
        recipe.ensemble(shifted, photo_subset, None)


def test_average_weights_is_the_element_wise_mean_of_saved_runs(recipe, tmp_path):
    args = argparse.Namespace(size=32, from_block=6, seed=7)
    network = recipe.build_network(args, 3, 4)
    first = network.model.get_weights()
    # A second run: every float array moved by its own constant.
    second = [w + np.asarray(i + 1, w.dtype) if np.issubdtype(w.dtype, np.floating) else w for i, w in enumerate(first)]
    network.model.save_weights(tmp_path / "a.weights.h5")
    network.model.set_weights(second)
    network.model.save_weights(tmp_path / "b.weights.h5")

    averaged = recipe.average_weights(network, [str(tmp_path / "a.weights.h5"), str(tmp_path / "b.weights.h5")])

    assert len(averaged) == len(first)
    for mean, a, b in zip(averaged, first, second):
        assert mean.dtype == a.dtype
        np.testing.assert_allclose(mean, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-6)


def test_soup_of_one_run_measures_as_that_run_twice_averaged(recipe, photo_subset, tmp_path, capsys):
    args = argparse.Namespace(source_dir=str(photo_subset), size=32, from_block=6, seed=7, save_holdout=None,
                              soup=None)
    items = load_benchmark("embedding_options").load_items(photo_subset)
    network = recipe.build_network(args, len(set(items.sub_category)), len(set(items.article_type)))
    # Not the seeded start: a soup must load the files, not keep the network it builds.
    network.model.set_weights([w * np.asarray(0.9, w.dtype) if np.issubdtype(w.dtype, np.floating) else w
                               for w in network.model.get_weights()])
    network.model.save_weights(tmp_path / "run.weights.h5")
    saved = network.model.get_weights()

    args.soup = [str(tmp_path / "run.weights.h5")]
    alone = recipe.soup(args)
    alone_line = capsys.readouterr().out
    args.soup = [str(tmp_path / "run.weights.h5")] * 2
    recipe.soup(args)
    twice_line = capsys.readouterr().out

    for loaded, expected in zip(alone.model.get_weights(), saved):
        np.testing.assert_array_equal(loaded, expected)
    assert alone_line.startswith("soup of 1 saved runs: classifier ")
    assert twice_line == alone_line.replace("soup of 1 saved runs", "soup of 2 saved runs")
