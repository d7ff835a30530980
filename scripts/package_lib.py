"""Build the library zip: the library and the table schemas, the archive executors import them from.

    .venv/bin/python scripts/package_lib.py [--out dist/lookalike.zip]
    .venv/bin/python scripts/package_lib.py --addressed dist     # prints dist/lookalike-<sha256[:16]>.zip

Run from the repository root; spark-submit.sh runs it (``--addressed``) before every submit, and
a scheduler that calls spark-submit itself (deploy/airflow/lookalike_nightly.py) runs it first.

A running job keeps reading its zip: Python imports a module from it when first used, hours into a
run. So the zip is never rewritten in place: ``--out`` writes a new file and renames it over the
old one, and ``--addressed`` names the zip after its content, so that a job started from an edited
checkout gets a file of its own and one started from the same code shares the same bytes.
Addressed zips unused for ``STALE_DAYS`` days are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGES = (("lookalike", Path("lib/lookalike")), ("schemas", Path("schemas")))
# Fixed entry times: the same sources give the same bytes, so the same content address.
ENTRY_TIME = (2020, 1, 1, 0, 0, 0)
STALE_DAYS = 7


def build(out: Path) -> list[str]:
    """Write the zip to ``out``, every ``.py`` file in a stable order; return the names written.

    The zip is written beside ``out`` and renamed over it, so a reader never sees a half-written file.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    handle, partial = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            for package, root in PACKAGES:
                for path in sorted(root.rglob("*.py")):
                    name = f"{package}/{path.relative_to(root)}"
                    entry = zipfile.ZipInfo(name, ENTRY_TIME)
                    entry.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(entry, path.read_bytes())
                    names.append(name)
        os.chmod(partial, 0o644)
        os.replace(partial, out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return names


def build_addressed(folder: Path) -> Path:
    """Build the zip as ``folder/lookalike-<first 16 hex of its SHA-256>.zip`` and return that path.

    An existing zip of the same content is kept as it is (its modification time refreshed);
    addressed zips not used for ``STALE_DAYS`` days are removed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=".lookalike-", suffix=".zip", dir=folder)
    os.close(handle)
    try:
        build(Path(partial))
        digest = hashlib.sha256(Path(partial).read_bytes()).hexdigest()[:16]
        addressed = folder / f"lookalike-{digest}.zip"
        if addressed.exists():
            os.utime(addressed)
        else:
            os.replace(partial, addressed)
    finally:
        Path(partial).unlink(missing_ok=True)
    cutoff = time.time() - STALE_DAYS * 86400
    for old in folder.glob("lookalike-" + "[0-9a-f]" * 16 + ".zip"):
        if old != addressed and old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    return addressed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, default=Path("dist/lookalike.zip"))
    target.add_argument("--addressed", type=Path, metavar="FOLDER", help="build into FOLDER, named by content; print the path")
    args = parser.parse_args()
    if args.addressed:
        print(build_addressed(args.addressed))
    else:
        build(args.out)


if __name__ == "__main__":
    main()
