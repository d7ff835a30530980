"""Label audit: which titles identify a category, and which labels their own titles contradict."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.label_audit import identifying_words, title_label_conflicts, title_words

_SCHEMA = "item_id string, category string, article_type string, title string"


def _catalog(spark):
    """Five watches, four flip-flops, three sandals; one watch filed as a gift, flops filed as sandals."""
    rows = [(f"w{i}", "Watches", "Watches", f"Brand{i} Men Black Dial Watch") for i in range(5)]
    rows += [(f"f{i}", "Flip Flops", "Flip Flops", f"Brand{i} Men Blue Flip Flops") for i in range(4)]
    rows += [(f"s{i}", "Sandal", "Sandals", f"Brand{i} Men Tan Sandals") for i in range(3)]
    rows += [
        ("gift", "Free Gifts", "Free Gifts", "Esprit Women Grey Dial Watch"),
        ("kids", "Sandal", "Sandals", "Kids Hit & Chase Flops Red Slippers"),
        # Names its own category too: not contradicted.
        ("both", "Sandal", "Sandals", "Sandals like Flip Flops"),
        ("untitled", "Sandal", "Sandals", None),
        ("unlabelled", None, None, "Brand Men Black Watch"),
    ]
    return spark.createDataFrame(rows, _SCHEMA)


def test_title_words_are_lower_case_singular_and_distinct(spark):
    """Plurals in -es after ch/sh/ss/x and in -s lose their suffix; 'dress' and short words stay; null gives []."""
    frame = spark.createDataFrame(
        [("Watches, DRESSES & T-shirts",), ("Flip Flops flop",), ("dress bus Boxes",), (None,)], "text string"
    )
    words = [r["words"] for r in frame.select(title_words(F.col("text")).alias("words")).collect()]
    assert words == [["watch", "dress", "t", "shirt"], ["flip", "flop"], ["dress", "bus", "box"], []]


def test_identifying_words_come_from_article_types_and_need_support_and_share(spark):
    """At share 0.8: 'watch' (6 titles, 5 Watches) does, 'flop' (6 titles, 4 Flip Flops) not; 'men', 'dial' are no articleType words."""
    words = identifying_words(_catalog(spark), min_items=3, min_share=0.8)
    expected = spark.createDataFrame(
        [("watch", "Watches", 6, 5 / 6), ("flip", "Flip Flops", 5, 4 / 5), ("sandal", "Sandal", 4, 1.0)],
        "word string, category string, items long, share double",
    )
    assertDataFrameEqual(words, expected)


def test_conflicts_are_labels_their_title_contradicts(spark):
    """The gift watch and the flops filed as sandals; not the item naming its own category, nor untitled ones."""
    conflicts = title_label_conflicts(_catalog(spark), min_items=3, min_share=0.6)
    expected = spark.createDataFrame(
        [
            ("gift", "Free Gifts", "Free Gifts", "Esprit Women Grey Dial Watch", ["Watches"], ["watch"]),
            ("kids", "Sandal", "Sandals", "Kids Hit & Chase Flops Red Slippers", ["Flip Flops"], ["flop"]),
        ],
        _SCHEMA + ", title_categories array<string>, title_words array<string>",
    )
    assertDataFrameEqual(conflicts, expected)


def test_a_stricter_share_flags_fewer_labels(spark):
    """At share 0.8 'flop' (4 of 6 titles Flip Flops) identifies nothing: only the gift watch is left."""
    conflicts = title_label_conflicts(_catalog(spark), min_items=3, min_share=0.8)
    assert [r["item_id"] for r in conflicts.collect()] == ["gift"]


@pytest.mark.parametrize(("min_items", "min_share", "message"), [(0, 0.9, "min_items"), (5, 0.5, "min_share"), (5, 1.2, "min_share")])
def test_thresholds_are_checked(spark, min_items, min_share, message):
    """A share of one half or less could let one word identify two categories."""
    with pytest.raises(ValueError, match=message):
        title_label_conflicts(_catalog(spark), min_items=min_items, min_share=min_share)
