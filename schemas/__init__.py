"""One declaration per table; used to create, write, validate and document each table."""

from schemas._table import Column, TableSchema
from schemas.alternatives import CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS, DISPLAY_LOOKALIKES, MISCLASSIFIED_ITEMS
from schemas.catalog import CATALOG
from schemas.clusters import CLUSTER_SILHOUETTES, ITEM_CLUSTERS
from schemas.embeddings import EMBEDDINGS
from schemas.images import IMAGES
from schemas.index_recall import INDEX_RECALL
from schemas.interactions import INTERACTIONS
from schemas.list_quality import LIST_QUALITY
from schemas.publications import PUBLICATIONS
from schemas.quarantine import QUARANTINE
from schemas.recommendations import USER_RECOMMENDATIONS
from schemas.refresh_runs import REFRESH_RUNS
from schemas.runs import RUNS
from schemas.similar_items import SIMILAR_ITEMS

ALL_TABLES: tuple[TableSchema, ...] = (
    CATALOG, IMAGES, QUARANTINE, EMBEDDINGS, SIMILAR_ITEMS, CHEAPER_ALTERNATIVES, CROSS_CATEGORY_ITEMS,
    MISCLASSIFIED_ITEMS, DISPLAY_LOOKALIKES, PUBLICATIONS, REFRESH_RUNS, RUNS, LIST_QUALITY, INDEX_RECALL, ITEM_CLUSTERS, CLUSTER_SILHOUETTES,
    INTERACTIONS, USER_RECOMMENDATIONS,
)

__all__ = [
    "ALL_TABLES", "CATALOG", "CHEAPER_ALTERNATIVES", "CLUSTER_SILHOUETTES", "CROSS_CATEGORY_ITEMS", "Column",
    "DISPLAY_LOOKALIKES", "EMBEDDINGS", "IMAGES", "INDEX_RECALL", "INTERACTIONS", "ITEM_CLUSTERS", "LIST_QUALITY", "MISCLASSIFIED_ITEMS", "PUBLICATIONS",
    "QUARANTINE", "REFRESH_RUNS", "RUNS", "SIMILAR_ITEMS", "TableSchema",
    "USER_RECOMMENDATIONS",
]
