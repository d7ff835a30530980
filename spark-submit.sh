#!/usr/bin/env bash
# Submit a lookalike job with the Delta jars, the packaged library and the project's interpreter.
#
#   ./spark-submit.sh [spark-submit options] jobs/<job>.py [job options]
#   ./spark-submit.sh --master yarn --deploy-mode client jobs/index.py --profile cluster
#
# --master defaults to local[*]; any other spark-submit option is passed through. Runs from the
# repository root, so relative paths (conf/, storage.root) resolve there. Needs scripts/setup.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo"
source scripts/spark-env.sh spark-submit.sh

spark_args=()
master_given=false
driver_memory_given=false
while [[ $# -gt 0 && "$1" != *.py ]]; do
  case "$1" in
    --master) master_given=true ;;
    --master=*) master_given=true ;;
    --driver-memory|--driver-memory=*) driver_memory_given=true ;;
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

# Ship the library (and the table schemas) to the executors as one zip.
mkdir -p dist
.venv/bin/python - <<'PY'
import pathlib, zipfile
with zipfile.ZipFile("dist/lookalike.zip", "w", zipfile.ZIP_DEFLATED) as archive:
    for package, root in (("lookalike", pathlib.Path("lib/lookalike")), ("schemas", pathlib.Path("schemas"))):
        for path in sorted(root.rglob("*.py")):
            archive.write(path, f"{package}/{path.relative_to(root)}")
PY

exec .venv/bin/spark-submit \
  "${spark_args[@]}" \
  --jars "$delta_jars" \
  --py-files dist/lookalike.zip \
  --conf "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" \
  --conf "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog" \
  --conf "spark.pyspark.python=$PYSPARK_PYTHON" \
  --driver-java-options "$log_options" \
  "$@"
