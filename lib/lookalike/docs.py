"""Render docs/TABLES.md from the table schemas, so the docs cannot drift from the code."""

from __future__ import annotations

from schemas import ALL_TABLES


def tables_markdown() -> str:
    """Markdown describing every table: comment, partitioning, constraints and columns."""
    lines = [
        "# Tables",
        "",
        "Generated from `schemas/` by `.venv/bin/python -m lookalike.docs > docs/TABLES.md`; a test keeps it in sync.",
        "All tables are Delta tables under `<storage.root>/tables/<name>`, registered as `<storage.database>.<name>`.",
        "",
    ]
    for table in ALL_TABLES:
        lines += [f"## `{table.name}`", "", table.comment, ""]
        if table.partition_by:
            lines += [f"Partitioned by {', '.join(f'`{c}`' for c in table.partition_by)}.", ""]
        if table.change_data_feed:
            lines += ["Change data feed on (`delta.enableChangeDataFeed`): consumers can read only the rows changed since a version.", ""]
        if table.constraints:
            lines += ["CHECK constraints: " + "; ".join(f"`{n}`: `{e}`" for n, e in table.constraints.items()) + ".", ""]
        for name, why in table.retired_columns.items():
            lines += [f"Retired column `{name}`: no longer written, because {why}; a table created by an earlier "
                      "release keeps it, null in every row (history keeps the old values).", ""]
        lines += ["| column | type | null | meaning |", "|---|---|---|---|"]
        for column in table.columns:
            nullable = "yes" if column.nullable else "no"
            lines.append(f"| `{column.name}` | `{column.data_type.simpleString()}` | {nullable} | {column.comment} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables_markdown(), end="")
