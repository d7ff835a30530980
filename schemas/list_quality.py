"""``list_quality``: precision of the published lists per category and price band, one set of rows per run."""

from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, TimestampType

from schemas._table import Column, TableSchema

LIST_QUALITY = TableSchema(
    name="list_quality",
    comment=(
        "articleType precision@k of each run's similar_items per (category, price_band), over labelled items, "
        "beside the precision of a random list from the same partition: a model change that makes lists worse shows here."
    ),
    columns=(
        Column("run_id", StringType(), "Run whose lists were measured.", nullable=False),
        Column("model_version", StringType(), "Model bundle the lists came from."),
        Column("category", StringType(), "Partition: category.", nullable=False),
        Column("price_band", IntegerType(), "Partition: price band.", nullable=False),
        Column("k", IntegerType(), "List positions measured (ranks 1..k).", nullable=False),
        Column("items_evaluated", LongType(), "Labelled items with a labelled neighbour in their top k.", nullable=False),
        Column("precision_at_k", DoubleType(), "Mean share of an item's labelled top-k neighbours of its articleType.",
               nullable=False),
        Column("strict_precision_at_k", DoubleType(), "The same, unlabelled neighbours counted as misses.", nullable=False),
        Column("random_list_precision", DoubleType(),
               "Expected precision of a random list from the partition; null with one labelled item."),
        Column("measured_at", TimestampType(), "When it was measured (UTC).", nullable=False),
    ),
    constraints={"precision_is_share": "precision_at_k BETWEEN 0 AND 1 AND strict_precision_at_k BETWEEN 0 AND 1"},
)
