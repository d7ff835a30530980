# Sourced by spark-submit.sh and spark-sql.sh: checks set-up, then exports what both need.
# Expects $repo (the repository root) and the caller's name in $1.
if [[ ! -x "$repo/.venv/bin/spark-submit" ]] || ! ls "$repo"/.jars/delta-spark_*.jar >/dev/null 2>&1; then
  echo "$1: not set up yet; run scripts/setup.sh (or make demo / make test)" >&2
  exit 2
fi
delta_jars=$(ls "$repo"/.jars/*.jar | paste -sd, -)
log_options="-Dlog4j.configurationFile=file:$repo/conf/log4j2.properties"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$repo/.venv/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$repo/.venv/bin/python}"
export LOOKALIKE_JARS_DIR="$repo/.jars"
