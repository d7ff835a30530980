"""Clusters of look-alike items within each category (Spark MLlib KMeans on the embeddings)."""

from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType, StringType, TimestampType

from schemas._table import Column, TableSchema

ITEM_CLUSTERS = TableSchema(
    name="item_clusters",
    comment=(
        "The cluster of every item within its category, from KMeans (cosine distance) on the published embeddings, "
        "k chosen per category by the best silhouette. Replaced whole by each clustering run."
    ),
    columns=(
        Column("category", StringType(), "Partition: category the item is indexed under.", nullable=False),
        Column("item_id", StringType(), "Catalog item id.", nullable=False),
        Column("cluster", IntegerType(), "Cluster number within the category, 0 .. k-1.", nullable=False),
        Column("k", IntegerType(), "Number of clusters chosen for the category.", nullable=False),
        Column("model_version", StringType(), "Model bundle the embeddings came from.", nullable=False),
        Column("run_id", StringType(), "Published run whose embeddings were clustered.", nullable=False),
    ),
    partition_by=("category",),
    constraints={"cluster_in_range": "cluster >= 0 AND cluster < k"},
)

CLUSTER_SILHOUETTES = TableSchema(
    name="cluster_silhouettes",
    comment=(
        "Every k tried for every category by each clustering run, with its silhouette (cosine); "
        "chosen marks the k whose clusters were published in item_clusters."
    ),
    columns=(
        Column("run_id", StringType(), "Published run whose embeddings were clustered.", nullable=False),
        Column("model_version", StringType(), "Model bundle the embeddings came from.", nullable=False),
        Column("category", StringType(), "Category clustered.", nullable=False),
        Column("items", LongType(), "Items of the category.", nullable=False),
        Column("k", IntegerType(), "Clusters tried.", nullable=False),
        Column("silhouette", DoubleType(), "Mean silhouette, cosine distance, in [-1, 1]; higher is better.",
               nullable=False),
        Column("chosen", BooleanType(), "The k published for the category (the best silhouette).", nullable=False),
        Column("measured_at", TimestampType(), "When it was computed (UTC).", nullable=False),
    ),
    constraints={"silhouette_in_range": "silhouette BETWEEN -1 AND 1", "k_at_least_two": "k >= 2"},
)
