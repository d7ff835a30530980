"""``similar_items``: the precomputed top-k look-alikes of every item within its category and price band."""

from pyspark.sql.types import DoubleType, FloatType, IntegerType, LongType, StringType

from schemas._table import Column, TableSchema

SIMILAR_ITEMS = TableSchema(
    name="similar_items",
    comment="Top-k most similar items (cosine) of each item among items of the same category and price band.",
    change_data_feed=True,
    columns=(
        Column("category", StringType(), "Partition: category of the item and its neighbours.", nullable=False),
        Column("price_band", IntegerType(), "Partition: price band of the item and its neighbours.", nullable=False),
        Column("item_id", StringType(), "The item the list is for.", nullable=False),
        Column("rank", IntegerType(), "1 = most similar; ties broken by neighbour_id.", nullable=False),
        Column("neighbour_id", StringType(), "A look-alike item.", nullable=False),
        Column("score", FloatType(), "Cosine similarity of the two embeddings, in [-1, 1].", nullable=False),
        Column("neighbour_price", DoubleType(), "Price of the look-alike.", nullable=False),
        Column("model_version", StringType(), "Model bundle the embeddings came from.", nullable=False),
        Column("run_id", StringType(), "Run that computed the list.", nullable=False),
        Column("catalog_version", LongType(), "Version of the catalog table the list was computed from.", nullable=False),
    ),
    partition_by=("category", "price_band"),
    constraints={"rank_is_positive": "rank >= 1", "not_self": "item_id <> neighbour_id"},
)
