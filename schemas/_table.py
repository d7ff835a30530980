"""The declaration every table schema in this folder is written in."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql.types import DataType, StructField, StructType


@dataclass(frozen=True)
class Column:
    """One column: its Spark type, whether it may be null, and the comment shown by DESCRIBE."""

    name: str
    data_type: DataType
    comment: str
    nullable: bool = True


@dataclass(frozen=True)
class TableSchema:
    """A Delta table: columns, partitioning, CHECK constraints, table comment, and whether it keeps a change feed.

    The same object is used to create the table, to validate what is written to it, to cast
    what is read from files, and to write docs/TABLES.md.
    """

    name: str
    comment: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    constraints: dict[str, str] = field(default_factory=dict)
    change_data_feed: bool = False
    # Columns earlier releases wrote and this one does not, with why: set to null in existing tables.
    retired_columns: dict[str, str] = field(default_factory=dict)

    @property
    def spark_schema(self) -> StructType:
        """The Spark schema, with each column's comment in its metadata."""
        return StructType(
            [StructField(c.name, c.data_type, c.nullable, {"comment": c.comment}) for c in self.columns]
        )

    @property
    def column_names(self) -> list[str]:
        """Column names in declaration order."""
        return [c.name for c in self.columns]
