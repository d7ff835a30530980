"""Exact blocked top-k against a brute-force reference, and per-partition look-alike lists in Spark."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.neighbours import (
    BLOCK_CELLS, ApproximateSearch, approximate_top_k, bounded_block_rows, candidate_top_k, index_recall, similar_items,
    top_k_blocked, top_k_of_queries,
)
from schemas import EMBEDDINGS, SIMILAR_ITEMS


def reference_top_k(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: full similarity matrix, self excluded, each row fully sorted by (-score, index)."""
    v = np.asarray(vectors, dtype=np.float64)
    n = v.shape[0]
    kk = max(0, min(k, n - 1))
    sims = v @ v.T
    neighbours = np.zeros((n, kk), dtype=np.int64)
    scores = np.zeros((n, kk), dtype=np.float64)
    for i in range(n):
        candidates = np.array([j for j in range(n) if j != i], dtype=np.int64)
        row = sims[i, candidates]
        order = np.lexsort((candidates, -row))  # last key is primary: score descending, then index
        neighbours[i] = candidates[order][:kk]
        scores[i] = row[order][:kk]
    return neighbours, scores


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random L2-normalised float32 rows."""
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("block_rows", [1, 4, 7, 23, 1024])
@pytest.mark.parametrize("k", [1, 5, 22, 40])
def test_matches_brute_force_on_random_unit_vectors(block_rows, k):
    """Neighbours equal the brute-force ranking for every block size (smaller than n, not dividing it, larger)."""
    vectors = unit_rows(np.random.default_rng(1234 + k), 23, 6)
    neighbours, scores = top_k_blocked(vectors, k, block_rows=block_rows)
    expected_neighbours, expected_scores = reference_top_k(vectors, k)
    assert neighbours.shape == expected_neighbours.shape == (23, min(k, 22))
    np.testing.assert_array_equal(neighbours, expected_neighbours)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert scores.dtype == np.float32


@pytest.mark.parametrize("block_rows", [1, 3, 8, 10, 64])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_matches_brute_force_with_many_exact_ties(block_rows, k):
    """Small-integer vectors (exact dot products, many equal scores) give the reference's lower-index tie order."""
    rng = np.random.default_rng(99 + k + block_rows)
    vectors = rng.integers(-1, 2, size=(30, 3)).astype(np.float32)
    vectors[rng.integers(0, 30, 5)] = vectors[0]  # duplicated rows as well
    neighbours, scores = top_k_blocked(vectors, k, block_rows=block_rows)
    expected_neighbours, expected_scores = reference_top_k(vectors, k)
    np.testing.assert_array_equal(neighbours, expected_neighbours)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))


@pytest.mark.parametrize("block_rows", [7, 1024])
def test_float32_candidates_give_the_exact_lists_without_a_full_pass(block_rows):
    """400 random rows, 15 candidates each: every list comes from its candidates and equals brute force."""
    vectors = unit_rows(np.random.default_rng(8), 400, 16)
    neighbours, scores, recomputed = candidate_top_k(vectors, 6, block_rows=block_rows)
    expected_neighbours, expected_scores = reference_top_k(vectors, 6)
    np.testing.assert_array_equal(neighbours, expected_neighbours)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert recomputed == 0


def test_rows_whose_cut_ties_beyond_the_candidates_are_recomputed_in_full():
    """With 40 copies of each of 5 vectors, the k-th score ties with rows the 8 candidates leave out:
    those rows take the full float64 pass and still get the lower-index order."""
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, 5, 8)[rng.integers(0, 5, size=200)]
    neighbours, scores, recomputed = candidate_top_k(vectors, 4, block_rows=64, extra=3)
    expected_neighbours, expected_scores = reference_top_k(vectors, 4)
    np.testing.assert_array_equal(neighbours, expected_neighbours)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert recomputed == 200
    # The list of a single row asked alone is the one it gets in the whole batch.
    alone, _, _ = candidate_top_k(vectors, 4, rows=np.array([17]), extra=3)
    np.testing.assert_array_equal(alone[0], neighbours[17])


def test_query_blocks_shrink_so_a_block_stays_bounded_however_many_candidates():
    """A 400,000-item category gets 10-row blocks (32 MB of float64 per matrix); small ones keep block_rows."""
    assert bounded_block_rows(1024, 400_000) == 10 and 10 * 400_000 <= BLOCK_CELLS
    assert bounded_block_rows(1024, 3_000) == 1024
    assert bounded_block_rows(1024, 50_000_000) == 1  # never zero rows
    assert bounded_block_rows(7, 0) == 7


def test_self_never_a_neighbour_even_when_duplicated():
    """A row is never its own neighbour, even when other rows are identical to it (score 1 ties with self)."""
    vectors = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (6, 1))
    neighbours, scores = top_k_blocked(vectors, 5, block_rows=4)
    for i in range(6):
        assert i not in neighbours[i]
        assert sorted(neighbours[i]) == [j for j in range(6) if j != i]
    np.testing.assert_array_equal(scores, np.ones((6, 5), dtype=np.float32))


def test_exact_ties_broken_by_lower_index():
    """Duplicated vectors tie exactly; the lower row index always ranks first."""
    e0, e1, e2 = np.eye(3, dtype=np.float32)
    # rows:              0   1   2   3   4   5   6
    vectors = np.stack([e1, e0, e2, e0, e1, e0, e2])
    neighbours, scores = top_k_blocked(vectors, 6, block_rows=3)
    # Row 1 (e0): the other e0 rows 3, 5 score 1; all the rest score 0, in index order.
    np.testing.assert_array_equal(neighbours[1], [3, 5, 0, 2, 4, 6])
    np.testing.assert_array_equal(scores[1], [1, 1, 0, 0, 0, 0])
    # Row 5 (e0): rows 1, 3 score 1 (lower first), then the zeros.
    np.testing.assert_array_equal(neighbours[5], [1, 3, 0, 2, 4, 6])
    # Row 6 (e2): row 2 scores 1, then everything else at 0 by index.
    np.testing.assert_array_equal(neighbours[6], [2, 0, 1, 3, 4, 5])
    # Row 0 (e1) with k=2: the duplicate 4, then the lowest-index zero, 1.
    two, _ = top_k_blocked(vectors, 2, block_rows=5)
    np.testing.assert_array_equal(two[0], [4, 1])


def test_fewer_rows_than_k_gives_n_minus_one():
    """With n - 1 < k every row lists all n - 1 others, most similar first."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    neighbours, scores = top_k_blocked(vectors, 10, block_rows=2)
    np.testing.assert_array_equal(neighbours, [[2, 1], [2, 0], [1, 0]])
    np.testing.assert_allclose(scores, [[0.6, 0.0], [0.8, 0.0], [0.8, 0.6]], atol=1e-6)


def test_single_row_has_no_neighbours():
    """n = 1 gives an empty (1, 0) result with the documented dtypes."""
    neighbours, scores = top_k_blocked(np.array([[1.0, 0.0]], dtype=np.float32), 5)
    assert neighbours.shape == (1, 0) and scores.shape == (1, 0)
    assert neighbours.dtype == np.int64 and scores.dtype == np.float32


def test_float64_input_is_accepted():
    """float64 input gives the same neighbours as its float32 version."""
    vectors = unit_rows(np.random.default_rng(5), 12, 4)
    from_32, _ = top_k_blocked(vectors, 3, block_rows=5)
    from_64, _ = top_k_blocked(vectors.astype(np.float64), 3, block_rows=5)
    np.testing.assert_array_equal(from_32, from_64)


# ---------------------------------------------------------------- Spark: similar_items

C30, S30 = math.cos(math.pi / 6), math.sin(math.pi / 6)  # 30 degrees

# (item_id, category, price_band, embedding, price): 2-d unit vectors whose cosines are easy to read.
ITEMS = [
    # Shoes / band 0: angles 0, 30, 90, 180 degrees.
    ("s1", "Shoes", 0, [1.0, 0.0], 100.0),
    ("s2", "Shoes", 0, [C30, S30], 110.0),
    ("s3", "Shoes", 0, [0.0, 1.0], 120.0),
    ("s4", "Shoes", 0, [-1.0, 0.0], 130.0),
    # Shoes / band 1: 0 degrees, (0.6, 0.8), 90 degrees; b1 is identical to s1.
    ("b1", "Shoes", 1, [1.0, 0.0], 1500.0),
    ("b2", "Shoes", 1, [0.6, 0.8], 1600.0),
    ("b3", "Shoes", 1, [0.0, 1.0], 1700.0),
    # Bags / band 0: two items, one identical to s1 and b1.
    ("c1", "Bags", 0, [1.0, 0.0], 50.0),
    ("c2", "Bags", 0, [0.8, 0.6], 60.0),
    # Bags / band 1: a lone item, which gets no list.
    ("d1", "Bags", 1, [1.0, 0.0], 3000.0),
]

PRICE = {item: price for item, _, _, _, price in ITEMS}

# k = 2. Worked out by hand from the angles; ties (equal cosine) go to the smaller item_id.
EXPECTED = [
    # item, rank, neighbour, score
    ("Shoes", 0, "s1", 1, "s2", C30),
    ("Shoes", 0, "s1", 2, "s3", 0.0),  # s3 (0) beats s4 (-1)
    ("Shoes", 0, "s2", 1, "s1", C30),
    ("Shoes", 0, "s2", 2, "s3", 0.5),  # cos 60
    ("Shoes", 0, "s3", 1, "s2", 0.5),
    ("Shoes", 0, "s3", 2, "s1", 0.0),  # s1 and s4 both 0: s1 is the smaller id
    ("Shoes", 0, "s4", 1, "s3", 0.0),
    ("Shoes", 0, "s4", 2, "s2", -C30),  # cos 150 beats cos 180
    ("Shoes", 1, "b1", 1, "b2", 0.6),
    ("Shoes", 1, "b1", 2, "b3", 0.0),
    ("Shoes", 1, "b2", 1, "b3", 0.8),
    ("Shoes", 1, "b2", 2, "b1", 0.6),
    ("Shoes", 1, "b3", 1, "b2", 0.8),
    ("Shoes", 1, "b3", 2, "b1", 0.0),
    ("Bags", 0, "c1", 1, "c2", 0.8),  # only one other item in the partition
    ("Bags", 0, "c2", 1, "c1", 0.8),
]


@pytest.fixture(scope="module")
def embeddings(spark):
    """The hand-made items as an ``embeddings`` DataFrame, shuffled over partitions."""
    rows = [
        (item, category, category, category, 0.9, [float(x) for x in vector], price, band, f"hash-{item}", "v1", "run-e", 3)
        for item, category, band, vector, price in reversed(ITEMS)
    ]
    return spark.createDataFrame(rows, EMBEDDINGS.spark_schema).repartition(3)


def test_similar_items_matches_hand_worked_lists(spark, embeddings):
    """The whole output equals the lists worked out by hand, in the similar_items schema."""
    actual = similar_items(embeddings, k=2, block_rows=2, run_id="run-i")
    expected = spark.createDataFrame(
        [
            (category, band, item, rank, neighbour, float(score), PRICE[neighbour], "v1", "run-i", 0)
            for category, band, item, rank, neighbour, score in EXPECTED
        ],
        SIMILAR_ITEMS.spark_schema,
    )
    assert actual.schema.fieldNames() == SIMILAR_ITEMS.column_names
    assertDataFrameEqual(actual, expected, atol=1e-6)


def test_similar_items_never_cross_partitions(embeddings):
    """Every neighbour shares the item's category and price band, and is never the item itself."""
    lists = similar_items(embeddings, k=5, block_rows=3, run_id="run-i")
    keys = embeddings.select("item_id", "category", "price_band")
    joined = (
        lists.alias("l")
        .join(keys.alias("n"), F.col("l.neighbour_id") == F.col("n.item_id"))
        .select(
            F.col("l.item_id"),
            (F.col("l.category") == F.col("n.category")).alias("same_category"),
            (F.col("l.price_band") == F.col("n.price_band")).alias("same_band"),
            (F.col("l.item_id") != F.col("l.neighbour_id")).alias("not_self"),
        )
        .collect()
    )
    # With k above every partition size, each item lists all others of its partition: 4*3 + 3*2 + 2*1.
    assert len(joined) == 12 + 6 + 2
    assert all(r["same_category"] and r["same_band"] and r["not_self"] for r in joined)
    counts = {r["item_id"]: r["count"] for r in lists.groupBy("item_id").count().collect()}
    assert counts == {"s1": 3, "s2": 3, "s3": 3, "s4": 3, "b1": 2, "b2": 2, "b3": 2, "c1": 1, "c2": 1}


def test_similar_items_empty_input_gives_empty_output(spark):
    """No embeddings gives no rows (and does not fail)."""
    empty = spark.createDataFrame([], EMBEDDINGS.spark_schema)
    assert similar_items(empty, k=3, block_rows=4, run_id="r").collect() == []


# ---------------------------------------------------------------- Spark: partitions split in blocks

def random_catalog(seed: int, sizes: dict[tuple[str, int], int], d: int = 4) -> list[tuple]:
    """(category, price_band, item_id, embedding, price, model_version) rows; a fifth of the vectors repeat another row's."""
    rng = np.random.default_rng(seed)
    rows = []
    for (category, band), size in sizes.items():
        vectors = unit_rows(rng, size, d).astype(np.float64)
        repeats = rng.random(size) < 0.2
        vectors[repeats] = vectors[rng.integers(0, size, int(repeats.sum()))]  # exact ties, also at the cut
        for j, vector in enumerate(vectors):
            item = f"{category[0]}{band}-{int(rng.integers(0, 10**6)):06d}-{j:03d}"  # ids not in vector order
            rows.append((category, band, item, [float(x) for x in vector], float(rng.integers(10, 99)), "v1"))
    return rows


ITEM_SCHEMA = "category string, price_band int, item_id string, embedding array<float>, price double, model_version string"


@pytest.mark.parametrize("block_items", [9, 20, 40])
@pytest.mark.parametrize("k", [3, 8])
def test_split_partitions_give_the_lists_of_one_task_per_partition(spark, block_items, k):
    """Partitions split into block pairs (then merged) give exactly the lists of one task per partition."""
    sizes = {("Tops", 0): 83, ("Tops", 1): 41, ("Shoes", 0): 21, ("Bags", 2): 6, ("Bags", 3): 1}
    items = spark.createDataFrame(random_catalog(7 + k, sizes), ITEM_SCHEMA).repartition(3)
    whole = similar_items(items, k=k, block_rows=5, run_id="r")
    split = similar_items(items, k=k, block_rows=5, run_id="r", block_items=block_items)
    assert split.schema == whole.schema
    assertDataFrameEqual(split, whole, rtol=0, atol=0)


def test_split_lists_with_fewer_items_than_k_list_the_whole_partition(spark):
    """A split partition smaller than k + 1 lists every other item, as one task would."""
    items = spark.createDataFrame(random_catalog(3, {("Tops", 0): 7}), ITEM_SCHEMA)
    split = similar_items(items, k=10, block_rows=4, run_id="r", block_items=2)
    assert split.groupBy("item_id").count().where("count <> 6").count() == 0
    assertDataFrameEqual(split, similar_items(items, k=10, block_rows=4, run_id="r"), rtol=0, atol=0)


@pytest.mark.parametrize("seed", [1, 2])
def test_split_partitions_recompute_the_same_lists_incrementally(spark, seed):
    """With the refresh's flags, split partitions recompute exactly the lists one task per partition does.

    The flags are random (changed items, entrants, previous list lengths and k-th scores), so every
    branch of the rule is taken: must, entrant reaching the previous k-th score, short list.
    """
    k = 4
    rng = np.random.default_rng(seed)
    rows = random_catalog(seed, {("Tops", 0): 60, ("Tops", 1): 30, ("Shoes", 0): 12})
    flagged = [
        (*row, bool(rng.random() < 0.1), bool(rng.random() < 0.1) or None, int(rng.integers(0, k + 1)), float(rng.uniform(0.7, 1.0)))
        for row in rows
    ]
    schema = ITEM_SCHEMA + ", _must boolean, _entrant boolean, _previous_length long, _previous_kth float"
    items = spark.createDataFrame(flagged, schema)
    whole = similar_items(items, k=k, block_rows=7, run_id="r")
    split = similar_items(items, k=k, block_rows=7, run_id="r", block_items=11)
    recomputed = whole.select("item_id").distinct().count()
    assert 0 < recomputed < len(rows)  # only some lists, so the rule is exercised
    assertDataFrameEqual(split, whole, rtol=0, atol=0)


# ---------------------------------------------------------------- approximate search

def clustered_rows(rng: np.random.Generator, n: int, d: int = 16, centres: int = 12) -> np.ndarray:
    """n unit rows around a few random centres, as catalog embeddings are."""
    centre = unit_rows(rng, centres, d).astype(np.float64)
    x = centre[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_approximate_search_probing_every_list_is_exact():
    """With nprobe = every inverted list the IVF search is exhaustive: the exact lists, ids and scores."""
    vectors = clustered_rows(np.random.default_rng(5), 900)
    own = np.arange(len(vectors))
    exact, exact_scores, _ = top_k_of_queries(vectors, vectors, 10, own=own, block_rows=64)
    approx, approx_scores = approximate_top_k(vectors, vectors, 10, own=own, nprobe=10_000, block_rows=64)
    np.testing.assert_array_equal(approx, exact)
    np.testing.assert_array_equal(approx_scores, exact_scores)


def test_approximate_search_with_few_probes_misses_some_neighbours_and_never_lists_self():
    """One probe out of 30 lists finds most, not all, true neighbours; found scores are exact float64."""
    vectors = clustered_rows(np.random.default_rng(6), 900)
    own = np.arange(len(vectors))
    exact, _, _ = top_k_of_queries(vectors, vectors, 10, own=own)
    approx, scores = approximate_top_k(vectors, vectors, 10, own=own, nprobe=1)
    recall = np.mean([len(np.intersect1d(a[a >= 0], e)) / len(e) for a, e in zip(approx, exact)])
    assert 0.3 < recall < 1.0
    assert not np.any(approx == own[:, None])
    listed = approx >= 0
    rows = np.broadcast_to(own[:, None], approx.shape)
    np.testing.assert_allclose(scores[listed], np.einsum("nd,nd->n", vectors[rows[listed]], vectors[approx[listed]]), rtol=0, atol=1e-12)


def test_approximate_settings_are_checked():
    """Off by default; bad settings are refused with the names of the keys."""
    assert ApproximateSearch.from_config({"approximate_above": 0}) is None
    search = ApproximateSearch.from_config({"approximate_above": 10, "approximate_nprobe": 4, "recall_sample": 0.5})
    assert search == ApproximateSearch(above=10, nprobe=4, recall_sample=0.5)
    with pytest.raises(ValueError, match="approximate_nprobe"):
        ApproximateSearch.from_config({"approximate_above": 10, "approximate_nprobe": 0, "recall_sample": 0.5})
    with pytest.raises(ValueError, match="recall_sample"):
        ApproximateSearch.from_config({"approximate_above": 10, "approximate_nprobe": 4, "recall_sample": 0})


def test_approximate_partitions_and_their_recall(spark):
    """Partitions above the limit are searched approximately, the others stay exact, and the recall is what it is.

    Every item is sampled (recall_sample 1.0), so index_recall must equal the recall computed here
    from the exact lists, partition by partition, for k 5 and 10.
    """
    rng = np.random.default_rng(8)
    sizes = {("Tops", 0): 700, ("Tops", 1): 420, ("Shoes", 0): 90}
    rows = []
    for (category, band), size in sizes.items():
        for j, vector in enumerate(clustered_rows(rng, size)):
            rows.append((category, band, f"{category}{band}-{j:04d}", [float(x) for x in vector], 10.0 + j, "v1"))
    items = spark.createDataFrame(rows, ITEM_SCHEMA)
    search = ApproximateSearch(above=100, nprobe=1, recall_sample=1.0)
    exact = similar_items(items, k=10, block_rows=64, run_id="r")
    approx = similar_items(items, k=10, block_rows=64, run_id="r", block_items=300, approximate=search)
    # The small partition keeps its exact lists; the big ones differ somewhere.
    assertDataFrameEqual(approx.where("category = 'Shoes'"), exact.where("category = 'Shoes'"), rtol=0, atol=0)
    assert approx.where("category = 'Tops'").exceptAll(exact.where("category = 'Tops'")).count() > 0
    recall = index_recall(items, approx, ks=(5, 10), block_rows=64, block_items=300, approximate=search)

    found = approx.toPandas()
    truth = exact.toPandas()
    expected = []
    for (category, band), size in sizes.items():
        if size <= search.above:
            continue
        for k in (5, 10):
            a = found[(found.category == category) & (found.price_band == band) & (found["rank"] <= k)]
            e = truth[(truth.category == category) & (truth.price_band == band) & (truth["rank"] <= k)]
            got = a.groupby("item_id")["neighbour_id"].apply(set)
            shares = [len(got.get(item, set()) & set(ids)) / len(ids) for item, ids in e.groupby("item_id")["neighbour_id"]]
            expected.append((category, band, size, k, len(shares), float(np.mean(shares))))
    expected_df = spark.createDataFrame(
        expected, "category string, price_band int, partition_items long, k int, items_sampled long, recall_at_k double"
    )
    assertDataFrameEqual(recall.select(*expected_df.columns), expected_df, rtol=1e-12)
    assert all(0.3 < r[-1] < 1.0 for r in expected)
