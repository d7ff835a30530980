#!/usr/bin/env bash
# One-time set-up on a fresh machine: a Python 3.11 virtualenv with the pinned packages, and the
# Delta Lake JVM jars fetched from Maven Central into .jars/ (git-ignored). Idempotent: a second
# run with nothing changed returns at once. After this, nothing needs the network.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.setup-stamp
inputs_hash=$(cat setup.py constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)

if [[ -f "$stamp" && "$(cat "$stamp")" == "$inputs_hash" ]] && ls .jars/delta-spark_*.jar >/dev/null 2>&1; then
  exit 0
fi

echo "[setup] creating .venv with $($PYTHON --version)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip==24.3.1"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"

# The JVM side of Delta must match the pip package's version exactly.
delta_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("delta-spark"))')
spark_minor=$(.venv/bin/python -c 'import pyspark; print(".".join(pyspark.__version__.split(".")[:2]))')
echo "[setup] fetching Delta $delta_version jars for Spark $spark_minor with mvn into .jars/"
rm -rf .jars && mkdir -p .jars
for artifact in "io.delta:delta-spark_${spark_minor}_2.13:${delta_version}" "io.delta:delta-storage:${delta_version}"; do
  mvn --batch-mode --quiet dependency:copy -Dartifact="$artifact" -DoutputDirectory=.jars
done
ls .jars/delta-spark_*.jar .jars/delta-storage-*.jar >/dev/null
echo "$inputs_hash" > "$stamp"
echo "[setup] done"
