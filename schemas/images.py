"""``images``: photo bytes, content-addressed, so each distinct photo is stored and scored once."""

from pyspark.sql.types import BinaryType, LongType, StringType

from schemas._table import Column, TableSchema

IMAGES = TableSchema(
    name="images",
    comment="Distinct photo bytes keyed by their SHA-256; catalog.image_hash points here.",
    columns=(
        Column("image_hash", StringType(), "SHA-256 (hex) of content.", nullable=False),
        Column("content", BinaryType(), "The photo file's bytes, as read.", nullable=False),
        Column("size_bytes", LongType(), "Length of content in bytes.", nullable=False),
        Column("run_id", StringType(), "Run that first stored these bytes.", nullable=False),
    ),
    constraints={"size_is_positive": "size_bytes > 0"},
)
