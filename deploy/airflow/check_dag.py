"""Load the nightly DAG with Airflow and print the spark-submit command it would run for one night.

    AIRFLOW_CONN_SPARK_DEFAULT='spark://spark-master:7077?deploy-mode=client' \\
    LOOKALIKE_HOME=/opt/lookalike python deploy/airflow/check_dag.py [--night 2026-11-22]

Needs ``apache-airflow`` and ``apache-airflow-providers-apache-spark`` (not dependencies of the
job: install them where Airflow runs). Exits 1 if the DAG folder has import errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from airflow.models import DagBag
from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--night", default="2026-11-22", help="the date {{ ds }} stands for")
    night = parser.parse_args().night
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent / "lookalike_nightly.py"))
    if bag.import_errors:
        print(f"import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    dag = bag.dags["lookalike_nightly"]
    refresh = dag.get_task("refresh")
    order = "; ".join(f"{t.task_id} after {sorted(t.upstream_task_ids) or 'nothing'}" for t in dag.tasks)
    print(f"tasks: {order}; max_active_runs {dag.max_active_runs}; schedule {dag.timetable}")
    hook = SparkSubmitHook(
        conf=refresh.conf, conn_id=refresh._conn_id, files=refresh.files, py_files=refresh.py_files, jars=refresh.jars,
        name=refresh.name.replace("{{ ds }}", night),
        application_args=[a.replace("{{ ds }}", night) for a in refresh.application_args],
    )
    print(" ".join(hook._build_spark_submit_command(refresh.application)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
