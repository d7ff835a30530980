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
source scripts/spark-env.sh spark-sql.sh
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
exec .venv/bin/spark-sql \
  --master "local[*]" \
  --jars "$delta_jars" \
  --driver-java-options "$log_options" \
  "${settings[@]}" \
  "${args[@]}"
