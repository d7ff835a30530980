"""The one place a SparkSession is built: Delta Lake on, settings from the job configuration."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from pyspark.sql import SparkSession

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
    builder = (
        builder.config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    )
    for key, value in config.get("spark", {}).items():
        builder = builder.config(key, str(value))
    # Under spark-submit (which sets the gateway port) spark-submit.sh has passed --jars already.
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.config("spark.jars", ",".join(delta_jars()))
    return builder.getOrCreate()
