"""A Spark standalone cluster on this machine, from the Master and Worker classes that ship with PySpark.

One master on 127.0.0.1 and one worker per loopback address (127.0.0.2, 127.0.0.3, ...), so Spark
sees separate "hosts" (speculation and locality treat them as different machines). Used by
``scripts/cluster_check.py`` and ``scripts/embedding_faults.py``; also from the command line:

    .venv/bin/python scripts/standalone_cluster.py --work /tmp/cluster [--port 7077]   # until Ctrl-C or SIGTERM
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HOSTS = ("127.0.0.2", "127.0.0.3")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, CPU seconds) for every process, read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
        table[int(entry)] = (int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return table


def descendants(table: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    """Every process below ``root`` in the process tree ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def python_workers(root: int) -> dict[int, float]:
    """PySpark Python workers (children of a ``pyspark.daemon``) below process ``root``: pid -> CPU seconds."""
    table = processes()
    return {
        pid: cpu for pid in descendants(table, root)
        for parent, _, cpu in [table[pid]]
        if parent in table and "pyspark.daemon" in table[parent][1]
    }


@dataclass
class Cluster:
    """The master's URL, the processes of a running cluster, and how its workers are started."""

    url: str
    logs: Path
    work: Path
    hosts: tuple[str, ...]
    cores: int
    memory: str
    env: dict[str, str]
    spark_class: str
    master: subprocess.Popen | None = None
    workers: list[subprocess.Popen | None] = field(default_factory=list)  # None: killed and not restarted

    def launch(self, arguments: list[str], log: Path) -> subprocess.Popen:
        """Start ``spark-class`` with ``arguments``, output appended to ``log``."""
        with open(log, "ab") as handle:
            return subprocess.Popen([self.spark_class, *arguments], env=self.env, stdout=handle,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_for(log: Path, text: str, timeout: float, process: subprocess.Popen) -> None:
    """Wait until ``log`` contains ``text``; fail if ``process`` exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: process exited ({process.returncode}) before '{text}'")
        time.sleep(0.5)
    raise TimeoutError(f"{log.name}: no '{text}' after {timeout:.0f} s")


def start_cluster(
    work: Path, *, port: int = 7077, hosts: tuple[str, ...] = HOSTS, cores: int = 1, memory: str = "2g",
    python: str = sys.executable,
) -> Cluster:
    """Start a master on 127.0.0.1:``port`` and one worker per address in ``hosts``; return once all registered.

    Logs go to ``work/logs``; executors run in ``work/workers``. ``python`` is what PySpark workers run.
    """
    import pyspark

    home = Path(pyspark.__file__).parent
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": python, "SPARK_LOG_DIR": str(logs),
           "SPARK_WORKER_DIR": str(work / "workers")}
    cluster = Cluster(url=f"spark://127.0.0.1:{port}", logs=logs, work=work, hosts=hosts, cores=cores, memory=memory,
                      env=env, spark_class=str(home / "bin" / "spark-class"), workers=[None] * len(hosts))
    cluster.master = cluster.launch(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                                     "--webui-port", "0"], logs / "master.log")
    try:
        _wait_for(logs / "master.log", "I have been elected leader", 60, cluster.master)
        for number in range(len(hosts)):
            start_worker(cluster, number)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def start_worker(cluster: Cluster, number: int) -> None:
    """Start worker ``number`` (again, after ``kill_worker``) and wait until the master has registered it."""
    log = cluster.logs / f"worker-{number}.log"
    marker = "Successfully registered with master"
    seen = log.read_text(errors="replace").count(marker) if log.is_file() else 0
    worker = cluster.launch(
        ["org.apache.spark.deploy.worker.Worker", "--host", cluster.hosts[number], "--cores", str(cluster.cores),
         "--memory", cluster.memory, "--webui-port", "0", "--work-dir", str(cluster.work / "workers"), cluster.url],
        log,
    )
    cluster.workers[number] = worker
    deadline = time.monotonic() + 60
    while (log.read_text(errors="replace").count(marker) if log.is_file() else 0) <= seen:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker {number} did not register with {cluster.url}; see {log}")
        time.sleep(0.5)


def kill_worker(cluster: Cluster, number: int) -> list[int]:
    """SIGKILL worker ``number`` with its executors and their Python workers at once, as if its machine died.

    Returns
    -------
    list of int
        The pids killed.
    """
    worker = cluster.workers[number]
    if worker is None:
        raise ValueError(f"worker {number} is not running")
    victims = sorted(descendants(processes(), worker.pid) | {worker.pid})
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait()
    cluster.workers[number] = None
    return victims


def stop_cluster(cluster: Cluster) -> None:
    """Kill the workers, then the master, and everything they started."""
    table = processes()
    for process in [*reversed(cluster.workers), cluster.master]:
        if process is None:
            continue
        for pid in descendants(table, process.pid) | {process.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def main() -> None:
    """Run a cluster until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for logs and executor work dirs")
    parser.add_argument("--port", type=int, default=7077)
    parser.add_argument("--memory", default="3g", help="memory each worker offers its executors")
    args = parser.parse_args()
    # SIGTERM too: a shell starts background jobs with SIGINT ignored, so `kill <pid>` must stop the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cluster = start_cluster(args.work, port=args.port, memory=args.memory)
    print(f"cluster up: {cluster.url} (workers on {', '.join(HOSTS)}); Ctrl-C or SIGTERM stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop_cluster(cluster)


if __name__ == "__main__":
    main()
