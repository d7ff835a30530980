"""One declaration per table; used to create, write, validate and document each table."""

from schemas._table import Column, TableSchema
from schemas.catalog import CATALOG
from schemas.embeddings import EMBEDDINGS
from schemas.images import IMAGES
from schemas.quarantine import QUARANTINE
from schemas.runs import RUNS
from schemas.similar_items import SIMILAR_ITEMS

ALL_TABLES: tuple[TableSchema, ...] = (CATALOG, IMAGES, QUARANTINE, EMBEDDINGS, SIMILAR_ITEMS, RUNS)

__all__ = ["ALL_TABLES", "CATALOG", "Column", "EMBEDDINGS", "IMAGES", "QUARANTINE", "RUNS", "SIMILAR_ITEMS", "TableSchema"]
