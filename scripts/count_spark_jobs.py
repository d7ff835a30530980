"""Count the Spark jobs and SQL executions of each stage of the last refresh in a driver log.

    ./spark-submit.sh --conf spark.eventLog.enabled=true --conf spark.eventLog.dir=file:/tmp/events \\
        --conf spark.eventLog.compress=false benchmarks/refresh_vs_full.py --models-from lookalike-data/models > refresh.log 2>&1
    .venv/bin/python scripts/count_spark_jobs.py /tmp/events/<application folder or file> refresh.log

The stage boundaries are the ``lookalike.runs: stage ...`` lines of the driver log (the last
refresh in it: in the benchmark, the incremental one); the jobs and SQL executions are read from
Spark's event log (uncompressed; a rolling log folder's ``events_*`` files are read in order).
Per stage it also prints the summed run time and task count of the Spark stages submitted in it
(they overlap, so the sum can exceed the wall time; far below it, the driver is the bottleneck).
``--top N`` also lists the N longest SQL executions of the refresh with their stage and call site.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

# "stage embed: started", "stage prepare: 7.7 s", "stage embed: 24 photos in 10.7 s (2.2 photos/s)"
_STAGE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*lookalike\.runs: stage (\w+): (started|(?:\d+ \w+ in )?[\d.]+ s\b)")
_STAGES_PER_REFRESH = 6  # prepare, ingest, embed, index, alternatives, publish


def stage_windows(log: Path) -> list[tuple[str, float, float]]:
    """(stage, start ms, end ms) of the last refresh's stages in a driver log (times in UTC)."""
    marks = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _STAGE.match(line)
        if match:
            moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc)
            marks.append((match.group(2), match.group(3), moment.timestamp() * 1000))
    marks = marks[-2 * _STAGES_PER_REFRESH:]
    return [(name, start, end) for (name, _, start), (_, _, end) in zip(marks[::2], marks[1::2], strict=True)]


def event_files(path: Path) -> list[Path]:
    """One event log file, or a rolling log folder's ``events_<n>_*`` files in order."""
    if path.is_file():
        return [path]
    return sorted(path.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))


def events(path: Path) -> Iterator[dict[str, Any]]:
    """Every event of an uncompressed Spark event log (one file, or a rolling log folder), in order."""
    for file in event_files(path):
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                yield json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("event_log", type=Path)
    parser.add_argument("driver_log", type=Path)
    parser.add_argument("--top", type=int, default=0, help="list the N longest SQL executions")
    args = parser.parse_args()
    jobs, executions, ended, spark_stages = [], {}, {}, []
    for event in events(args.event_log):
        if event["Event"] == "SparkListenerJobStart":
            jobs.append(event["Submission Time"])
        elif event["Event"] == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            spark_stages.append((info["Submission Time"], info["Completion Time"] - info["Submission Time"],
                                 info["Number of Tasks"]))
        elif event["Event"].endswith("SparkListenerSQLExecutionStart"):
            executions[event["executionId"]] = (event["time"], event.get("description", ""), event.get("details", ""))
        elif event["Event"].endswith("SparkListenerSQLExecutionEnd"):
            ended[event["executionId"]] = event["time"]
    total_jobs = total_sql = 0
    longest = []
    for name, start, end in stage_windows(args.driver_log):
        n_jobs = sum(start <= t <= end for t in jobs)
        in_stage = [(i, e) for i, e in executions.items() if start <= e[0] <= end]
        ran = [(ms, tasks) for submitted, ms, tasks in spark_stages if start <= submitted <= end]
        total_jobs, total_sql = total_jobs + n_jobs, total_sql + len(in_stage)
        print(f"{name:<8} {(end - start) / 1000:6.1f} s  {n_jobs:4d} jobs  {len(in_stage):4d} SQL executions  "
              f"Spark stages {len(ran):3d}, {sum(ms for ms, _ in ran) / 1000:5.1f} s summed, "
              f"{sum(tasks for _, tasks in ran):4d} tasks")
        longest += [((ended.get(i, t) - t) / 1000, name, description, _call_site(details))
                    for i, (t, description, details) in in_stage]
    print(f"{'total':<8} {'':8}  {total_jobs:4d} jobs  {total_sql:4d} SQL executions")
    for seconds, stage, description, site in sorted(longest, reverse=True)[: args.top]:
        print(f"{seconds:6.2f} s  {stage:<8} {site:<45} {description[:70]}")


def _call_site(details: str) -> str:
    """The first ``lookalike`` frame of an execution's call site, else its first line."""
    lines = [line.strip() for line in details.splitlines() if line.strip()]
    ours = [line for line in lines if "lookalike" in line]
    return (ours or lines or [""])[0][-45:]


if __name__ == "__main__":
    main()
