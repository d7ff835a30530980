"""Lists derived from the embeddings for shoppers and merchandisers: cheaper look-alikes,
look-alikes in other categories, and items whose photo disagrees with their given category."""

from pyspark.sql.types import DoubleType, FloatType, IntegerType, LongType, StringType

from schemas._table import Column, TableSchema

_LINEAGE = (
    Column("model_version", StringType(), "Model bundle the embeddings came from.", nullable=False),
    Column("run_id", StringType(), "Run that last changed the row.", nullable=False),
    Column("catalog_version", LongType(), "Version of the catalog table the row was computed from.", nullable=False),
)

CHEAPER_ALTERNATIVES = TableSchema(
    name="cheaper_alternatives",
    comment=(
        "For every item, the most similar items of the same category that cost less (any lower price, "
        "across price bands), in stock unless alternatives.cheaper_in_stock_only is false."
    ),
    change_data_feed=True,
    columns=(
        Column("category", StringType(), "Partition: category of the item and its alternatives.", nullable=False),
        Column("item_id", StringType(), "The item the list is for.", nullable=False),
        Column("item_price", DoubleType(), "Price of the item.", nullable=False),
        Column("rank", IntegerType(), "1 = most similar; ties broken by alternative_id.", nullable=False),
        Column("alternative_id", StringType(), "A cheaper look-alike.", nullable=False),
        Column("alternative_price", DoubleType(), "Its price; always below item_price.", nullable=False),
        Column("alternative_price_band", IntegerType(), "Its price band (0 = cheapest).", nullable=False),
        Column("score", FloatType(), "Cosine similarity of the two embeddings, in [-1, 1].", nullable=False),
        *_LINEAGE,
    ),
    partition_by=("category",),
    constraints={
        "alternative_costs_less": "alternative_price < item_price",
        "rank_is_positive": "rank >= 1",
        "not_self": "item_id <> alternative_id",
    },
)

CROSS_CATEGORY_ITEMS = TableSchema(
    name="cross_category_items",
    comment=(
        "For every item, the most similar items of other categories (e.g. a braided belt -> braided shoes), any price. "
        "A list depends on embeddings and categories only, so a price or stock change rewrites none: "
        "the published_cross_category_items view adds neighbour_price from the same run's embeddings."
    ),
    change_data_feed=True,
    columns=(
        Column("category", StringType(), "Partition: category of the item.", nullable=False),
        Column("item_id", StringType(), "The item the list is for.", nullable=False),
        Column("rank", IntegerType(), "1 = most similar; ties broken by neighbour_id.", nullable=False),
        Column("neighbour_id", StringType(), "A look-alike of another category.", nullable=False),
        Column("neighbour_category", StringType(), "Its category; never the item's.", nullable=False),
        Column("score", FloatType(), "Cosine similarity of the two embeddings, in [-1, 1].", nullable=False),
        *_LINEAGE,
    ),
    retired_columns={
        "neighbour_price": "the price is joined in at read time (published_cross_category_items), so that a "
                           "price change stops rewriting every list that shows the item",
    },
    partition_by=("category",),
    constraints={"other_category": "neighbour_category <> category", "rank_is_positive": "rank >= 1"},
)

MISCLASSIFIED_ITEMS = TableSchema(
    name="misclassified_items",
    comment=(
        "Items whose given category is one the classifier knows but whose photo it puts in another category: "
        "catalog quality issues to review, most confident first."
    ),
    change_data_feed=True,
    columns=(
        Column("item_id", StringType(), "Catalog item id.", nullable=False),
        Column("given_category", StringType(), "Category from the catalog.", nullable=False),
        Column("predicted_category", StringType(), "Classifier's most probable category.", nullable=False),
        Column("confidence", FloatType(), "Classifier's probability for predicted_category.", nullable=False),
        Column("price", DoubleType(), "Item price.", nullable=False),
        Column("image_hash", StringType(), "SHA-256 of the photo that was scored.", nullable=False),
        *_LINEAGE,
    ),
    constraints={"categories_differ": "given_category <> predicted_category"},
)

DISPLAY_LOOKALIKES = TableSchema(
    name="display_lookalikes",
    comment=(
        "What a product page shows: each item's most similar items of its category after the shop's rules "
        "(no out-of-stock item, no near-duplicate photo, at most display.max_per_brand per brand), taken from "
        "its own price band (or price window) first and filled to display.k from the neighbouring bands, then "
        "the rest of the category; fill_source says where each row came from."
    ),
    change_data_feed=True,
    columns=(
        Column("category", StringType(), "Partition: category of the item and its look-alikes.", nullable=False),
        Column("price_band", IntegerType(), "Price band of the item.", nullable=False),
        Column("item_id", StringType(), "The item the list is for.", nullable=False),
        Column("rank", IntegerType(), "1 = shown first: rows of a nearer fill_source first, then by score.", nullable=False),
        Column("neighbour_id", StringType(), "A look-alike to show.", nullable=False),
        Column("neighbour_price", DoubleType(), "Its price.", nullable=False),
        Column("neighbour_price_band", IntegerType(), "Its price band.", nullable=False),
        Column("neighbour_brand", StringType(), "Its brand; null when the catalog gives none (no brand cap applies)."),
        Column(
            "fill_source", StringType(),
            "same_band (display.price_window = band) or price_window (relative): the item's own partition; "
            "neighbouring_band or wider_price_window: filled because that gave fewer than display.k; "
            "category: filled from the rest of the category.",
            nullable=False,
        ),
        Column("score", FloatType(), "Cosine similarity of the two embeddings, in [-1, 1].", nullable=False),
        *_LINEAGE,
    ),
    partition_by=("category",),
    constraints={
        "rank_is_positive": "rank >= 1",
        "not_self": "item_id <> neighbour_id",
        "known_fill_source": (
            "fill_source IN ('same_band', 'neighbouring_band', 'price_window', 'wider_price_window', 'category')"
        ),
    },
)
