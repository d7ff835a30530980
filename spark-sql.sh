#!/usr/bin/env bash
# Ad-hoc Spark SQL over the published tables, with the Delta jars and the profile's metastore.
#
#   ./spark-sql.sh -e "SELECT * FROM lookalike.similar_items WHERE item_id = '15970' ORDER BY rank"
#   ./spark-sql.sh                         # interactive shell
#   ./spark-sql.sh --profile local --set storage.root=/data/lookalike -f my-queries.sql
#
# Sees the tables that the last run registered when the profile's storage.metastore is "derby"
# (the local profile). Derby admits one process at a time: not while a job is running.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo"
if [[ ! -x .venv/bin/spark-sql ]] || ! ls .jars/delta-spark_*.jar >/dev/null 2>&1; then
  echo "spark-sql.sh: not set up yet; run scripts/setup.sh" >&2
  exit 2
fi
profile=local
overrides=()
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --set) overrides+=("$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
mapfile -t settings < <(.venv/bin/python -m lookalike.session "$profile" "${overrides[@]}")
export PYSPARK_PYTHON="$repo/.venv/bin/python" PYSPARK_DRIVER_PYTHON="$repo/.venv/bin/python"
jars=$(ls "$repo"/.jars/*.jar | paste -sd, -)
exec .venv/bin/spark-sql \
  --master "local[*]" \
  --jars "$jars" \
  --driver-java-options "-Dlog4j.configurationFile=file:$repo/conf/log4j2.properties" \
  "${settings[@]}" \
  "${args[@]}"
