"""lookalike: product photos -> CNN embeddings -> top-k look-alike items, on Spark and Delta Lake."""

__version__ = "0.1.0"
