"""Delta CHECK constraints guard the published tables even against writers that skip our validation."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pyspark.errors import PySparkException
from py4j.protocol import Py4JJavaError

from lookalike.tables import conform, ensure_table, table_path, table_version
from schemas import CATALOG, SIMILAR_ITEMS

NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


def catalog_row(price: float) -> dict:
    """A catalog row that is valid but for its price."""
    return {"item_id": "i1", "image_uri": "file:/photos/i1.jpg", "image_hash": "ab" * 32, "price": price,
            "ingested_at": NOW, "run_id": "run-1"}


def list_row(item_id: str, neighbour_id: str, rank: int) -> dict:
    """A similar_items row."""
    return {"category": "Shoes", "price_band": 1, "item_id": item_id, "rank": rank, "neighbour_id": neighbour_id,
            "score": 0.5, "neighbour_price": 10.0, "model_version": "m1", "run_id": "run-1", "catalog_version": 1}


def append(spark, config, table, row: dict) -> None:
    """Append one row, bypassing every check of ours."""
    frame = spark.createDataFrame([tuple(row.get(c) for c in table.column_names)], table.spark_schema)
    conform(frame, table).write.format("delta").mode("append").save(table_path(config, table))


@pytest.mark.parametrize(
    "table, row",
    [
        (CATALOG, catalog_row(-1.0)),
        (CATALOG, catalog_row(float("nan"))),
        (CATALOG, catalog_row(float("inf"))),
        (SIMILAR_ITEMS, list_row("i1", "i1", 1)),
        (SIMILAR_ITEMS, list_row("i1", "i2", 0)),
    ],
    ids=["negative-price", "nan-price", "infinite-price", "own-neighbour", "rank-0"],
)
def test_bad_row_is_refused_by_the_table(spark, make_config, table, row):
    """A row breaking a constraint fails the write and adds no version; a good row goes in."""
    config = make_config()
    ensure_table(spark, config, table)
    before = table_version(spark, config, table)
    with pytest.raises((PySparkException, Py4JJavaError), match="(?i)check constraint|violat"):
        append(spark, config, table, row)
    assert table_version(spark, config, table) == before
    good = catalog_row(12.5) if table is CATALOG else list_row("i1", "i2", 1)
    append(spark, config, table, good)
    assert table_version(spark, config, table) == before + 1
