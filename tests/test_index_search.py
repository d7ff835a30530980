"""benchmarks/index_search.py: the synthetic catalog, exact lists equal across methods, recall@k."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("index_search")


@pytest.fixture(scope="module")
def real(bench) -> np.ndarray:
    """A stand-in for the Lite0 features of real photos: 80 random 200-d rows, projected to 16-d."""
    features = np.random.default_rng(5).gamma(2.0, size=(80, 200)).astype(np.float32)
    return bench.project(features, 16)


def test_projection_gives_unit_rows_of_the_asked_dimension(bench, real):
    assert real.shape == (80, 16) and real.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(real, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        bench.project(np.ones((10, 50)), 20)  # more components than photos


def test_catalog_has_the_category_and_band_skew_and_repeats(bench, real):
    catalog = bench.synthesise_catalog(real, 600, seed=3, categories=12)
    assert catalog.size == 600 and catalog.vectors.shape == (600, 16)
    np.testing.assert_allclose(np.linalg.norm(catalog.vectors, axis=1), 1.0, atol=1e-6)
    names, counts = np.unique(catalog.category, return_counts=True)
    assert dict(zip(names, counts))["cat-00"] == 240  # 40 % exactly
    assert len(names) == 12 and counts[1:].max() < 240 and counts[1:].sum() == 360
    tail = [dict(zip(names, counts))[f"cat-{c:02d}"] for c in range(1, 12)]
    assert tail == sorted(tail, reverse=True) and tail[0] > 3 * tail[-1]  # a long tail, biggest first
    bands = np.bincount(catalog.price_band, minlength=5)
    assert bands[0] > bands[1] > bands[2] and bands[0] > 0.4 * 600
    again = bench.synthesise_catalog(real, 600, seed=3, categories=12)
    np.testing.assert_array_equal(catalog.vectors, again.vectors)
    np.testing.assert_array_equal(catalog.category, again.category)
    parts = bench.partition_rows(catalog)
    assert sum(len(p) for p in parts) == 600 and len(np.unique(np.concatenate(parts))) == 600
    for rows in parts:
        assert len(set(catalog.category[rows])) == 1 and len(set(catalog.price_band[rows])) == 1
    assert bench.sum_squared_sizes(parts) == sum(len(p) ** 2 for p in parts) < 0.2 * 600**2
    assert list(bench.category_counts(1000, 5)) == [400, 288, 144, 96, 72]


def test_drop_self_keeps_k_others_even_when_a_tie_pushed_self_out(bench):
    found = np.array([[0, 2, 1], [2, 0, 3], [1, 0, 3]])  # row 2's own index is missing
    scores = np.array([[1.0, 0.9, 0.8], [0.95, 0.9, 0.7], [1.0, 1.0, 0.5]])
    kept, kept_scores = bench.drop_self(np.array([0, 1, 2]), found, scores, 2)
    np.testing.assert_array_equal(kept, [[2, 1], [2, 0], [1, 0]])
    np.testing.assert_array_equal(kept_scores, [[0.9, 0.8], [0.95, 0.9], [1.0, 1.0]])


def test_recall_is_one_on_the_exact_lists_and_known_on_a_hand_made_case(bench):
    exact = np.array([[1, 2, 3], [0, 2, -1], [-1, -1, -1]])
    assert bench.recall_at_k(exact, exact) == 1.0
    approx = np.array([[3, 5, -1], [2, 0, -1], [0, 1, -1]])
    # item 0 finds 1 of 3, item 1 both of 2, item 2 has no exact list and is left out.
    assert bench.recall_at_k(exact, approx) == pytest.approx((1 / 3 + 1) / 2)
    assert bench.recall_at_k(exact, np.full_like(exact, -1)) == 0.0


def test_ours_equals_faiss_and_sklearn_on_a_tiny_catalog(bench, real, spark, tmp_path):
    """Same top-k scores per item from our Spark job, faiss IndexFlatIP and scikit-learn brute force."""
    catalog = bench.synthesise_catalog(real, 600, seed=11, categories=6)
    parts = bench.partition_rows(catalog)
    path = tmp_path / "catalog.parquet"
    bench.write_parquet(catalog, path)
    # block_items 60: the bigger partitions are scored block pair by block pair.
    seconds, ours, peak = bench.ours_lists(
        spark, path, catalog.size, 20, block_rows=64, block_items=60, out_path=tmp_path / "lists.parquet"
    )
    assert seconds > 0
    assert max(len(rows) for rows in parts) > 60
    assert peak["jvm_rss"] > 100 and 0 < peak["jvm_anon"] <= peak["jvm_rss"]  # the sampler saw the session's JVM
    faiss = bench.faiss_lists(catalog, parts, 20, threads=2)
    sklearn = bench.sklearn_lists(catalog, parts, 20, threads=2)
    for other in (faiss, sklearn):
        agreement = bench.compare_lists(ours, other)
        assert agreement["scores_equal"], agreement
        assert agreement["share_same_ids"] > 0.95  # ids differ only where scores tie
    # Lists are within partitions, never the item itself, min(20, partition size - 1) long.
    part_of = np.empty(catalog.size, dtype=np.int64)
    for p, rows in enumerate(parts):
        part_of[rows] = p
    sizes = np.array([len(rows) for rows in parts])[part_of]
    assert np.array_equal((ours.neighbours >= 0).sum(axis=1), np.minimum(20, sizes - 1))
    listed = ours.neighbours >= 0
    rows = np.broadcast_to(np.arange(catalog.size)[:, None], ours.neighbours.shape)
    assert np.all(part_of[ours.neighbours[listed]] == part_of[rows[listed]])
    assert not np.any(ours.neighbours == np.arange(catalog.size)[:, None])
    # The exact lists against themselves, and a brute-force check of one partition.
    assert bench.recall_at_k(ours.neighbours, faiss.neighbours) == pytest.approx(1.0, abs=0.01)
    first = parts[0]
    sims = catalog.vectors[first].astype(np.float64) @ catalog.vectors[first].T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(ours.scores[first], -np.sort(-sims, axis=1)[:, :20], atol=1e-5)


def test_lsh_stays_within_partitions_and_its_recall_is_measured(bench, real, spark, tmp_path):
    catalog = bench.synthesise_catalog(real, 200, seed=2, categories=3)
    path = tmp_path / "small.parquet"
    bench.write_parquet(catalog, path)
    exact = bench.faiss_lists(catalog, bench.partition_rows(catalog), 5, threads=1)
    # lsh_lists raises if the join pairs items of different partitions.
    _, approx = bench.lsh_lists(spark, path, catalog.size, 5, bucket_length=0.5, tables=3, threshold=2.0)
    recall = bench.recall_at_k(exact.neighbours, approx.neighbours)
    assert 0.5 < recall <= 1.0
    found = approx.neighbours >= 0
    # Its scores, 1 - dist² / 2, are true inner products of the pairs it found.
    rows = np.broadcast_to(np.arange(catalog.size)[:, None], approx.neighbours.shape)[found]
    true = np.einsum("ij,ij->i", catalog.vectors[rows], catalog.vectors[approx.neighbours[found]])
    np.testing.assert_allclose(approx.scores[found], true, atol=1e-5)
