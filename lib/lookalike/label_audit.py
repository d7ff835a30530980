"""Label audit: labelled items whose category their own title contradicts.

A retailer's category labels are not all right. In the demo catalog a watch is filed under
"Free Gifts" and children's "Flops ... Slippers" under "Sandal": no photo model can learn those
labels, and counting them as its errors measures the catalog, not the model. The audit finds them
from the catalog's own text, never from a model's predictions, so it cannot favour a model:

1. The vocabulary is the words of the catalog's articleType values (``Flip Flops`` gives ``flip``
   and ``flop``): words that name a kind of product, not brands or colours.
2. A vocabulary word *identifies* a category when at least ``min_items`` labelled titles contain
   it and at least ``min_share`` of them are labelled with that category.
3. An item's label is *disputed* when its title contains a word identifying another category
   and none identifying its own.

Words are lower-cased, split on anything but the letters a-z, and reduced to a singular by two suffix
rules (``watches`` -> ``watch``, ``flops`` -> ``flop``; ``dress`` stays).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


def _singular(word: Column) -> Column:
    """``watches`` -> ``watch``, ``dresses`` -> ``dress``, ``flops`` -> ``flop``; ``dress``, ``bus`` kept."""
    without_es = F.regexp_replace(word, "(ch|sh|ss|x)es$", "$1")
    return F.regexp_replace(without_es, "^(.{2,}[^s])s$", "$1")


def title_words(text: Column) -> Column:
    """The distinct normalised words of a text column, as an array (empty for null or empty text).

    Parameters
    ----------
    text : Column
        A string column (a title, an articleType).

    Returns
    -------
    Column
        ``array<string>``: lower-cased runs of the letters a-z, singularised, each once.
    """
    words = F.filter(F.split(F.lower(F.coalesce(text, F.lit(""))), "[^a-z]+"), lambda word: word != "")
    return F.array_distinct(F.transform(words, _singular))


def _check_thresholds(min_items: int, min_share: float) -> None:
    if min_items < 1:
        raise ValueError(f"min_items must be at least 1, got {min_items}")
    # Above one half, a word identifies at most one category.
    if not 0.5 < min_share <= 1.0:
        raise ValueError(f"min_share must be above 0.5 and at most 1, got {min_share}")


def identifying_words(labelled: DataFrame, *, min_items: int, min_share: float) -> DataFrame:
    """The product-type words of the titles that identify one category.

    Parameters
    ----------
    labelled : DataFrame
        ``category``, ``article_type`` and ``title`` of labelled items (rows without a category are ignored).
    min_items : int
        Least number of labelled titles containing a word for it to count.
    min_share : float
        Least share of those titles labelled with one category (above 0.5).

    Returns
    -------
    DataFrame
        ``word``, ``category`` (the one it identifies), ``items`` (titles containing it) and
        ``share`` (of them labelled ``category``).

    Raises
    ------
    ValueError
        If ``min_items`` is below 1 or ``min_share`` not in (0.5, 1].
    """
    _check_thresholds(min_items, min_share)
    labelled = labelled.where(F.col("category").isNotNull())
    vocabulary = labelled.select(F.explode(title_words(F.col("article_type"))).alias("word")).distinct()
    words = labelled.select("category", F.explode(title_words(F.col("title"))).alias("word")).join(vocabulary, "word")
    per_category = words.groupBy("word", "category").agg(F.count(F.lit(1)).alias("labelled"))
    titles = F.sum("labelled").over(Window.partitionBy("word"))
    return (
        per_category.withColumn("items", titles)
        .withColumn("share", F.col("labelled") / F.col("items"))
        .where((F.col("items") >= min_items) & (F.col("share") >= min_share))
        .select("word", "category", "items", "share")
    )


def title_label_conflicts(labelled: DataFrame, *, min_items: int, min_share: float) -> DataFrame:
    """Labelled items whose title names another category's product type and not their own.

    Parameters
    ----------
    labelled : DataFrame
        ``item_id``, ``category``, ``article_type`` and ``title`` (rows without a category are ignored).
    min_items, min_share : int, float
        As :func:`identifying_words`.

    Returns
    -------
    DataFrame
        ``item_id``, ``category``, ``article_type``, ``title``, ``title_categories`` (the other
        categories its title's words identify, sorted) and ``title_words`` (those words, sorted);
        one row per contradicted item.
    """
    labelled = labelled.where(F.col("category").isNotNull()).select("item_id", "category", "article_type", "title")
    identifying = identifying_words(labelled, min_items=min_items, min_share=min_share).select(
        "word", F.col("category").alias("word_category")
    )
    item_words = labelled.select("*", F.explode(title_words(F.col("title"))).alias("word")).join(identifying, "word")
    other = F.col("word_category") != F.col("category")
    per_item = item_words.groupBy("item_id", "category", "article_type", "title").agg(
        F.max((~other).cast("int")).alias("names_own"),
        F.sort_array(F.collect_set(F.when(other, F.col("word_category")))).alias("title_categories"),
        F.sort_array(F.collect_set(F.when(other, F.col("word")))).alias("title_words"),
    )
    return per_item.where(F.col("names_own") == 0).drop("names_own")
