"""``interactions``: what users did with items, the input of the per-user recommendations."""

from pyspark.sql.types import DoubleType, StringType, TimestampType

from schemas._table import Column, TableSchema

INTERACTIONS = TableSchema(
    name="interactions",
    comment=(
        "One row per user event on an item (view, click, cart, purchase, or rating with a 1-5 rating). "
        "Replaced whole by each interactions ingest; rows that cannot be used go to quarantine (stage interactions)."
    ),
    columns=(
        Column("user_id", StringType(), "User id as given.", nullable=False),
        Column("item_id", StringType(), "Catalog item id.", nullable=False),
        Column("event", StringType(), "view, click, cart, purchase or rating.", nullable=False),
        Column("rating", DoubleType(), "1 to 5 for a rating event; null otherwise."),
        Column("event_time", TimestampType(), "When it happened (UTC).", nullable=False),
    ),
    constraints={
        "event_is_known": "event IN ('view', 'click', 'cart', 'purchase', 'rating')",
        "rating_only_for_ratings": "(event = 'rating' AND rating BETWEEN 1 AND 5) OR (event <> 'rating' AND rating IS NULL)",
    },
)
