"""``refresh_runs``: every refresh or rollback started, with the sequence number that orders its writes."""

from pyspark.sql.types import LongType, StringType, TimestampType

from schemas._table import Column, TableSchema

REFRESH_RUNS = TableSchema(
    name="refresh_runs",
    comment=(
        "Runs registered when they start. run_seq is the Delta idempotent-write version (txnVersion) of all "
        "the run's writes, so a rerun of the same run skips what is already committed."
    ),
    columns=(
        Column("run_id", StringType(), "Run id; unique.", nullable=False),
        Column("run_seq", LongType(), "1, 2, ... in order of first start.", nullable=False),
        Column("kind", StringType(), "refresh, or rollback.", nullable=False),
        Column("input_fingerprint", StringType(), "Hash of the run's input; a rerun must match it.", nullable=False),
        Column("input_description", StringType(), "The catalog path, model version and settings hashed."),
        Column("started_at", TimestampType(), "First start (UTC).", nullable=False),
    ),
)
