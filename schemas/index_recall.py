"""``index_recall``: recall of the approximate neighbour search against exact search, per category and price band, each run."""

from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, TimestampType

from schemas._table import Column, TableSchema

INDEX_RECALL = TableSchema(
    name="index_recall",
    comment=(
        "For the partitions above index.approximate_above items, whose similar_items lists come from an approximate "
        "search (faiss IVF): recall@k of each run's lists against exact lists computed for a sample of the items."
    ),
    columns=(
        Column("run_id", StringType(), "Run whose lists were measured.", nullable=False),
        Column("model_version", StringType(), "Model bundle the lists came from."),
        Column("category", StringType(), "Partition: category.", nullable=False),
        Column("price_band", IntegerType(), "Partition: price band.", nullable=False),
        Column("method", StringType(), "Approximate search: ivf_flat (faiss IndexIVFFlat).", nullable=False),
        Column("nprobe", IntegerType(), "Inverted lists searched per query (index.approximate_nprobe).", nullable=False),
        Column("partition_items", LongType(), "Items in the partition.", nullable=False),
        Column("k", IntegerType(), "List positions compared (ranks 1..k).", nullable=False),
        Column("items_sampled", LongType(), "Items of the partition whose list this run computed and checked.", nullable=False),
        Column("recall_at_k", DoubleType(), "Mean share of an item's exact top-k neighbours found in its published top k.",
               nullable=False),
        Column("measured_at", TimestampType(), "When it was measured (UTC).", nullable=False),
    ),
    constraints={"recall_is_share": "recall_at_k BETWEEN 0 AND 1"},
)
