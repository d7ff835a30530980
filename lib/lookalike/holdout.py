"""The fixed held-out split of labelled items, and how well an embedding retrieves on it.

Every model version is trained without the same holdout items and measured on them, so the
versions in the model store, and the evaluation command's options, are compared on equal terms.
The split is a function of the item id alone: ``zlib.crc32(item_id) % 100``. Spark's ``crc32``
is the same function, so the train job (Spark) and the evaluation command (numpy) agree.
"""

from __future__ import annotations

import zlib

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

SPLIT_BUCKETS = 100
SPLIT_RULE = "zlib.crc32(item_id) % 100"  # recorded in every bundle's metrics, checked by the evaluation command
TOP_K = 10


def _cuts(holdout_fraction: float, validation_fraction: float) -> tuple[int, int]:
    holdout = round(holdout_fraction * SPLIT_BUCKETS)
    validation = round((holdout_fraction + validation_fraction) * SPLIT_BUCKETS)
    if not 0 <= holdout <= validation <= SPLIT_BUCKETS:
        raise ValueError(
            f"holdout_fraction {holdout_fraction} and validation_fraction {validation_fraction} must be >= 0 "
            "and add up to at most 1"
        )
    return holdout, validation


def split_of(item_id: str, *, holdout_fraction: float, validation_fraction: float = 0.0) -> str:
    """``holdout``, ``validation`` or ``train`` for one item id (the rule of :func:`split_column`).

    Parameters
    ----------
    item_id : str
        The catalog's item id.
    holdout_fraction, validation_fraction : float
        Shares of the id space, in steps of 1 %.

    Returns
    -------
    str
        The item's split.
    """
    holdout, validation = _cuts(holdout_fraction, validation_fraction)
    bucket = zlib.crc32(item_id.encode("utf-8")) % SPLIT_BUCKETS
    return "holdout" if bucket < holdout else "validation" if bucket < validation else "train"


def split_column(*, holdout_fraction: float, validation_fraction: float, item_id: str = "item_id") -> Column:
    """A Spark column: the split of each row's item id, equal to :func:`split_of`."""
    holdout, validation = _cuts(holdout_fraction, validation_fraction)
    bucket = F.pmod(F.crc32(F.col(item_id).cast("binary")), F.lit(SPLIT_BUCKETS))
    return F.when(bucket < holdout, "holdout").when(bucket < validation, "validation").otherwise("train")


def retrieval_metrics(
    vectors: np.ndarray,
    sub_category: np.ndarray,
    article_type: np.ndarray,
    holdout: np.ndarray,
    *,
    k: int = TOP_K,
) -> dict[str, float | int]:
    """Holdout-vs-reference retrieval quality by cosine similarity.

    Queries are the holdout items, candidates the other items; no holdout item is ever a candidate.

    Parameters
    ----------
    vectors : numpy.ndarray
        ``(n, dim)`` L2-normalised vectors.
    sub_category, article_type : numpy.ndarray
        ``(n,)`` labels of the same items (the catalog's ``category`` and ``article_type``).
    holdout : numpy.ndarray
        ``(n,)`` booleans: True for query items.
    k : int, default 10
        List length for precision.

    Returns
    -------
    dict
        ``subcat_1nn`` (label of the nearest candidate), ``at_p10`` (share of the k nearest
        candidates with the query's articleType), ``at_p10_in_subcat`` (the same with candidates
        restricted to the query's true subCategory, over min(k, candidates)), ``queries`` and
        ``queries_in_subcat`` (queries with at least one candidate of their subCategory).
    """
    q = np.flatnonzero(holdout)
    r = np.flatnonzero(~np.asarray(holdout, dtype=bool))
    if not q.size or not r.size:
        raise ValueError(f"need both query and candidate items, got {q.size} and {r.size}")
    sims = vectors[q] @ vectors[r].T
    ref_sub, ref_art = sub_category[r], article_type[r]
    q_sub, q_art = sub_category[q], article_type[q]
    # Stable sort on -similarity: ties go to the earlier candidate, so runs repeat.
    order = np.argsort(-sims, axis=1, kind="stable")
    within = []
    for row, (sub, art) in enumerate(zip(q_sub, q_art)):
        candidates = np.flatnonzero(ref_sub == sub)
        if candidates.size:
            ranked = candidates[np.argsort(-sims[row, candidates], kind="stable")][:k]
            within.append(float(np.mean(ref_art[ranked] == art)))
    return {
        "subcat_1nn": float(np.mean(ref_sub[order[:, 0]] == q_sub)),
        "at_p10": float(np.mean(ref_art[order[:, :k]] == q_art[:, None])),
        "at_p10_in_subcat": float(np.mean(within)) if within else float("nan"),
        "queries": int(q.size),
        "queries_in_subcat": len(within),
    }
