"""Kill the nightly refresh at random moments and check that rerunning it ends where a clean run ends.

    .venv/bin/python scripts/fault_injection.py [--kills 20] [--items 300] [--seed 1] [--work DIR] [--report FILE]

What it does, from the repository root:

1. Builds a work folder: ``--items`` real photos (the first N numeric ids) copied from
   ``--source-dir`` with ``labels.csv``, about 5% of them held back as spare photos, a night-1
   catalog and a night-2 catalog (``nightly_changes`` with ``fraction=0.05``).
2. Builds a base store with spark-submit: ingest night-1, train, ``refresh --run-id night-1``.
3. Copies the base store to a clean store and runs ``refresh --run-id night-2`` there
   uninterrupted; its wall time is T.
4. For each of ``--kills`` iterations: copies the base store, starts the same night-2 refresh in
   its own session, SIGKILLs every process of that session (spark-submit, driver JVM, Python
   driver, Python daemon and workers) after a seeded-random time in [1 s, T), sometimes kills
   the first rerun too, then reruns it to completion.
5. In one local Spark session, checks every iteration store against the clean store: published
   catalog (without ``ingested_at``), embeddings and similar_items equal row for row, no
   duplicate keys, the same publications, no staging left behind.

Prints a table and a final line; ``--report`` writes the same as JSON. Exits 1 if any
iteration fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("..") / "shared" / "data" / "fashion-products"  # relative to the repository root
NIGHT1, NIGHT2 = "night-1", "night-2"
CHANGE_FRACTION = 0.05
MAX_TRIES = 3  # fresh starts allowed for a first kill whose run ended before it

# Lines that lookalike.runs.StageTimer and lookalike.publish log in the driver's stderr.
_STAGE_STARTED = re.compile(r"lookalike\.runs: stage (\w+): started")
_STAGE_ENDED = re.compile(r"lookalike\.runs: stage (\w+): [0-9.]+ s")
_POINTER_COMMITTED = re.compile(r"lookalike\.publish: published run (\S+)")
_ALREADY_PUBLISHED = re.compile(r"is already published with this input")


@dataclass
class WorkLayout:
    """Paths of one fault-injection work folder."""

    root: Path
    photos: Path
    night1: Path
    night2: Path
    logs: Path
    stores: Path

    @property
    def base(self) -> Path:
        """Store holding night-1, copied before every night-2 attempt."""
        return self.stores / "base"

    @property
    def clean(self) -> Path:
        """Store where night-2 ran uninterrupted."""
        return self.stores / "clean"

    def iteration(self, number: int) -> Path:
        """Store of one kill iteration."""
        return self.stores / f"iter-{number:02d}"


@dataclass
class Attempt:
    """One start of the night-2 refresh that was (meant to be) killed."""

    kill_at_s: float
    killed: bool
    stage: str
    log: str
    tries: int = 1


@dataclass
class Iteration:
    """What happened in one iteration, and what the checks found."""

    iteration: int
    kills: list[Attempt] = field(default_factory=list)
    rerun_exit: int | None = None
    rerun_status: str | None = None
    rerun_s: float | None = None
    differences: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    publications: list[str] = field(default_factory=list)
    publications_equal: bool = False
    versions_equal: bool = False
    staging_leftover: list[str] = field(default_factory=list)
    equal: bool = False
    error: str | None = None

    @property
    def duplicate_rows(self) -> int:
        """Duplicate keys found, every table together."""
        return sum(self.duplicates.values())

    @property
    def ok(self) -> bool:
        """The rerun succeeded and left the store as the clean run left it."""
        return (self.rerun_exit == 0 and self.equal and self.duplicate_rows == 0 and self.publications_equal
                and not self.staging_leftover and self.error is None)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="iterations, each killing one night-2 refresh (default 20)")
    parser.add_argument("--items", type=int, default=300, help="photos copied from the source (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill times and of the night-2 changes")
    parser.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE,
                        help="folder with images/<id>.jpg and labels.csv (default, from the repository root: %(default)s)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temp dir, removed on success)")
    parser.add_argument("--report", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--master", default="local[2]", help="spark-submit --master of every job (default %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra setting for every job and the checks, repeatable (e.g. train.autoencoder_epochs=1)")
    parser.add_argument("--second-kill-probability", type=float, default=0.25,
                        help="chance that the first rerun is killed too before the final rerun (default %(default)s)")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds any one job may run (default %(default)s)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.items < 40:
        parser.error("--kills must be >= 0 and --items >= 40 (fewer leaves too few spare photos and classes)")
    return args


def select_photo_ids(source: Path, items: int) -> list[str]:
    """The first ``items`` photo ids of ``source/images`` taken as numbers: the same ids on every machine."""
    ids = sorted((p.stem for p in (source / "images").glob("*.jpg") if p.stem.isdigit()), key=int)
    if len(ids) < items:
        raise SystemExit(f"{source}/images holds {len(ids)} photos with numeric ids, {items} asked for")
    return ids[:items]


def spare_count(items: int) -> int:
    """Photos to hold back for new photos and new items: about 5%, at least what ``nightly_changes`` needs."""
    from lookalike.demo_catalog import CHANGE_KINDS

    spare = max(2, round(CHANGE_FRACTION * items))
    # nightly_changes takes two spare photos per change kind share (new photo, new item).
    while 2 * max(1, int(round(CHANGE_FRACTION * (items - spare) / len(CHANGE_KINDS)))) > spare:
        spare += 1
    return spare


def build_work(work: Path, source: Path, items: int, seed: int) -> tuple[WorkLayout, dict[str, list[str]]]:
    """Copy the photos and write the night-1 and night-2 catalogs.

    Returns
    -------
    (WorkLayout, dict)
        The folder's paths, and the item ids night-2 changes per kind of change.
    """
    from lookalike.config import load_config
    from lookalike.demo_catalog import build_demo_catalog, nightly_changes, read_catalog_csv, write_catalog_csv

    layout = WorkLayout(root=work, photos=work / "photos", night1=work / "night1.csv", night2=work / "night2.csv",
                        logs=work / "logs", stores=work / "stores")
    if layout.stores.exists():
        raise SystemExit(f"{layout.stores} exists: give --work an empty or new folder")
    for folder in (layout.photos / "images", layout.logs, layout.stores):
        folder.mkdir(parents=True, exist_ok=True)
    ids = select_photo_ids(source, items)
    shutil.copy(source / "labels.csv", layout.photos / "labels.csv")
    for item_id in ids:
        shutil.copy(source / "images" / f"{item_id}.jpg", layout.photos / "images" / f"{item_id}.jpg")
    price_seed = int(load_config("test", conf_dir=REPO / "conf")["demo"]["price_seed"])
    build_demo_catalog(layout.photos, work / "all.csv", seed=price_seed, item_ids=ids)
    rows = read_catalog_csv(work / "all.csv")
    spare = spare_count(len(rows))
    # The held-back photos are in the folder but in no night-1 row: night-2 uses them as new photos and items.
    base, spare_uris = rows[:-spare], [r["image_uri"] for r in rows[-spare:]]
    write_catalog_csv(base, layout.night1)
    changed, affected = nightly_changes(base, spare_uris, fraction=CHANGE_FRACTION, seed=seed)
    write_catalog_csv(changed, layout.night2)
    return layout, affected


def job_command(job: str, store: Path, layout: WorkLayout, args: argparse.Namespace, *extra: str) -> list[str]:
    """The spark-submit command line of ``jobs/<job>.py`` against ``store``."""
    settings = [f"storage.root={store}", f"catalog.image_root={layout.photos}", *args.overrides]
    command = ["./spark-submit.sh", "--master", args.master, f"jobs/{job}.py", "--profile", "test"]
    for setting in settings:
        command += ["--set", setting]
    return command + list(extra)


def refresh_command(store: Path, layout: WorkLayout, args: argparse.Namespace) -> list[str]:
    """The night-2 refresh, exactly the same for the clean store and every iteration."""
    return job_command("refresh", store, layout, args, "--catalog", str(layout.night2), "--run-id", NIGHT2)


def job_env() -> dict[str, str]:
    """This environment without PYSPARK_* variables: a parent Spark session's must not leak into a job."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start a job in a session of its own (so every process it starts can be found and killed), output to ``log``."""
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=REPO, env=job_env(), stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def run_to_end(command: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run a job to completion.

    Returns
    -------
    (int, float)
        Exit code (124 on timeout, after killing it) and wall seconds.
    """
    began = time.monotonic()
    process = start(command, log)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process)
        code = 124
    return code, time.monotonic() - began


def session_members(session_id: int) -> list[int]:
    """Pids of every live process in a session.

    PySpark's worker daemon moves itself into a process group of its own, so killing the job's
    process group alone would leave the daemon and its workers running; the session holds them all.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # Fields after "(comm)": state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL every process of the job's session at once, as if the driver machine lost power."""
    for _ in range(50):
        members = session_members(process.pid)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            try:
                process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.05)
    process.wait()


def stage_at_kill(log: Path) -> str:
    """Where a killed refresh was, from the last stage lines of its log.

    Returns
    -------
    str
        ``startup`` (no stage started yet), a stage name (``prepare``, ``ingest``, ``embed``,
        ``index``, ``alternatives``, ``publish``), ``publish (pointer committed)``, ``after <stage>`` (between
        stages; ``after publish`` is the clean-up after the pointer row), or ``already published``.
    """
    text = log.read_text(encoding="utf-8", errors="replace")
    events: list[tuple[str, str]] = []
    for line in text.splitlines():
        if match := _STAGE_STARTED.search(line):
            events.append(("started", match.group(1)))
        elif match := _STAGE_ENDED.search(line):
            events.append(("ended", match.group(1)))
        elif _POINTER_COMMITTED.search(line):
            events.append(("pointer", "publish"))
        elif _ALREADY_PUBLISHED.search(line):
            events.append(("already", ""))
    if not events:
        return "startup"
    kind, stage = events[-1]
    if kind == "started":
        return stage
    if kind == "pointer":
        return "publish (pointer committed)"
    if kind == "already":
        return "already published"
    return f"after {stage}"


def attempt_with_kill(command: list[str], log: Path, kill_at: float) -> Attempt:
    """Start the refresh and kill its whole session ``kill_at`` seconds later (unless it ended before)."""
    began = time.monotonic()
    process = start(command, log)
    try:
        process.wait(timeout=kill_at)
        killed = False  # it finished first
    except subprocess.TimeoutExpired:
        kill_session(process)
        killed = True
    elapsed = time.monotonic() - began
    stage = stage_at_kill(log) if killed else f"ended first (exit {process.returncode})"
    return Attempt(kill_at_s=round(elapsed if not killed else kill_at, 1), killed=killed, stage=stage, log=log.name)


def refresh_status(log: Path) -> str | None:
    """The ``status`` the refresh job printed (``published`` / ``already published``), if any."""
    match = re.search(r'"status": "([^"]+)"', log.read_text(encoding="utf-8", errors="replace"))
    return match.group(1) if match else None


def run_base(layout: WorkLayout, args: argparse.Namespace) -> None:
    """Ingest night-1, train, publish night-1 in the base store; stop on any failure."""
    steps = [
        ("ingest", ["--catalog", str(layout.night1), "--run-id", "base-ingest"]),
        ("train", ["--run-id", "base-train"]),
        ("refresh", ["--catalog", str(layout.night1), "--run-id", NIGHT1]),
    ]
    for job, extra in steps:
        log = layout.logs / f"base-{job}.log"
        code, seconds = run_to_end(job_command(job, layout.base, layout, args, *extra), log, args.job_timeout)
        progress(f"base {job}: exit {code} in {seconds:.0f} s")
        if code != 0:
            raise SystemExit(f"base {job} failed (exit {code}); see {log}")


def code_fingerprint() -> str:
    """SHA-256 of the library, schemas and jobs that spark-submit.sh ships: tells whether they changed mid-run."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("lib/lookalike/*.py"), *REPO.glob("schemas/*.py"), *REPO.glob("jobs/*.py")]):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def progress(message: str) -> None:
    """One progress line on stderr, so stdout keeps only the table."""
    print(f"[fault-injection {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_iteration(number: int, layout: WorkLayout, args: argparse.Namespace, clean_s: float,
                  rng: random.Random) -> Iteration:
    """Copy the base store, kill night-2 once (sometimes twice), rerun it to the end.

    The kill moment is a seeded fraction of the clean run's time T. The machine's load changes,
    so a run can end before its kill: the first kill is then retried on a fresh copy of the base
    store, at the same fraction of the time that run took (at most ``MAX_TRIES`` starts).
    """
    store = layout.iteration(number)
    command = refresh_command(store, layout, args)
    result = Iteration(iteration=number)
    # Draw every random number up front, so an iteration's kill times do not depend on earlier outcomes.
    fractions = [rng.random(), rng.random()]
    second = rng.random() < args.second_kill_probability
    limit = clean_s
    for tries in range(1, MAX_TRIES + 1):
        if store.exists():
            shutil.rmtree(store)
        shutil.copytree(layout.base, store)
        first = attempt_with_kill(command, layout.logs / f"iter-{number:02d}-kill1.log", 1.0 + fractions[0] * (limit - 1.0))
        first.tries = tries
        if first.killed:
            break
        progress(f"iteration {number}: the refresh ended after {first.kill_at_s:.1f} s, before its kill; retrying")
        limit = max(first.kill_at_s, 2.0)
    result.kills.append(first)
    progress(f"iteration {number}: attempt 1 at {first.kill_at_s:.1f} s -> {first.stage}")
    if second:
        # Killing the first rerun too: a resume that is itself interrupted must resume again.
        again = attempt_with_kill(command, layout.logs / f"iter-{number:02d}-kill2.log", 1.0 + fractions[1] * (clean_s - 1.0))
        result.kills.append(again)
        progress(f"iteration {number}: attempt 2 at {again.kill_at_s:.1f} s -> {again.stage}")
    log = layout.logs / f"iter-{number:02d}-rerun.log"
    result.rerun_exit, seconds = run_to_end(command, log, args.job_timeout)
    result.rerun_s = round(seconds, 1)
    result.rerun_status = refresh_status(log)
    progress(f"iteration {number}: rerun exit {result.rerun_exit} ({result.rerun_status}) in {seconds:.0f} s")
    return result


def verify(layout: WorkLayout, iterations: list[Iteration], args: argparse.Namespace) -> dict[str, Any]:
    """Compare every iteration store with the clean store, in one local Spark session.

    Fills in each iteration's ``differences``, ``duplicates``, ``publications``, ``staging_leftover``
    and ``equal``.

    Returns
    -------
    dict
        The clean store's own checks (duplicates, publications, staging leftovers).
    """
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F

    from lookalike.config import load_config
    from lookalike.publish import published_snapshot
    from lookalike.session import build_spark
    from lookalike.tables import read_table
    from schemas import QUARANTINE, REFRESH_RUNS, RUNS

    def config_of(store: Path) -> dict[str, Any]:
        return load_config("test", [f"storage.root={store}", f"catalog.image_root={layout.photos}", *args.overrides,
                                    f"spark.spark.sql.warehouse.dir={layout.root / 'verify-warehouse'}"],
                           conf_dir=REPO / "conf")

    def count_duplicates(frame: DataFrame, keys: list[str]) -> int:
        """Rows beyond the first of each key."""
        return int(frame.groupBy(*keys).count().where("count > 1").agg(F.sum(F.col("count") - 1)).first()[0] or 0)

    def published(spark: SparkSession, store: Path) -> tuple[Any, dict[str, DataFrame]]:
        publication, tables = published_snapshot(spark, config_of(store))
        tables["catalog"] = tables["catalog"].drop("ingested_at")  # the time of the write, differs by design
        return publication, tables

    def store_checks(spark: SparkSession, store: Path) -> tuple[dict[str, Any], dict[str, DataFrame]]:
        config = config_of(store)
        _, tables = published(spark, store)
        duplicates = {
            "catalog.item_id": count_duplicates(tables["catalog"], ["item_id"]),
            "embeddings.item_id": count_duplicates(tables["embeddings"], ["item_id"]),
            "similar_items.item_id_rank": count_duplicates(tables["similar_items"], ["item_id", "rank"]),
            "quarantine": count_duplicates(read_table(spark, config, QUARANTINE), ["run_id", "stage", "item_id", "reason"]),
            "refresh_runs.run_id": count_duplicates(read_table(spark, config, REFRESH_RUNS), ["run_id"]),
            "runs.run_id_job": count_duplicates(read_table(spark, config, RUNS), ["run_id", "job"]),
        }
        pointer = spark.read.format("delta").load(f"{store}/tables/publications").orderBy("run_seq")
        rows = pointer.select("run_id", "catalog_version", "embeddings_version", "similar_items_version").collect()
        staging = store / "staging"
        checks = {
            "duplicates": duplicates,
            "publications": [r["run_id"] for r in rows],
            "versions": [tuple(r) for r in rows],
            "staging_leftover": sorted(p.name for p in staging.iterdir()) if staging.is_dir() else [],
        }
        return checks, tables

    spark = build_spark("lookalike-fault-injection-verify", config_of(layout.clean), master="local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        clean, expected = store_checks(spark, layout.clean)
        for name in expected:
            expected[name] = expected[name].cache()
        for item in iterations:
            try:
                checks, actual = store_checks(spark, layout.iteration(item.iteration))
                # Exact equality both ways, duplicates counted: exceptAll keeps multiplicity.
                item.differences = {
                    name: actual[name].exceptAll(expected[name]).count() + expected[name].exceptAll(actual[name]).count()
                    for name in expected
                }
                item.duplicates = checks["duplicates"]
                item.publications = checks["publications"]
                item.publications_equal = checks["publications"] == clean["publications"]
                item.versions_equal = checks["versions"] == clean["versions"]
                item.staging_leftover = checks["staging_leftover"]
                item.equal = not any(item.differences.values())
            except Exception as error:  # a store too broken to read is a failed iteration, not a crashed script
                item.error = f"{type(error).__name__}: {str(error)[:500]}"
            progress(f"verified iteration {item.iteration}: equal={item.equal} duplicates={item.duplicate_rows} "
                     f"publications={item.publications} staging={item.staging_leftover}")
    finally:
        spark.stop()
    return {key: value for key, value in clean.items() if key != "versions"}


def table(iterations: list[Iteration]) -> str:
    """The per-iteration table printed at the end."""
    header = f"{'iter':>4}  {'kill s':>6}  {'stage killed in':<28}  {'2nd kill':<26}  {'rerun':>5}  {'status':<18}  {'equal':<5}  {'dups':>4}  {'ok':<3}"
    lines = [header, "-" * len(header)]
    for item in iterations:
        first = item.kills[0]
        stage = first.stage + (f" (start {first.tries})" if first.tries > 1 else "")
        second = f"{item.kills[1].kill_at_s:.1f} s {item.kills[1].stage}" if len(item.kills) > 1 else "-"
        lines.append(
            f"{item.iteration:>4}  {first.kill_at_s:>6.1f}  {stage:<28}  {second:<26}  "
            f"{item.rerun_exit if item.rerun_exit is not None else '-':>5}  {item.rerun_status or '-':<18}  "
            f"{'yes' if item.equal else 'no':<5}  {item.duplicate_rows:>4}  {'yes' if item.ok else 'NO':<3}"
        )
    return "\n".join(lines)


def summary_line(iterations: list[Iteration]) -> str:
    """``fault injection: K kills, E reruns equal to the clean run, D with duplicates``."""
    kills = sum(1 for item in iterations for attempt in item.kills if attempt.killed)
    second = sum(1 for item in iterations if len(item.kills) > 1 and item.kills[1].killed)
    equal = sum(1 for item in iterations if item.ok)
    duplicated = sum(1 for item in iterations if item.duplicate_rows)
    extra = f" (of which {second} killed the first rerun)" if second else ""
    return (f"fault injection: {kills} kills{extra} in {len(iterations)} iterations, "
            f"{equal} reruns equal to the clean run, {duplicated} with duplicates")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fault injection; 0 when every iteration ends equal to the clean run."""
    args = parse_args(argv)
    source = args.source_dir if args.source_dir.is_absolute() else REPO / args.source_dir
    if not (source / "labels.csv").is_file():
        print(f"no labels.csv in {source}", file=sys.stderr)
        return 2
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="fault-injection-")) if temporary else args.work.resolve()
    began = time.monotonic()
    # spark-submit.sh zips lib/ at every start: an edit during the run would compare different code.
    code_at_start = code_fingerprint()
    layout, affected = build_work(work, source, args.items, args.seed)
    progress(f"work folder {work}: {args.items} photos, night-2 changes {({k: len(v) for k, v in affected.items()})}")

    run_base(layout, args)
    shutil.copytree(layout.base, layout.clean)
    code, clean_s = run_to_end(refresh_command(layout.clean, layout, args), layout.logs / "clean-night-2.log", args.job_timeout)
    progress(f"clean night-2 refresh: exit {code} in {clean_s:.1f} s")
    if code != 0:
        print(f"the uninterrupted night-2 refresh failed (exit {code}); see {layout.logs / 'clean-night-2.log'}", file=sys.stderr)
        return 1

    rng = random.Random(args.seed)
    iterations = [run_iteration(n, layout, args, clean_s, rng) for n in range(1, args.kills + 1)]
    clean_checks = verify(layout, iterations, args)
    clean_ok = (not any(clean_checks["duplicates"].values()) and clean_checks["publications"] == [NIGHT1, NIGHT2]
                and not clean_checks["staging_leftover"])

    print(table(iterations))
    line = summary_line(iterations)
    print(line)
    if not clean_ok:
        print(f"the clean store itself fails the checks: {clean_checks}", file=sys.stderr)
    code_changed = code_fingerprint() != code_at_start
    if code_changed:
        print("warning: lib/, schemas/ or jobs/ changed during the run; iterations may have run different code",
              file=sys.stderr)
    passed = clean_ok and all(item.ok for item in iterations)
    report = {
        "settings": {"kills": args.kills, "items": args.items, "seed": args.seed, "master": args.master,
                     "overrides": args.overrides, "second_kill_probability": args.second_kill_probability},
        "work": str(work),
        "night2_changes": {k: len(v) for k, v in affected.items()},
        "code_sha256": code_at_start,
        "code_changed_during_run": code_changed,
        "clean_seconds": round(clean_s, 1),
        "clean_checks": clean_checks,
        "iterations": [{**asdict(item), "duplicate_rows": item.duplicate_rows, "ok": item.ok} for item in iterations],
        "summary": line,
        "passed": passed,
        "total_seconds": round(time.monotonic() - began, 1),
    }
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if temporary and passed:
        shutil.rmtree(work, ignore_errors=True)
    elif not passed:
        print(f"logs and stores kept in {work}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
