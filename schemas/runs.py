"""``runs``: one row per job run, with its figures."""

from pyspark.sql.types import DoubleType, MapType, StringType, TimestampType

from schemas._table import Column, TableSchema

RUNS = TableSchema(
    name="runs",
    comment="Job runs and their figures (counts, seconds, metrics).",
    columns=(
        Column("run_id", StringType(), "Run id.", nullable=False),
        Column("job", StringType(), "Job name: ingest, train, embed, index or demo.", nullable=False),
        Column("started_at", TimestampType(), "Start (UTC).", nullable=False),
        Column("finished_at", TimestampType(), "End (UTC).", nullable=False),
        Column("model_version", StringType(), "Model bundle used or produced, if any."),
        Column("figures", MapType(StringType(), DoubleType()), "Named figures, e.g. items_ingested, seconds."),
    ),
)
