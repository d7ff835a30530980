#!/usr/bin/env bash
# Pack the job's Python environment for clusters whose nodes lack TensorFlow, Petastorm & co:
#
#   scripts/pack-env.sh [dist/lookalike-env.tar.gz]
#   ./spark-submit.sh --python-env dist/lookalike-env.tar.gz --master yarn jobs/refresh.py ...
#
# Builds a separate virtualenv with the pinned packages and the library installed as a normal
# (not editable) package, and packs it with venv-pack. A venv-pack archive holds the packages but
# not the interpreter: the nodes need the same Python (3.11) at the same path as this machine's.
# Where they do not, pack a conda environment with conda-pack instead (see docs/CLUSTER.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist/lookalike-env.tar.gz}"
env_dir=build/pack-env
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

rm -rf "$env_dir"
"$PYTHON" -m venv "$env_dir"
"$env_dir/bin/python" -m pip install --quiet "pip==24.3.1"
"$env_dir/bin/python" -m pip install --quiet -c constraints.txt . "venv-pack==0.2.0"
mkdir -p "$(dirname "$out")"
rm -f "$out"
"$env_dir/bin/venv-pack" --prefix "$env_dir" --output "$out" --quiet
echo "packed $env_dir into $out ($(du -h "$out" | cut -f1))"
