"""Airflow DAG: the nightly look-alike refresh, one run per night, the night's date as run id.

Install on the Airflow workers: ``apache-airflow-providers-apache-spark``, and a checkout of this
repository at ``LOOKALIKE_HOME`` with ``make setup`` run (it fetches the Delta jars into
``.jars/`` and creates ``.venv``), with ``$LOOKALIKE_HOME/.venv/bin`` on the workers' PATH so
that ``spark-submit`` is the project's (or a cluster's Spark of the same version). The Spark
connection (``spark_default``) names the master, deploy mode and queue or namespace: YARN,
Kubernetes or a standalone master, as in docs/CLUSTER.md. Tonight's catalog export is
``LOOKALIKE_CATALOG`` with ``{{ ds }}`` in it. ``deploy/airflow/check_dag.py`` loads the DAG and
prints the spark-submit command it would run.

Why these settings:

- ``max_active_runs=1``: nights run one after the other; a run id that is still half-published
  makes any other run id fail (``RunConflict``) until it is rerun.
- ``retries``: a retry is the same run id on the same input, so it resumes the killed run and
  repeats nothing it had committed. A run id reused with different input fails again (exit 2):
  change the input back or use a new run id.
- ``package_library`` rebuilds ``dist/lookalike.zip`` from the checkout, the archive every
  executor imports the library from.
- After the refresh, three jobs read what it published: ``clusters`` (item_clusters),
  ``recommend`` (tonight's interactions export ``LOOKALIKE_INTERACTIONS`` -> interactions ->
  user_recommendations) and ``report`` (the HTML report). Each reads the publication pointer,
  so each sees the run the refresh published, and each replaces its own tables in one commit.
"""

from __future__ import annotations

import glob
import os
from datetime import datetime, timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator

LOOKALIKE_HOME = os.environ.get("LOOKALIKE_HOME", "/opt/lookalike")
CATALOG = os.environ.get("LOOKALIKE_CATALOG", "s3a://retailer-exports/catalog/{{ ds }}.parquet")
INTERACTIONS = os.environ.get("LOOKALIKE_INTERACTIONS", "s3a://retailer-exports/interactions/{{ ds }}.parquet")
PROFILE = os.environ.get("LOOKALIKE_PROFILE", "cluster")


def lookalike_job(job: str, *args: str) -> SparkSubmitOperator:
    """A spark-submit of ``jobs/<job>.py`` with the library, the conf files and the Delta jars."""
    return SparkSubmitOperator(
        task_id=job,
        conn_id="spark_default",
        name=f"lookalike-{job}-{{{{ ds }}}}",
        application=f"{LOOKALIKE_HOME}/jobs/{job}.py",
        py_files=f"{LOOKALIKE_HOME}/dist/lookalike.zip",
        files=",".join(sorted(glob.glob(f"{LOOKALIKE_HOME}/conf/*.toml"))),
        jars=",".join(sorted(glob.glob(f"{LOOKALIKE_HOME}/.jars/*.jar"))),
        conf={
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            # The project's interpreter, at the same path on every node (or ship one: docs/CLUSTER.md).
            "spark.pyspark.python": f"{LOOKALIKE_HOME}/.venv/bin/python",
        },
        application_args=["--profile", PROFILE, "--conf-dir", f"{LOOKALIKE_HOME}/conf", *args],
    )


with DAG(
    dag_id="lookalike_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["lookalike"],
) as dag:
    package_library = BashOperator(
        task_id="package_library",
        bash_command=f"cd {LOOKALIKE_HOME} && .venv/bin/python scripts/package_lib.py --out dist/lookalike.zip",
    )
    refresh = lookalike_job("refresh", "--catalog", CATALOG, "--run-id", "{{ ds }}")
    clusters = lookalike_job("clusters", "--run-id", "clusters-{{ ds }}")
    recommend = lookalike_job("recommend", "--interactions", INTERACTIONS, "--run-id", "recommend-{{ ds }}")
    report = lookalike_job("report", "--run-id", "report-{{ ds }}")
    package_library >> refresh >> [clusters, recommend]
    clusters >> report
