"""Ingest: catalog files (CSV, Parquet, JSON Lines) plus photos -> catalog, images and quarantine tables."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.ingest import ingest_catalog
from lookalike.tables import read_table, table_path
from schemas import CATALOG, IMAGES, QUARANTINE

COLUMNS = ["item_id", "image_uri", "price", "category", "article_type", "title", "brand", "in_stock", "updated_at"]
CATALOG_COLUMNS = "item_id string, image_uri string, price double, category string, image_hash string"
QUARANTINE_COLUMNS = "item_id string, reason string"


@pytest.fixture
def photo_root(tmp_path, photo_dir) -> Path:
    """tmp/photos/images/ with six real photos (p0..p5, in name order) and a zero-byte empty.jpg."""
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    names = sorted(p.name for p in (photo_dir / "images").glob("*.jpg"))[:6]
    for name in names:
        shutil.copy(photo_dir / "images" / name, root / "images" / name)
    (root / "images" / "empty.jpg").write_bytes(b"")
    return root


def photo_names(root: Path) -> list[str]:
    """The six photo file names, in name order."""
    return sorted(p.name for p in (root / "images").glob("*.jpg") if p.name != "empty.jpg")


def sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, computed independently of the code under test."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uri(path: Path) -> str:
    """The ``file:/abs/path`` form Spark's binaryFile source reports."""
    return "file:" + str(path.resolve())


def case_rows(root: Path) -> list[dict]:
    """The logical input rows, each with ``expect``: None when it should be ingested, else its reason.

    Prices are given as text (as in a CSV); the format writers turn them into what each format holds.
    """
    p = photo_names(root)
    images = root / "images"
    return [
        # Good rows: relative, absolute and file:/// image paths; a zero price; a padded price.
        dict(item_id="A1", image_uri=f"images/{p[0]}", price="100.50", category="Topwear", updated_at="2026-01-02T00:00:00Z", expect=None),
        dict(item_id="A2", image_uri=f"images/{p[1]}", price="0", category="Shoes", updated_at="2026-01-01T00:00:00Z", expect=None),
        dict(item_id="A3", image_uri=str(images / p[2]), price=" 2500 ", category="", updated_at="", expect=None),
        dict(item_id="A4", image_uri="file://" + str(images / p[3]), price="75", category="Bags", updated_at="2026-01-01T00:00:00Z", expect=None),
        # Same id, same updated_at: the smaller image_uri (p4) wins, whatever the file order.
        dict(item_id="A5", image_uri=f"images/{p[5]}", price="20", category="Bags", updated_at="2026-01-01T00:00:00Z", expect="duplicate_item_id"),
        dict(item_id="A5", image_uri=f"images/{p[4]}", price="10", category="Bags", updated_at="2026-01-01T00:00:00Z", expect=None),
        # An older row of A1 loses to the newer one.
        dict(item_id="A1", image_uri=f"images/{p[2]}", price="999", category="Topwear", updated_at="2025-06-01T00:00:00Z", expect="duplicate_item_id"),
        # A newer row of A2 with a bad price is quarantined for its price and does not displace the good row.
        dict(item_id="A2", image_uri=f"images/{p[1]}", price="-1", category="Shoes", updated_at="2027-01-01T00:00:00Z", expect="bad_price"),
        dict(item_id="B_neg", image_uri=f"images/{p[0]}", price="-5", category="Shoes", updated_at="", expect="bad_price"),
        dict(item_id="B_nan", image_uri=f"images/{p[0]}", price="NaN", category="Shoes", updated_at="", expect="bad_price"),
        dict(item_id="B_inf", image_uri=f"images/{p[0]}", price="Infinity", category="Shoes", updated_at="", expect="bad_price"),
        dict(item_id="B_text", image_uri=f"images/{p[0]}", price="cheap", category="Shoes", updated_at="", expect="bad_price"),
        dict(item_id="B_empty", image_uri=f"images/{p[0]}", price="", category="Shoes", updated_at="", expect="bad_price"),
        # Missing id is checked before the (also bad) price.
        dict(item_id="", image_uri=f"images/{p[0]}", price="cheap", category="Shoes", updated_at="", expect="missing_item_id"),
        dict(item_id="B_noimg", image_uri="", price="5", category="Shoes", updated_at="", expect="missing_image_uri"),
        dict(item_id="B_blankimg", image_uri="   ", price="5", category="Shoes", updated_at="", expect="missing_image_uri"),
        dict(item_id="B_missing", image_uri="images/does-not-exist.jpg", price="5", category="Shoes", updated_at="", expect="missing_image"),
        dict(item_id="B_nofolder", image_uri="no-such-folder/x.jpg", price="5", category="Shoes", updated_at="", expect="missing_image"),
        dict(item_id="B_zero", image_uri="images/empty.jpg", price="5", category="Shoes", updated_at="", expect="empty_image"),
    ]


def write_csv(rows: list[dict], path: Path) -> Path:
    """Rows as a CSV with a header; every value is text, empty where missing."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "title": f"title {row['item_id']}", "brand": "Brand", "in_stock": "true"})
    return path


def _price_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def write_parquet(rows: list[dict], path: Path) -> Path:
    """Rows as Parquet with typed columns: price double (NaN/inf kept, unparseable -> null), updated_at timestamp."""

    def stamp(text: str):
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    table = pa.table(
        {
            "item_id": pa.array([r["item_id"] or None for r in rows], pa.string()),
            "image_uri": pa.array([r["image_uri"] for r in rows], pa.string()),
            "price": pa.array([_price_number(r["price"]) for r in rows], pa.float64()),
            "category": pa.array([r["category"] or None for r in rows], pa.string()),
            "in_stock": pa.array([True for _ in rows], pa.bool_()),
            "updated_at": pa.array([stamp(r["updated_at"]) for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, path)
    return path


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Rows as JSON Lines: numeric prices as JSON numbers, the rest as strings; a missing id is left out."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            record = {k: row[k] for k in COLUMNS if k in row}
            number = _price_number(row["price"])
            if number is not None and number == number and abs(number) != float("inf"):
                record["price"] = number
            if not row["item_id"]:
                del record["item_id"]
            record["in_stock"] = False
            handle.write(json.dumps(record) + "\n")
    return path


WRITERS = {"csv": (write_csv, "catalog.csv"), "parquet": (write_parquet, "catalog.parquet"), "jsonl": (write_jsonl, "catalog.jsonl")}


def expected_catalog(spark, root: Path, rows: list[dict]):
    """The catalog rows the good inputs should give, image hashes computed with hashlib."""
    images = root / "images"
    out = []
    for row in rows:
        if row["expect"] is None:
            name = row["image_uri"].rsplit("/", 1)[-1]
            out.append((row["item_id"], uri(images / name), float(row["price"]), row["category"] or None, sha256(images / name)))
    return spark.createDataFrame(out, CATALOG_COLUMNS)


def expected_quarantine(spark, rows: list[dict]):
    """(item_id, reason) of every row that should be refused."""
    return spark.createDataFrame(
        [(row["item_id"] or None, row["expect"]) for row in rows if row["expect"] is not None], QUARANTINE_COLUMNS
    )


def catalog_of(spark, config):
    """The stable columns of the catalog table."""
    return read_table(spark, config, CATALOG).select("item_id", "image_uri", "price", "category", "image_hash")


def quarantine_of(spark, config, run_id: str):
    """(item_id, reason) quarantined by one run."""
    return read_table(spark, config, QUARANTINE).where(F.col("run_id") == run_id).select("item_id", "reason")


def history_length(spark, config, table) -> int:
    """Number of versions in a Delta table's history."""
    return DeltaTable.forPath(spark, table_path(config, table)).history().count()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_ingest_whole_tables(spark, make_config, photo_root, tmp_path, fmt):
    """Every good row reaches catalog and every bad row reaches quarantine with its first reason."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = case_rows(photo_root)
    writer, name = WRITERS[fmt]
    path = writer(rows, tmp_path / name)

    counts = ingest_catalog(spark, config, str(path), run_id="run-1")

    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, photo_root, rows))
    assertDataFrameEqual(quarantine_of(spark, config, "run-1"), expected_quarantine(spark, rows))
    expected_reasons = Counter(r["expect"] for r in rows if r["expect"] is not None)
    assert counts.input_rows == len(rows)
    assert counts.ingested == sum(r["expect"] is None for r in rows)
    assert counts.quarantined == dict(expected_reasons)
    assert counts.input_rows == counts.ingested + counts.quarantined_total
    assert counts.new_images == 5


def test_ingest_images_table_and_row_metadata(spark, make_config, photo_root, tmp_path):
    """images holds each distinct photo once with its exact bytes; catalog rows carry run_id and parsed fields."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = case_rows(photo_root)
    ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "catalog.csv")), run_id="run-meta")

    used = sorted({photo_names(photo_root)[i] for i in range(5)})
    expected_images = spark.createDataFrame(
        [(sha256(photo_root / "images" / n), (photo_root / "images" / n).read_bytes(), (photo_root / "images" / n).stat().st_size, "run-meta") for n in used],
        "image_hash string, content binary, size_bytes long, run_id string",
    )
    assertDataFrameEqual(read_table(spark, config, IMAGES), expected_images)

    catalog = read_table(spark, config, CATALOG)
    a1 = catalog.where("item_id = 'A1'").first()
    assert a1["title"] == "title A1" and a1["brand"] == "Brand" and a1["in_stock"] is True
    assert a1["updated_at"].replace(tzinfo=timezone.utc) == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert {r["run_id"] for r in catalog.collect()} == {"run-meta"}

    refused = read_table(spark, config, QUARANTINE).where("item_id = 'B_text'").first()
    assert refused["stage"] == "ingest"
    assert refused["detail"] == "price=cheap"
    assert json.loads(refused["source_record"])["price"] == "cheap"


def test_reingest_is_idempotent_and_merge_updates_changes(spark, make_config, photo_root, tmp_path):
    """Re-ingesting the same file writes no catalog version; a changed price and a new item are merged in."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = case_rows(photo_root)
    path = write_csv(rows, tmp_path / "catalog.csv")
    first = ingest_catalog(spark, config, str(path), run_id="run-1")
    versions = history_length(spark, config, CATALOG)
    expected = expected_catalog(spark, photo_root, rows)

    again = ingest_catalog(spark, config, str(path), run_id="run-2")
    assert history_length(spark, config, CATALOG) == versions
    assertDataFrameEqual(catalog_of(spark, config), expected)
    # Unchanged rows are not rewritten: they still carry the first run's id.
    assert {r["run_id"] for r in read_table(spark, config, CATALOG).select("run_id").collect()} == {"run-1"}
    assert (again.input_rows, again.ingested, again.quarantined) == (first.input_rows, first.ingested, first.quarantined)
    assert again.new_images == 0
    # Quarantine is appended per run.
    assertDataFrameEqual(quarantine_of(spark, config, "run-2"), expected_quarantine(spark, rows))

    changed = [dict(r, price="150") if r["item_id"] == "A1" and r["expect"] is None else r for r in rows]
    changed.append(dict(item_id="A6", image_uri=f"images/{photo_names(photo_root)[5]}", price="60", category="Bags", updated_at="", expect=None))
    ingest_catalog(spark, config, str(write_csv(changed, tmp_path / "catalog2.csv")), run_id="run-3")
    assert history_length(spark, config, CATALOG) == versions + 1
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, photo_root, changed))
    run_ids = {r["item_id"]: r["run_id"] for r in read_table(spark, config, CATALOG).collect()}
    assert run_ids == {"A1": "run-3", "A2": "run-1", "A3": "run-1", "A4": "run-1", "A5": "run-1", "A6": "run-3"}


def test_missing_price_column_raises(spark, make_config, photo_root, tmp_path):
    """A catalog without the price column is refused up front with ValueError naming the column."""
    config = make_config(f"catalog.image_root={photo_root}")
    path = tmp_path / "no_price.csv"
    path.write_text(f"item_id,image_uri,category\nA1,images/{photo_names(photo_root)[0]},Shoes\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['price'\]"):
        ingest_catalog(spark, config, str(path), run_id="run-x")


def test_unknown_extension_raises(spark, make_config, photo_root, tmp_path):
    """A file whose format cannot be told from its name raises ValueError unless file_format is given."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = [r for r in case_rows(photo_root) if r["item_id"] in ("A1", "B_neg")]
    path = write_csv(rows, tmp_path / "catalog.txt")
    with pytest.raises(ValueError, match="format"):
        ingest_catalog(spark, config, str(path), run_id="run-x")
    counts = ingest_catalog(spark, config, str(path), run_id="run-y", file_format="csv")
    assert (counts.input_rows, counts.ingested, counts.quarantined) == (3, 1, {"bad_price": 1, "duplicate_item_id": 1})


def test_absolute_and_file_uri_paths_resolve_without_image_root(spark, make_config, photo_root, tmp_path):
    """Absolute paths and file:/// URIs find their photos whatever image_root is."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = make_config(f"catalog.image_root={elsewhere}")
    p = photo_names(photo_root)
    images = photo_root / "images"
    rows = [
        dict(item_id="abs", image_uri=str(images / p[0]), price="1", category="x", updated_at="", expect=None),
        dict(item_id="uri", image_uri="file://" + str(images / p[1]), price="2", category="x", updated_at="", expect=None),
        dict(item_id="short", image_uri="file:" + str(images / p[2]), price="3", category="x", updated_at="", expect=None),
        dict(item_id="rel", image_uri=f"images/{p[3]}", price="4", category="x", updated_at="", expect="missing_image"),
    ]
    ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "catalog.csv")), run_id="run-abs")
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, photo_root, rows))
    assertDataFrameEqual(quarantine_of(spark, config, "run-abs"), expected_quarantine(spark, rows))


def test_image_root_given_as_file_uri(spark, make_config, photo_root, tmp_path):
    """Relative paths resolve against an image_root written as a file:/// URI, like one written as a path."""
    config = make_config(f"catalog.image_root=file://{photo_root}")
    p = photo_names(photo_root)
    rows = [dict(item_id="rel", image_uri=f"images/{p[0]}", price="4", category="x", updated_at="", expect=None)]
    counts = ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "catalog.csv")), run_id="run-root")
    assert counts.quarantined == {}
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, photo_root, rows))


def test_photos_in_nested_folders(spark, make_config, photo_root, tmp_path):
    """Photos in a folder and in its subfolder are each matched once (no duplicated catalog rows)."""
    p = photo_names(photo_root)
    nested = photo_root / "images" / "sub"
    nested.mkdir()
    shutil.copy(photo_root / "images" / p[1], nested / p[1])
    config = make_config(f"catalog.image_root={photo_root}")
    rows = [
        dict(item_id="top", image_uri=f"images/{p[0]}", price="1", category="x", updated_at="", expect=None),
        dict(item_id="deep", image_uri=f"images/sub/{p[1]}", price="2", category="x", updated_at="", expect=None),
    ]
    counts = ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "catalog.csv")), run_id="run-nested")
    expected = spark.createDataFrame(
        [("top", uri(photo_root / "images" / p[0]), 1.0, "x", sha256(photo_root / "images" / p[0])),
         ("deep", uri(nested / p[1]), 2.0, "x", sha256(nested / p[1]))],
        CATALOG_COLUMNS,
    )
    assertDataFrameEqual(catalog_of(spark, config), expected)
    assert (counts.input_rows, counts.ingested, counts.quarantined_total) == (2, 2, 0)
