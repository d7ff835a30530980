"""Build dist/lookalike.zip: the library and the table schemas, the archive executors import them from.

    .venv/bin/python scripts/package_lib.py [--out dist/lookalike.zip]

Run from the repository root; spark-submit.sh runs it before every submit, and a scheduler that
calls spark-submit itself (deploy/airflow/lookalike_nightly.py) runs it first.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

PACKAGES = (("lookalike", Path("lib/lookalike")), ("schemas", Path("schemas")))


def build(out: Path) -> list[str]:
    """Write the zip, every ``.py`` file in a stable order; return the names written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for package, root in PACKAGES:
            for path in sorted(root.rglob("*.py")):
                name = f"{package}/{path.relative_to(root)}"
                archive.write(path, name)
                names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("dist/lookalike.zip"))
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
