"""``catalog``: one row per usable item, upserted by item_id."""

from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType, TimestampType

from schemas._table import Column, TableSchema

CATALOG = TableSchema(
    name="catalog",
    comment="Usable catalog items, upserted by item_id on every ingest (MERGE); a refresh also deletes ids absent from its snapshot.",
    change_data_feed=True,
    columns=(
        Column("item_id", StringType(), "Retailer's item id; unique in this table.", nullable=False),
        Column("image_uri", StringType(), "Hadoop URI of the item's photo as read at ingest.", nullable=False),
        Column("image_hash", StringType(), "SHA-256 (hex) of the photo's bytes; key into `images`.", nullable=False),
        Column("image_size", LongType(), "Photo file length in bytes when last read."),
        Column("image_modified_at", TimestampType(), "Photo file modification time when last read; with image_size it lets a refresh skip unchanged photos."),
        Column("price", DoubleType(), "Item price in the retailer's currency; finite and >= 0.", nullable=False),
        Column("category", StringType(), "Category given by the retailer; null when not given."),
        Column("article_type", StringType(), "Finer product type when given; used to measure list quality."),
        Column("title", StringType(), "Display title."),
        Column("brand", StringType(), "Brand name."),
        Column("in_stock", BooleanType(), "Whether the item can be bought now."),
        Column("updated_at", TimestampType(), "When the retailer last changed the item (UTC)."),
        Column("ingested_at", TimestampType(), "When this row was last written by ingest (UTC).", nullable=False),
        Column("run_id", StringType(), "Run that last wrote this row.", nullable=False),
    ),
    constraints={"price_is_valid": "price >= 0", "price_is_finite": "NOT isnan(price) AND price < double('Infinity')"},
)

# The columns a catalog file must or may carry, before ingest adds image_hash, ingested_at, run_id.
REQUIRED_INPUT_COLUMNS = ("item_id", "image_uri", "price")
OPTIONAL_INPUT_COLUMNS = ("category", "article_type", "title", "brand", "in_stock", "updated_at")
