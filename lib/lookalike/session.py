"""The one place a SparkSession is built: Delta Lake on, settings from the job configuration."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

T = TypeVar("T")

# Set up by scripts/setup.sh (mvn); spark-submit.sh passes the same jars with --jars.
JARS_DIR_ENV = "LOOKALIKE_JARS_DIR"
_REPO_JARS_DIR = Path(__file__).resolve().parents[2] / ".jars"


def delta_jars(jars_dir: Path | None = None) -> list[str]:
    """Paths of the Delta Lake jars fetched at set-up.

    Raises
    ------
    FileNotFoundError
        If set-up has not fetched them; nothing is downloaded at run time.
    """
    folder = Path(jars_dir or os.environ.get(JARS_DIR_ENV) or _REPO_JARS_DIR)
    jars = sorted(str(p) for p in folder.glob("delta-*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise FileNotFoundError(f"no Delta jars in {folder}: run scripts/setup.sh first")
    return jars


def metastore_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """Spark settings for the SQL catalog that ``storage.metastore`` names.

    ``in-memory``: tables are registered for the session only (jobs register them on start).
    ``derby``: a Hive metastore in an embedded Derby database under ``storage.root``, so that
    ``spark-sql.sh`` and later sessions on this machine see the registered tables. Derby allows
    one process at a time. On a cluster, point Spark at the cluster's own metastore instead.
    """
    from lookalike.tables import has_scheme, storage_root

    kind = str(config.get("storage", {}).get("metastore", "in-memory"))
    root = storage_root(config)
    # Managed tables and databases under storage.root, not in the working directory.
    settings = {"spark.sql.warehouse.dir": f"{root}/warehouse"}
    if kind == "in-memory":
        return settings
    if kind != "derby":
        raise ValueError(f"storage.metastore must be 'in-memory' or 'derby', not {kind!r}")
    if has_scheme(root):
        raise ValueError("storage.metastore = 'derby' needs a local storage.root")
    settings["spark.sql.catalogImplementation"] = "hive"
    settings["spark.hadoop.javax.jdo.option.ConnectionURL"] = f"jdbc:derby:;databaseName={root}/metastore_db;create=true"
    return settings


def session_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """Every Spark setting a lookalike session gets: Delta, the metastore, then the ``spark`` section."""
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        **metastore_settings(config),
    }
    settings.update({key: str(value) for key, value in config.get("spark", {}).items()})
    return settings


def build_spark(app_name: str, config: Mapping[str, Any], *, master: str | None = None) -> SparkSession:
    """Build (or reuse) the SparkSession for a job.

    Parameters
    ----------
    app_name : str
        Spark application name.
    config : mapping
        Job configuration; its ``spark`` section is applied as Spark settings.
    master : str, optional
        Only for embedded use (tests, notebooks). Jobs leave it unset: spark-submit sets it.

    Returns
    -------
    SparkSession
        With the Delta SQL extension and catalog enabled.
    """
    # Python workers must run this interpreter, which has the pinned packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # pandas-on-Spark (imported by Petastorm) asks for this on driver and executors.
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in session_settings(config).items():
        builder = builder.config(key, value)
    # Under spark-submit (which sets the gateway port) spark-submit.sh has passed --jars already.
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.config("spark.jars", ",".join(delta_jars()))
    return builder.getOrCreate()


# Per-write session settings (lookalike.tables.idempotent_writes, publish._run_commit): never inherited.
_WRITE_SETTINGS = (
    "spark.databricks.delta.write.txnAppId",
    "spark.databricks.delta.write.txnVersion",
    "spark.databricks.delta.commitInfo.userMetadata",
)


def child_session(spark: SparkSession) -> SparkSession:
    """A new session on ``spark``'s context with its SQL settings: own settings, shared cache, UDFs and catalog.

    Delta reads a write's idempotency keys and commit metadata from the session's settings, so two
    writes running at once each need a session of their own.
    """
    child = spark.newSession()
    for key, value in spark.conf.getAll.items():
        if key.startswith(("spark.sql.", "spark.databricks.")) and key not in _WRITE_SETTINGS and spark.conf.isModifiable(key):
            child.conf.set(key, value)
    return child


def _unchanged(task: Callable[..., T]) -> Callable[..., T]:
    return task


def run_concurrently(
    spark: SparkSession, tasks: Mapping[str, Callable[[SparkSession], T]], *, max_workers: int = 4
) -> dict[str, T]:
    """Run independent tasks at once, each in its own thread and ``child_session``; return their results by name.

    The driver plans, commits and replays Delta logs for one task while the executors run
    another's Spark jobs. Every task runs to its end; then the first failure, if any, is raised.

    Parameters
    ----------
    tasks : Mapping[str, Callable[[SparkSession], T]]
        Each is called with its own session; they must not write the same table.
    max_workers : int
        Tasks running at once.

    Returns
    -------
    dict
        Each task's result, under its name.
    """
    if len(tasks) <= 1:
        return {name: task(spark) for name, task in tasks.items()}
    sessions = {name: child_session(spark) for name in tasks}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(tasks)), thread_name_prefix="lookalike") as pool:
        # The threads' Spark jobs keep the caller's job group, local properties and session tags.
        inherit = inheritable_thread_target(spark)
        if isinstance(inherit, SparkSession):  # PYSPARK_PIN_THREAD=false: PySpark hands the session back, nothing to carry over
            inherit = _unchanged
        futures = {name: pool.submit(inherit(task), sessions[name]) for name, task in tasks.items()}
    failures = [f.exception() for f in futures.values() if f.exception() is not None]
    if failures:
        raise failures[0]
    return {name: future.result() for name, future in futures.items()}


def _print_submit_conf() -> None:
    """Print ``--conf key=value`` lines for spark-sql.sh: ``python -m lookalike.session PROFILE [OVERRIDE ...]``."""
    from lookalike.config import load_config

    profile = sys.argv[1] if len(sys.argv) > 1 else "local"
    for key, value in session_settings(load_config(profile, sys.argv[2:])).items():
        print("--conf")
        print(f"{key}={value}")


if __name__ == "__main__":
    _print_submit_conf()
