#!/usr/bin/env bash
# Submit a lookalike job with the Delta jars, the packaged library and the project's interpreter.
#
#   ./spark-submit.sh [spark-submit options] [--python-env ENV.tar.gz] jobs/<job>.py [job options]
#   ./spark-submit.sh --master yarn --deploy-mode client jobs/refresh.py --profile cluster ...
#
# --master defaults to local[*]; any other spark-submit option is passed through. Ships the library
# as a zip named by its content (--py-files, dist/lookalike-<sha256>.zip), the configuration files
# (--files: a driver in cluster deploy mode finds them in its working directory) and the Delta jars
# (--jars). --python-env ships a packed Python
# environment (scripts/pack-env.sh) with --archives, for clusters whose nodes lack the packages.
# LOOKALIKE_PRINT_COMMAND=1 prints the spark-submit command instead of running it. Runs from the
# repository root, so relative paths (conf/, storage.root) resolve there. Needs scripts/setup.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo"
source scripts/spark-env.sh spark-submit.sh

spark_args=()
master_given=false
driver_memory_given=false
cluster_deploy=false
python_given=false
python_env=""
while [[ $# -gt 0 && "$1" != *.py ]]; do
  case "$1" in
    --python-env) python_env="${2:?--python-env needs an archive}"; shift 2; continue ;;
    --python-env=*) python_env="${1#--python-env=}"; shift; continue ;;
    --master|--master=*) master_given=true ;;
    --driver-memory|--driver-memory=*) driver_memory_given=true ;;
    --deploy-mode=cluster) cluster_deploy=true ;;
    --deploy-mode) [[ "${2:-}" == cluster ]] && cluster_deploy=true ;;
    --conf=spark.pyspark.python=*) python_given=true ;;
    --conf) [[ "${2:-}" == spark.pyspark.python=* ]] && python_given=true ;;
  esac
  spark_args+=("$1")
  shift
done
if [[ $# -eq 0 ]]; then
  echo "usage: ./spark-submit.sh [spark-submit options] jobs/<job>.py [job options]" >&2
  exit 2
fi
$master_given || spark_args=(--master "local[*]" "${spark_args[@]}")
$driver_memory_given || spark_args=(--driver-memory "${LOOKALIKE_DRIVER_MEMORY:-6g}" "${spark_args[@]}")

# Ship the library (and the table schemas) to the executors as one zip, named by its content: a
# job still running from an earlier zip keeps reading its own file (scripts/package_lib.py).
library_zip="$(.venv/bin/python scripts/package_lib.py --addressed dist)"

# Executors run the project's interpreter (same path on every node), the shipped environment's, or
# the one given with --conf spark.pyspark.python=... (e.g. the Python of a Kubernetes image).
python_args=(--conf "spark.pyspark.python=$PYSPARK_PYTHON")
$python_given && python_args=()
if [[ -n "$python_env" ]]; then
  [[ "$python_env" == *://* || -f "$python_env" ]] || { echo "spark-submit.sh: no archive $python_env" >&2; exit 2; }
  python_args=(--archives "$python_env#lookalike-env" --conf "spark.pyspark.python=./lookalike-env/bin/python")
  # A driver on a cluster node (cluster deploy mode) unpacks the archive too. In client mode it runs
  # here, and must be told so: spark.pyspark.python would otherwise win over PYSPARK_DRIVER_PYTHON.
  if $cluster_deploy; then
    python_args+=(--conf "spark.pyspark.driver.python=./lookalike-env/bin/python")
  else
    python_args+=(--conf "spark.pyspark.driver.python=$PYSPARK_DRIVER_PYTHON")
  fi
fi

command=(.venv/bin/spark-submit
  "${spark_args[@]}"
  --jars "$delta_jars"
  --py-files "$library_zip"
  --files "$(ls conf/*.toml | paste -sd, -)"
  --conf "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension"
  --conf "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog"
  "${python_args[@]}"
  --driver-java-options "$log_options"
  "$@")
if [[ "${LOOKALIKE_PRINT_COMMAND:-}" == 1 ]]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
