"""The refresh history several test modules read: real photos, a real model, real Delta tables.

Built once per test session (a few minutes): night-1 (full build, trains the model), night-2
(a night of changes of every kind, incremental), and the same night-2 catalog built from empty
in a second store with the same model. Modules that change the incremental store afterwards
(a third night, a rollback) read night-2 through ``night2.publication``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from lookalike.config import load_config
from lookalike.demo_catalog import build_demo_catalog, nightly_changes, read_catalog_csv, write_catalog_csv
from lookalike.refresh import RefreshResult, refresh

REPO = Path(__file__).resolve().parents[1]
SPARE_PHOTOS = 16


@dataclass
class History:
    """Two stores and the runs made in them."""

    photos: Path
    incremental: dict
    full: dict
    base_csv: Path
    changed_csv: Path
    changed_rows: list[dict]
    affected: dict[str, list[str]]
    night1: RefreshResult
    night2: RefreshResult
    rebuilt: RefreshResult


# Its own Spark SQL database: every refresh registers its tables, and the other modules' stores
# register theirs under the default name in the same session.
DATABASE = "refresh_history"


def store_config(root: Path, photos: Path) -> dict:
    """Test-profile config with its own storage root."""
    return load_config(
        "test", [f"storage.root={root}", f"catalog.image_root={photos}", f"storage.database={DATABASE}"],
        conf_dir=REPO / "conf",
    )


@pytest.fixture(scope="session")
def history(spark, photo_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> History:
    work = tmp_path_factory.mktemp("refresh")
    photos = work / "photos"
    (photos / "images").mkdir(parents=True)
    shutil.copy(photo_subset / "labels.csv", photos / "labels.csv")
    ids = sorted(p.stem for p in (photo_subset / "images").glob("*.jpg") if p.stem.isdigit())
    for item_id in ids:
        shutil.copy(photo_subset / "images" / f"{item_id}.jpg", photos / "images" / f"{item_id}.jpg")
    build_demo_catalog(photos, work / "all.csv", seed=5, item_ids=ids)
    rows = read_catalog_csv(work / "all.csv")
    base, spare = rows[:-SPARE_PHOTOS], [r["image_uri"] for r in rows[-SPARE_PHOTOS:]]
    base_csv = write_catalog_csv(base, work / "night1.csv")
    changed_rows, affected = nightly_changes(base, spare, fraction=0.06, seed=3)
    changed_csv = write_catalog_csv(changed_rows, work / "night2.csv")

    incremental = store_config(work / "incremental", photos)
    night1 = refresh(spark, incremental, catalog_path=str(base_csv), run_id="night-1", train=True)
    night2 = refresh(spark, incremental, catalog_path=str(changed_csv), run_id="night-2")
    full = store_config(work / "full", photos)
    shutil.copytree(work / "incremental" / "models", work / "full" / "models")
    rebuilt = refresh(spark, full, catalog_path=str(changed_csv), run_id="rebuild")
    return History(photos, incremental, full, base_csv, changed_csv, changed_rows, affected, night1, night2, rebuilt)
