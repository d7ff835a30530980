"""``publications``: the publish pointer. Its last row names the run readers see, and the table versions that make it up."""

from pyspark.sql.types import DoubleType, LongType, MapType, StringType, TimestampType

from schemas._table import Column, TableSchema

PUBLICATIONS = TableSchema(
    name="publications",
    comment=(
        "One row per published run, appended last, after every table of the run is written. Readers resolve "
        "the row with the highest run_seq and read each table at the version it names, so they see one whole run."
    ),
    columns=(
        Column("run_seq", LongType(), "Order of runs; the highest is the published one.", nullable=False),
        Column("run_id", StringType(), "Run that was published (for a rollback: the run restored).", nullable=False),
        Column("kind", StringType(), "refresh, or rollback.", nullable=False),
        Column("published_at", TimestampType(), "When the pointer was committed (UTC).", nullable=False),
        Column("model_version", StringType(), "Model bundle the published embeddings come from; null when empty."),
        Column("catalog_version", LongType(), "Version of `catalog` the run was built from.", nullable=False),
        Column("embeddings_version", LongType(), "Version of `embeddings` that belongs to this run.", nullable=False),
        Column("similar_items_version", LongType(), "Version of `similar_items` that belongs to this run.", nullable=False),
        Column("cheaper_alternatives_version", LongType(), "Version of `cheaper_alternatives`; null for runs before it existed."),
        Column("cross_category_items_version", LongType(), "Version of `cross_category_items`; null for runs before it existed."),
        Column("misclassified_items_version", LongType(), "Version of `misclassified_items`; null for runs before it existed."),
        Column("display_lookalikes_version", LongType(), "Version of `display_lookalikes`; null for runs before it existed."),
        Column("input_fingerprint", StringType(), "Hash of the run's input: catalog file, photo listing, model, settings."),
        Column("figures", MapType(StringType(), DoubleType()), "Counts and seconds of the run."),
    ),
    constraints={"kind_is_known": "kind IN ('refresh', 'rollback')"},
)
