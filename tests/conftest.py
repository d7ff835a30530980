"""Shared fixtures: one local[2] SparkSession with Delta for the whole run, and config pointing at tmp dirs."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from lookalike.config import load_config
from lookalike.session import build_spark
from refresh_history import history  # noqa: F401  (a session fixture shared by several modules)

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "fashion-products"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end runs through every stage (minutes)")
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    warehouse = tmp_path_factory.mktemp("warehouse")
    config = load_config(
        "test",
        [f"storage.root={warehouse}", f"spark.spark.sql.warehouse.dir={warehouse / 'sql'}"],
        conf_dir=REPO / "conf",
    )
    session = build_spark("lookalike-tests", config, master="local[2]")
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path: Path):
    """A test-profile config whose storage root is a fresh folder; extra overrides as arguments."""

    def make(*overrides: str) -> dict:
        return load_config("test", [f"storage.root={tmp_path / 'store'}", *overrides], conf_dir=REPO / "conf")

    return make


@pytest.fixture(scope="session")
def photo_dir() -> Path:
    """The shared fashion-products folder (read-only)."""
    if not (SHARED_PHOTOS / "labels.csv").is_file():
        pytest.skip(f"shared photos not found beside the repository ({SHARED_PHOTOS})")
    return SHARED_PHOTOS


@pytest.fixture(scope="session")
def photo_subset(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed subset of ~200 real photos copied to a temp folder laid out like the shared one.

    The first 150 labelled items (by id) of the seven biggest categories, plus the first 50
    unlabelled photos by id.
    """
    with open(photo_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        labels = list(csv.DictReader(handle))
    big = {"Topwear", "Shoes", "Bottomwear", "Bags", "Watches", "Eyewear", "Flip Flops"}
    labelled = sorted((r for r in labels if r["subCategory"] in big), key=lambda r: int(r["id"]))
    # Every category represented: take ids round-robin over categories.
    by_category: dict[str, list[dict]] = {}
    for row in labelled:
        by_category.setdefault(row["subCategory"], []).append(row)
    chosen: list[dict] = []
    while len(chosen) < 150:
        for rows in by_category.values():
            if rows and len(chosen) < 150:
                chosen.append(rows.pop(0))
    labelled_ids = {r["id"] for r in labels}
    unlabelled = sorted((p.stem for p in (photo_dir / "images").glob("*.jpg") if p.stem not in labelled_ids), key=int)[:50]
    out = tmp_path_factory.mktemp("photos")
    (out / "images").mkdir()
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(labels[0].keys()))
        writer.writeheader()
        writer.writerows(chosen)
    for item_id in [r["id"] for r in chosen] + unlabelled:
        shutil.copy(photo_dir / "images" / f"{item_id}.jpg", out / "images" / f"{item_id}.jpg")
    return out
