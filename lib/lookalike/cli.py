"""What every job entry point shares: arguments, logging, configuration and the session."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from pyspark.sql import SparkSession

from lookalike.config import load_config
from lookalike.runs import new_run_id
from lookalike.session import build_spark


def job_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every job takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", default="local", help="configuration profile: conf/<profile>.toml (default: local)")
    parser.add_argument("--conf-dir", default="conf", help="folder holding defaults.toml and the profiles")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting, repeatable, e.g. --set index.k=10 --set spark.spark.sql.shuffle.partitions=16",
    )
    parser.add_argument("--run-id", default=None, help="id recorded on every row written (default: new)")
    return parser


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines with time, level and module to stderr; quiet the chatty libraries."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)


def start_job(job: str, args: argparse.Namespace) -> tuple[SparkSession, dict[str, Any], str]:
    """Configure logging, load the configuration and build the session.

    Returns
    -------
    (SparkSession, dict, str)
        The session, the merged configuration and the run id.
    """
    setup_logging()
    config = load_config(args.profile, args.overrides, conf_dir=args.conf_dir)
    spark = build_spark(f"lookalike-{job}", config)
    spark.sparkContext.setLogLevel("WARN")
    return spark, config, args.run_id or new_run_id()
