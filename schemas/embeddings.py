"""``embeddings``: one row per scored item: predicted category and an L2-normalised embedding."""

from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, LongType, StringType

from schemas._table import Column, TableSchema

EMBEDDINGS = TableSchema(
    name="embeddings",
    comment="Per-item model output, with the price and price band the index partitions by.",
    change_data_feed=True,
    columns=(
        Column("item_id", StringType(), "Catalog item id.", nullable=False),
        Column("category", StringType(), "Category the item is indexed under: given, else predicted.", nullable=False),
        Column("given_category", StringType(), "Category from the catalog; null when not given."),
        Column("predicted_category", StringType(), "Classifier's most probable category.", nullable=False),
        Column("confidence", FloatType(), "Classifier's probability for predicted_category.", nullable=False),
        Column("embedding", ArrayType(FloatType()), "L2-normalised image embedding.", nullable=False),
        Column("price", DoubleType(), "Item price.", nullable=False),
        Column("price_band", IntegerType(), "Price band index within the category (0 = cheapest).", nullable=False),
        Column("image_hash", StringType(), "SHA-256 of the photo that was scored.", nullable=False),
        Column("model_version", StringType(), "Model bundle that produced this row.", nullable=False),
        Column("run_id", StringType(), "Run that wrote this row.", nullable=False),
        Column("catalog_version", LongType(), "Version of the catalog table this row was computed from.", nullable=False),
    ),
    constraints={
        "confidence_is_probability": "confidence >= 0 AND confidence <= 1",
        "price_is_valid": "price >= 0",
        "price_is_finite": "NOT isnan(price) AND price < double('Infinity')",
    },
)
