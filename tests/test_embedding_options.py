"""benchmarks/embedding_options.py: the split and the metrics, on vectors whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def options():
    return load_benchmark("embedding_options")


def _items(options, sub: list[str], art: list[str], holdout: list[bool]):
    n = len(sub)
    return options.Items([str(i) for i in range(n)], np.array(sub), np.array(art), [b""] * n, np.array(holdout))


def test_split_is_stable_and_near_twenty_percent(options):
    ids = [str(i) for i in range(10000, 20000)]
    first = [options.in_holdout(i) for i in ids]
    assert first == [options.in_holdout(i) for i in ids]
    assert 0.18 < np.mean(first) < 0.22


def test_retrieval_metrics_on_vectors_with_known_neighbours(options):
    """Reference: two tees, a shirt (Topwear), two watches; queries: a tee and a watch next to their kind."""
    sub = ["Topwear", "Topwear", "Topwear", "Watches", "Watches", "Topwear", "Watches"]
    art = ["Tshirts", "Tshirts", "Shirts", "Watches", "Watches", "Tshirts", "Watches"]
    holdout = [False] * 5 + [True, True]
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 0.1, 0.9], [1, 0.05, 0], [0, 0, 1]])
    vectors = options.l2_normalise(vectors)
    metrics = options.retrieval_metrics(vectors, _items(options, sub, art, holdout), k=2)
    assert metrics["subcat_1nn"] == 1.0
    # Top 2 of the tee query: the two tees; of the watch query: the two watches.
    assert metrics["at_p10"] == 1.0 and metrics["at_p10_in_subcat"] == 1.0
    assert (metrics["queries"], metrics["queries_in_subcat"]) == (2, 2)

    wide = options.retrieval_metrics(vectors, _items(options, sub, art, holdout), k=3)
    # k=3: the tee query's third item is the shirt (2 of 3 right); the watch query has only two
    # watches in its subCategory, so within it the list is 2 long and right; unrestricted, its
    # third item is a Topwear item.
    assert wide["at_p10_in_subcat"] == pytest.approx((2 / 3 + 1) / 2)
    assert wide["at_p10"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_chance_levels_count_candidates(options):
    sub = ["Topwear", "Topwear", "Topwear", "Watches", "Topwear"]
    art = ["Tshirts", "Shirts", "Shirts", "Watches", "Tshirts"]
    chance = options.chance_levels(_items(options, sub, art, [False] * 4 + [True]))
    # One Topwear Tshirt query against 4 reference items: 3 Topwear, of which 1 Tshirt.
    assert chance == pytest.approx({"subcat_1nn": 3 / 4, "at_p10": 1 / 4, "at_p10_in_subcat": 1 / 3})


def test_linear_probe_learns_separable_classes_and_misses_unknown_ones(options):
    rng = np.random.default_rng(0)
    centres = {"Topwear": np.array([3.0, 0, 0]), "Watches": np.array([0, 3.0, 0]), "Socks": np.array([0, 0, 3.0])}
    sub = ["Topwear"] * 20 + ["Watches"] * 20 + ["Topwear"] * 5 + ["Watches"] * 5 + ["Socks"] * 2
    vectors = np.stack([centres[s] + rng.normal(0, 0.3, 3) for s in sub])
    holdout = [False] * 40 + [True] * 12
    accuracy = options.linear_probe_accuracy(vectors, _items(options, sub, sub, holdout), epochs=300)
    # The 10 Topwear and Watches queries are right; the 2 Socks queries, a class never trained, cannot be.
    assert accuracy == pytest.approx(10 / 12)
