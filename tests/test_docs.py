"""The table docs are generated from the schemas and must match them."""

from pathlib import Path

from lookalike.docs import tables_markdown

REPO = Path(__file__).resolve().parents[1]


def test_tables_doc_matches_schemas():
    """docs/TABLES.md is what lookalike.docs renders now; regenerate it when a schema changes."""
    assert (REPO / "docs" / "TABLES.md").read_text(encoding="utf-8") == tables_markdown()
