"""Ingest: catalog files (CSV, Parquet, JSON Lines) plus photos -> catalog, images and quarantine tables."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.ingest import ingest_catalog, read_catalog_input, read_image_files
from lookalike.tables import read_table, table_path
from schemas import CATALOG, IMAGES, QUARANTINE

COLUMNS = ["item_id", "image_uri", "price", "category", "article_type", "title", "brand", "in_stock", "updated_at"]
CATALOG_COLUMNS = "item_id string, image_uri string, price double, category string, image_hash string"
QUARANTINE_COLUMNS = "item_id string, reason string"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photo_root(tmp_path, photo_dir) -> Path:
    """tmp/photos/images/ with real photos p0..p6 (in name order), p7 in images/sub/, and a zero-byte empty.jpg."""
    root = tmp_path / "photos"
    (root / "images" / "sub").mkdir(parents=True)
    names = sorted(p.name for p in (photo_dir / "images").glob("*.jpg"))[:8]
    for name in names[:7]:
        shutil.copy(photo_dir / "images" / name, root / "images" / name)
    shutil.copy(photo_dir / "images" / names[7], root / "images" / "sub" / names[7])
    (root / "images" / "empty.jpg").write_bytes(b"")
    return root


def photo_names(root: Path) -> list[str]:
    """The eight photo file names p0..p7, in name order (p7 lives in images/sub/)."""
    return sorted(p.name for p in (root / "images").rglob("*.jpg") if p.name != "empty.jpg")


def sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, computed independently of the code under test."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uri(path: Path) -> str:
    """The ``file:/abs/path`` form Spark's binaryFile source reports."""
    return "file:" + str(path.resolve())


def good(item_id: str, image_uri: str, price: str, photo: Path, **fields) -> dict:
    """An input row that should be ingested, with the photo file it should resolve to."""
    return dict(item_id=item_id, image_uri=image_uri, price=price, photo=photo, expect=None, **{"category": "", "updated_at": "", **fields})


def bad(item_id: str, image_uri: str, price: str, reason: str, **fields) -> dict:
    """An input row that should be quarantined with ``reason``."""
    return dict(item_id=item_id, image_uri=image_uri, price=price, expect=reason, **{"category": "Shoes", "updated_at": "", **fields})


def case_rows(root: Path) -> list[dict]:
    """The logical input rows: ``expect`` is None for rows to ingest, else the reason to quarantine them.

    Prices are given as text (as in a CSV); the format writers turn them into what each format holds.
    """
    p = photo_names(root)
    images = root / "images"
    return [
        # Good rows: relative, absolute, file:/// and file:/ image paths, a nested folder; zero and padded prices.
        good("A1", f"images/{p[0]}", "100.50", images / p[0], category="Topwear", updated_at="2026-01-02T00:00:00Z"),
        good("A2", f"images/{p[1]}", "0", images / p[1], category="Shoes", updated_at="2026-01-01T00:00:00Z"),
        good("A3", str(images / p[2]), " 2500 ", images / p[2]),
        good("A4", "file://" + str(images / p[3]), "75", images / p[3], category="Bags", updated_at="2026-01-01T00:00:00Z"),
        good("A6", "file:" + str(images / p[6]), "12.25", images / p[6], category="Bags"),
        good("A7", f"./images/sub/{p[7]}", "8", images / "sub" / p[7], category="Bags"),
        # Same id, same updated_at: the smaller image_uri (p4) wins, whatever the file order.
        bad("A5", f"images/{p[5]}", "20", "duplicate_item_id", category="Bags", updated_at="2026-01-01T00:00:00Z"),
        good("A5", f"images/{p[4]}", "10", images / p[4], category="Bags", updated_at="2026-01-01T00:00:00Z"),
        # An older row of A1 loses to the newer one.
        bad("A1", f"images/{p[2]}", "999", "duplicate_item_id", category="Topwear", updated_at="2025-06-01T00:00:00Z"),
        # A newer row of A2 with a bad price is quarantined for its price and does not displace the good row.
        bad("A2", f"images/{p[1]}", "-1", "bad_price", updated_at="2027-01-01T00:00:00Z"),
        bad("B_neg", f"images/{p[0]}", "-5", "bad_price"),
        bad("B_nan", f"images/{p[0]}", "NaN", "bad_price"),
        bad("B_inf", f"images/{p[0]}", "Infinity", "bad_price"),
        bad("B_text", f"images/{p[0]}", "cheap", "bad_price"),
        bad("B_empty", f"images/{p[0]}", "", "bad_price"),
        # A missing id is checked before the (also bad) price.
        bad("", f"images/{p[0]}", "cheap", "missing_item_id"),
        bad("B_noimg", "", "5", "missing_image_uri"),
        bad("B_blankimg", "   ", "5", "missing_image_uri"),
        bad("B_missing", "images/does-not-exist.jpg", "5", "missing_image"),
        bad("B_nofolder", "no-such-folder/x.jpg", "5", "missing_image"),
        bad("B_zero", "images/empty.jpg", "5", "missing_image"),  # Spark's file sources skip zero-byte files
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


def expected_catalog(spark, rows: list[dict]):
    """The catalog rows the good inputs should give, image hashes computed with hashlib."""
    out = [
        (r["item_id"], uri(r["photo"]), float(r["price"]), r["category"] or None, sha256(r["photo"]))
        for r in rows
        if r["expect"] is None
    ]
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


# What each format's writer puts in A1's title, brand and in_stock (Parquet and JSON carry no title or brand).
EXPECTED_A1_FIELDS = {"csv": ("title A1", "Brand", True), "parquet": (None, None, True), "jsonl": (None, None, False)}
# The refused non-numeric price as the detail shows it (Parquet holds it as a null double).
EXPECTED_B_TEXT_DETAIL = {"csv": "price=cheap", "parquet": "price=null", "jsonl": "price=cheap"}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_ingest_whole_tables(spark, make_config, photo_root, tmp_path, fmt):
    """Every good row reaches catalog (photos stored once, fields parsed) and every bad row reaches quarantine with its first reason."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = case_rows(photo_root)
    writer, name = WRITERS[fmt]
    path = writer(rows, tmp_path / name)

    counts = ingest_catalog(spark, config, str(path), run_id="run-1")

    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, rows))
    photos = sorted({r["photo"] for r in rows if r["expect"] is None})
    expected_images = spark.createDataFrame(
        [(sha256(f), f.read_bytes(), f.stat().st_size, "run-1") for f in photos],
        "image_hash string, content binary, size_bytes long, run_id string",
    )
    assertDataFrameEqual(read_table(spark, config, IMAGES), expected_images)
    assert counts.new_images == len(photos) == 7
    assert counts.input_rows == len(rows)
    assert counts.ingested == sum(r["expect"] is None for r in rows)
    assert counts.input_rows == counts.ingested + counts.quarantined_total

    # Optional fields are parsed from each format's own types; rows carry the run id.
    a1 = read_table(spark, config, CATALOG).where("item_id = 'A1'").first()
    assert (a1["title"], a1["brand"], a1["in_stock"], a1["run_id"]) == EXPECTED_A1_FIELDS[fmt] + ("run-1",)
    assert a1["updated_at"].replace(tzinfo=timezone.utc) == datetime(2026, 1, 2, tzinfo=timezone.utc)
    refused = read_table(spark, config, QUARANTINE).where("item_id = 'B_text'").first()
    assert (refused["stage"], refused["run_id"], refused["detail"]) == ("ingest", "run-1", EXPECTED_B_TEXT_DETAIL[fmt])
    assert json.loads(refused["source_record"])["item_id"] == "B_text"

    assertDataFrameEqual(quarantine_of(spark, config, "run-1"), expected_quarantine(spark, rows))
    assert counts.quarantined == dict(Counter(r["expect"] for r in rows if r["expect"] is not None))


def test_reingest_is_idempotent_and_merge_updates_changes(spark, make_config, photo_root, tmp_path):
    """Re-ingesting the same file writes no catalog version; a changed price and a new item are merged in."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = [r for r in case_rows(photo_root) if r["item_id"] != "B_zero"]
    path = write_csv(rows, tmp_path / "catalog.csv")
    first = ingest_catalog(spark, config, str(path), run_id="run-1")
    versions = history_length(spark, config, CATALOG)
    expected = expected_catalog(spark, rows)

    again = ingest_catalog(spark, config, str(path), run_id="run-2")
    assert history_length(spark, config, CATALOG) == versions
    assertDataFrameEqual(catalog_of(spark, config), expected)
    # Unchanged rows are not rewritten: they still carry the first run's id.
    assert {r["run_id"] for r in read_table(spark, config, CATALOG).select("run_id").collect()} == {"run-1"}
    assert (again.input_rows, again.ingested, again.quarantined) == (first.input_rows, first.ingested, first.quarantined)
    assert again.new_images == 0
    # Quarantine is appended per run.
    assertDataFrameEqual(quarantine_of(spark, config, "run-2"), expected_quarantine(spark, rows))

    p = photo_names(photo_root)
    changed = [dict(r, price="150") if r["item_id"] == "A1" and r["expect"] is None else r for r in rows]
    changed.append(good("A8", f"images/{p[5]}", "60", photo_root / "images" / p[5], category="Bags"))
    third = ingest_catalog(spark, config, str(write_csv(changed, tmp_path / "catalog2.csv")), run_id="run-3")
    assert history_length(spark, config, CATALOG) == versions + 1
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, changed))
    run_ids = {r["item_id"]: r["run_id"] for r in read_table(spark, config, CATALOG).collect()}
    assert run_ids == {"A1": "run-3", "A2": "run-1", "A3": "run-1", "A4": "run-1", "A5": "run-1", "A6": "run-1", "A7": "run-1", "A8": "run-3"}
    assert third.new_images == 1  # p5 was only referenced by a losing duplicate before


def test_missing_price_column_raises(spark, make_config, photo_root, tmp_path):
    """A catalog without the price column is refused up front with ValueError naming the column."""
    config = make_config(f"catalog.image_root={photo_root}")
    path = tmp_path / "no_price.csv"
    path.write_text(f"item_id,image_uri,category\nA1,images/{photo_names(photo_root)[0]},Shoes\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['price'\]"):
        ingest_catalog(spark, config, str(path), run_id="run-x")


def test_unknown_extension_raises(spark, make_config, photo_root, tmp_path):
    """A file whose format cannot be told from its name raises ValueError."""
    config = make_config(f"catalog.image_root={photo_root}")
    path = write_csv(case_rows(photo_root)[:1], tmp_path / "catalog.txt")
    with pytest.raises(ValueError, match="format"):
        ingest_catalog(spark, config, str(path), run_id="run-x")


def test_image_root_given_as_file_uri(spark, make_config, photo_root, tmp_path):
    """Relative paths resolve against an image_root written as a file:/// URI, as against a plain path."""
    config = make_config(f"catalog.image_root=file://{photo_root}")
    p = photo_names(photo_root)
    rows = [good("rel", f"images/{p[0]}", "4", photo_root / "images" / p[0], category="x")]
    counts = ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "catalog.csv")), run_id="run-root")
    assert counts.quarantined == {}
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, rows))


def test_unchanged_photos_are_not_read_again_and_replaced_photos_are(spark, make_config, photo_root, tmp_path):
    """A re-ingest reads no photo whose length and mtime are unchanged; a photo overwritten in place is re-read and re-hashed."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = [r for r in case_rows(photo_root) if r["expect"] is None]
    path = write_csv(rows, tmp_path / "catalog.csv")
    first = ingest_catalog(spark, config, str(path), run_id="run-1")
    assert first.photos_read == len({r["photo"] for r in rows}) == 7

    again = ingest_catalog(spark, config, str(path), run_id="run-2")
    assert (again.photos_read, again.changed, again.deleted) == (0, 0, 0)

    p = photo_names(photo_root)
    a1_photo = photo_root / "images" / p[0]
    shutil.copy(photo_root / "images" / p[1], a1_photo)  # A1's file now holds p1's bytes
    os.utime(a1_photo, (1_900_000_000, 1_900_000_000))
    third = ingest_catalog(spark, config, str(path), run_id="run-3")
    assert (third.photos_read, third.changed) == (1, 1)
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, rows))
    assert read_table(spark, config, CATALOG).where("item_id = 'A1'").first()["image_hash"] == sha256(photo_root / "images" / p[1])


def test_snapshot_ingest_deletes_absent_items_but_keeps_quarantined_ones(spark, make_config, photo_root, tmp_path):
    """With delete_missing, ids missing from the file are deleted; an id present with a bad row keeps its last good row."""
    config = make_config(f"catalog.image_root={photo_root}")
    rows = [r for r in case_rows(photo_root) if r["expect"] is None]
    ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "night1.csv")), run_id="run-1", delete_missing=True)

    kept = [r for r in rows if r["item_id"] != "A3"]  # A3 is gone tonight
    bad_a4 = [dict(r, price="-1", expect="bad_price") if r["item_id"] == "A4" else r for r in kept]
    counts = ingest_catalog(
        spark, config, str(write_csv(bad_a4, tmp_path / "night2.csv")), run_id="run-2", delete_missing=True
    )
    assert (counts.deleted, counts.changed, counts.quarantined, counts.kept) == (1, 0, {"bad_price": 1}, 1)
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, kept))


def test_photos_outside_the_image_roots_are_quarantined_and_never_read(spark, make_config, photo_root, tmp_path):
    """Paths escaping the root (.., absolute elsewhere, file:// to system files, symlinked file or folder) are refused."""
    names = photo_names(photo_root)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    shutil.copy(photo_root / "images" / names[0], secret)
    secret.write_bytes(secret.read_bytes() + b"outside")  # a photo whose hash no good row has
    os.symlink(secret, photo_root / "images" / "link-out.jpg")
    os.symlink(outside, photo_root / "images" / "linked-folder")
    os.symlink(photo_root / "images" / names[1], photo_root / "images" / "link-in.jpg")  # stays inside: fine
    second_root = tmp_path / "second-root"
    second_root.mkdir()
    shutil.copy(photo_root / "images" / names[2], second_root / "other.jpg")
    rows = [
        good("G1", f"images/{names[0]}", "10", photo_root / "images" / names[0]),
        good("G2", "images/link-in.jpg", "11", photo_root / "images" / "link-in.jpg"),
        good("G3", str(second_root / "other.jpg"), "12", second_root / "other.jpg"),
        bad("H_dotdot", "../outside/secret.jpg", "5", "outside_image_root"),
        bad("H_dotdot_inside", f"images/../images/{names[0]}", "5", "outside_image_root"),
        bad("H_absolute", str(secret), "5", "outside_image_root"),
        bad("H_file_uri", "file:///etc/passwd", "5", "outside_image_root"),
        bad("H_symlink", "images/link-out.jpg", "5", "outside_image_root"),
        bad("H_symlinked_folder", "images/linked-folder/secret.jpg", "5", "outside_image_root"),
        bad("H_prefix", str(photo_root) + "-sibling/x.jpg", "5", "outside_image_root"),  # shares the root's prefix
        bad("H_bad_price", "../outside/secret.jpg", "-1", "bad_price"),  # the first failing reason wins
    ]
    config = make_config(f"catalog.image_root={photo_root}", f'catalog.image_roots=["{photo_root}", "{second_root}"]')
    counts = ingest_catalog(spark, config, str(write_csv(rows, tmp_path / "catalog.csv")), run_id="run-hostile")

    assert (counts.input_rows, counts.ingested, counts.quarantined) == (11, 3, {"outside_image_root": 7, "bad_price": 1})
    expected = [  # a link inside the root keeps its own path
        (r["item_id"], "file:" + str(r["photo"]), float(r["price"]), None, sha256(r["photo"])) for r in rows if r["expect"] is None
    ]
    assertDataFrameEqual(catalog_of(spark, config), spark.createDataFrame(expected, CATALOG_COLUMNS))
    assertDataFrameEqual(quarantine_of(spark, config, "run-hostile"), expected_quarantine(spark, rows))
    details = {r["item_id"]: r["detail"] for r in read_table(spark, config, QUARANTINE).collect()}
    assert details["H_symlink"].startswith("a symbolic link leading out of the image roots")
    assert details["H_file_uri"].endswith(": file:/etc/passwd")
    stored = {r["image_hash"] for r in read_table(spark, config, IMAGES).select("image_hash").collect()}
    assert sha256(secret) not in stored  # never read into the images table
    assert stored == {sha256(r["photo"]) for r in rows if r["expect"] is None}


def test_unknown_columns_fail_unless_allowed(spark, make_config, photo_root, tmp_path):
    """A column the catalog does not know is schema drift: refused by name, or ignored when configured."""
    p = photo_names(photo_root)
    path = tmp_path / "drift.csv"
    path.write_text(f"item_id,image_uri,price,colour\nD1,images/{p[0]},5,red\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['colour'\].*allow_unknown_columns"):
        ingest_catalog(spark, make_config(f"catalog.image_root={photo_root}"), str(path), run_id="run-drift")
    config = make_config(f"catalog.image_root={photo_root}", "catalog.allow_unknown_columns=true")
    counts = ingest_catalog(spark, config, str(path), run_id="run-drift")
    assert (counts.input_rows, counts.ingested) == (1, 1)
    assert "colour" not in read_table(spark, config, CATALOG).columns


def test_nested_column_is_refused_with_its_type(spark, make_config, photo_root, tmp_path):
    """A price given as an object (a wrong type Spark cannot cast) fails up front, naming the column and type."""
    p = photo_names(photo_root)
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps({"item_id": "N1", "image_uri": f"images/{p[0]}", "price": {"amount": 5}}) + "\n")
    with pytest.raises(ValueError, match=r"price \(struct<amount:bigint>\)"):
        ingest_catalog(spark, make_config(f"catalog.image_root={photo_root}"), str(path), run_id="run-nested")


def test_text_that_is_not_utf8_is_quarantined_and_accents_are_kept(spark, make_config, photo_root, tmp_path):
    """A Latin-1 title would reach the tables garbled (U+FFFD): quarantined as bad_encoding; real UTF-8 is kept exactly."""
    p = photo_names(photo_root)
    path = tmp_path / "encoding.csv"
    path.write_bytes(
        b"item_id,image_uri,price,title,brand\n"
        + f"U1,images/{p[0]},5,Caf\u00e9 cr\u00e8me \u2013 \u65e5\u672c,Br\u00fbl\u00e9e\n".encode("utf-8")
        + f"L1,images/{p[1]},6,".encode("utf-8") + "Caf\u00e9 latin-1".encode("latin-1") + b",Brand\n"
    )
    config = make_config(f"catalog.image_root={photo_root}")
    counts = ingest_catalog(spark, config, str(path), run_id="run-encoding")
    assert (counts.ingested, counts.quarantined) == (1, {"bad_encoding": 1})
    titles = {r["item_id"]: (r["title"], r["brand"]) for r in read_table(spark, config, CATALOG).collect()}
    assert titles == {"U1": ("Caf\u00e9 cr\u00e8me \u2013 \u65e5\u672c", "Br\u00fbl\u00e9e")}
    refused = read_table(spark, config, QUARANTINE).collect()
    assert [(r["item_id"], r["reason"], r["detail"]) for r in refused] == [
        ("L1", "bad_encoding", "not UTF-8 (shown as U+FFFD) in: title")
    ]


def test_photo_removed_after_listing_is_quarantined_as_unreadable(spark, make_config, photo_root, tmp_path):
    """A photo listed, then deleted before its bytes are read, is one unreadable_image row; the job goes on."""
    p = photo_names(photo_root)
    rows = [r for r in case_rows(photo_root) if r["expect"] is None]
    path = write_csv(rows, tmp_path / "catalog.csv")
    config = make_config(f"catalog.image_root={photo_root}")
    prepared = read_catalog_input(spark, config, str(path))  # lists the photos
    try:
        (photo_root / "images" / p[3]).unlink()  # A4's photo
        counts = ingest_catalog(spark, config, str(path), run_id="run-gone", prepared=prepared)
    finally:
        prepared.unpersist()

    assert counts.quarantined == {"unreadable_image": 1}
    assert counts.input_rows == counts.ingested + counts.quarantined_total == len(rows)
    assertDataFrameEqual(catalog_of(spark, config), expected_catalog(spark, [r for r in rows if r["item_id"] != "A4"]))
    assertDataFrameEqual(
        quarantine_of(spark, config, "run-gone"), spark.createDataFrame([("A4", "unreadable_image")], QUARANTINE_COLUMNS)
    )


def test_photo_removed_while_its_read_is_planned_is_skipped_not_fatal(spark, photo_root):
    """Deleted after Spark planned the read (at task time), a file is left out of the result instead of failing the job."""
    photos = sorted((photo_root / "images").glob("*.jpg"))
    photos = [f for f in photos if f.stat().st_size > 0][:3]
    paths = spark.createDataFrame([(uri(f),) for f in photos], "path string")
    planned = read_image_files(spark, paths)
    photos[1].unlink()
    read = planned.select("path", F.sha2("content", 256).alias("hash"))
    expected = spark.createDataFrame([(uri(f), sha256(f)) for f in (photos[0], photos[2])], "path string, hash string")
    assertDataFrameEqual(read, expected)


UNREADABLE_INGEST = """
import json, sys
from lookalike.config import load_config
from lookalike.ingest import ingest_catalog
from lookalike.session import build_spark
from lookalike.tables import read_table
from schemas import QUARANTINE
config = load_config(profile="test", overrides=sys.argv[2:])
spark = build_spark("unreadable-photo", config, master="local[1]")
counts = ingest_catalog(spark, config, sys.argv[1], run_id="run-unreadable")
refused = [(r["item_id"], r["reason"], r["detail"]) for r in read_table(spark, config, QUARANTINE).collect()]
print(json.dumps({"ingested": counts.ingested, "quarantined": counts.quarantined, "refused": refused}))
"""


@pytest.mark.slow
def test_photo_without_read_permission_is_quarantined_as_unreadable(photo_root, tmp_path):
    """A photo the job may list but not read is one unreadable_image row; the readable photos are ingested.

    Root reads any file, so as root the job runs without the capabilities that let it bypass
    file permissions (setpriv), as a retailer's service account would.
    """
    p = photo_names(photo_root)
    rows = [r for r in case_rows(photo_root) if r["expect"] is None]
    path = write_csv(rows, tmp_path / "catalog.csv")
    locked = photo_root / "images" / p[3]  # A4's photo
    locked.chmod(0)
    command = [sys.executable, "-c", UNREADABLE_INGEST, str(path), f"catalog.image_root={photo_root}",
               f"storage.root={tmp_path / 'store'}"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot take away root's read-anything rights")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        locked.chmod(0o644)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["ingested"] == len(rows) - 1
    assert outcome["quarantined"] == {"unreadable_image": 1}
    assert outcome["refused"] == [
        ["A4", "unreadable_image",
         "listed but could not be read (no permission, removed during the run, or an I/O error): " + uri(locked)]
    ]
