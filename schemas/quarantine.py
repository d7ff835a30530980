"""``quarantine``: every input row or photo that could not be used, with why."""

from pyspark.sql.types import StringType, TimestampType

from schemas._table import Column, TableSchema

QUARANTINE = TableSchema(
    name="quarantine",
    comment="Rows that could not be used, one per row and reason; appended by every run.",
    columns=(
        Column("run_id", StringType(), "Run that quarantined the row.", nullable=False),
        Column("stage", StringType(), "Job stage that refused it: ingest, embed or interactions.", nullable=False),
        Column("item_id", StringType(), "Item id as given; null when missing."),
        Column("reason", StringType(), "Reason code, e.g. bad_price, missing_image, duplicate_item_id.", nullable=False),
        Column("detail", StringType(), "Human-readable detail: the bad value or the error message."),
        Column("source_record", StringType(), "The input row as JSON, for replay after a fix."),
        Column("quarantined_at", TimestampType(), "When it was quarantined (UTC).", nullable=False),
    ),
)

# Reason codes, in the order they are checked; a row gets the first that applies.
REASONS = (
    "missing_item_id",
    "missing_image_uri",
    "bad_price",
    "bad_encoding",  # a text column is not valid UTF-8
    "outside_image_root",  # resolves outside catalog.image_roots, has a ".." segment, or is a symlink leading out
    "duplicate_item_id",
    "missing_image",  # no file at the URI, or a zero-byte file (Spark's file sources skip those)
    "unreadable_image",  # listed, but reading it failed: no permission, removed during the run, I/O error
    "undecodable_image",
)
