"""spark-submit.sh runs a job in its own JVM with the Delta jars, the zipped library and the conf."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from schemas import ALL_TABLES

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_submitted_publish_job_creates_and_registers_every_table(tmp_path: Path):
    """publish through spark-submit.sh (local[1]) creates every Delta table and lists them."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    result = subprocess.run(
        ["./spark-submit.sh", "--master", "local[1]", "jobs/publish.py", "--profile", "test", "--set", f"storage.root={store}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if line.startswith("`lookalike`.")]
    assert printed == [
        f"`lookalike`.`{table.name}`" for table in ALL_TABLES
    ]
    for name in (table.name for table in ALL_TABLES):
        assert (store / "tables" / name / "_delta_log" / "00000000000000000000.json").is_file()
    shipped = re.search(r"dist/lookalike-[0-9a-f]{16}\.zip", " ".join(submit_command("jobs/publish.py")))
    assert shipped and (REPO / shipped.group()).is_file()


def test_spark_submit_without_a_job_file_explains_usage():
    """Called with no job, the wrapper fails with its usage line rather than a Spark stack trace."""
    result = subprocess.run(["./spark-submit.sh", "--master", "local[1]"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: ./spark-submit.sh" in result.stderr


def test_spark_sql_sees_tables_a_job_registered_in_the_derby_metastore(tmp_path: Path):
    """With storage.metastore=derby, tables registered by one process are listed by spark-sql.sh in another."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}
    common = ["--set", f"storage.root={store}", "--set", "storage.metastore=derby"]
    published = subprocess.run(
        ["./spark-submit.sh", "--master", "local[1]", "jobs/publish.py", "--profile", "test", *common],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert published.returncode == 0, published.stderr[-3000:]
    listed = subprocess.run(
        ["./spark-sql.sh", "--profile", "test", *common, "-e", "SHOW TABLES IN lookalike"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    assert names == sorted(table.name for table in ALL_TABLES)
    assert (store / "metastore_db").is_dir()


def submit_command(*args: str) -> list[str]:
    """The spark-submit command line spark-submit.sh would run for ``args`` (LOOKALIKE_PRINT_COMMAND=1)."""
    import shlex

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYSPARK")}, "LOOKALIKE_PRINT_COMMAND": "1"}
    result = subprocess.run(["./spark-submit.sh", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def option_values(command: list[str], option: str) -> list[str]:
    """Every value given to ``option`` in a command line."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == option]


def test_wrapper_ships_library_configuration_and_jars_to_a_cluster():
    """Against a cluster master: the zip with --py-files, every conf/*.toml with --files, the Delta jars with --jars."""
    command = submit_command("--master", "spark://127.0.0.1:7077", "jobs/refresh.py", "--profile", "cluster")
    assert option_values(command, "--master") == ["spark://127.0.0.1:7077"]
    [library] = option_values(command, "--py-files")
    assert re.fullmatch(r"dist/lookalike-[0-9a-f]{16}\.zip", library)
    shipped = option_values(command, "--files")[0].split(",")
    assert sorted(shipped) == sorted(f"conf/{p.name}" for p in (REPO / "conf").glob("*.toml"))
    jars = option_values(command, "--jars")[0].split(",")
    assert any("delta-spark_" in j for j in jars) and any("delta-storage-" in j for j in jars)
    assert f"spark.pyspark.python={REPO / '.venv' / 'bin' / 'python'}" in option_values(command, "--conf")
    assert command[-3:] == ["jobs/refresh.py", "--profile", "cluster"]
    assert "--archives" not in command


def test_wrapper_ships_a_packed_python_environment_with_archives(tmp_path: Path):
    """--python-env: the archive goes with --archives; executors (and a cluster-mode driver) run its interpreter."""
    archive = tmp_path / "lookalike-env.tar.gz"
    archive.write_bytes(b"")
    client = submit_command("--master", "yarn", "--python-env", str(archive), "jobs/refresh.py")
    assert option_values(client, "--archives") == [f"{archive}#lookalike-env"]
    confs = option_values(client, "--conf")
    assert "spark.pyspark.python=./lookalike-env/bin/python" in confs
    # Client mode: the driver runs here, with the project's interpreter (spark.pyspark.python would win otherwise).
    assert f"spark.pyspark.driver.python={REPO / '.venv' / 'bin' / 'python'}" in confs
    assert "--python-env" not in client
    cluster = submit_command("--master", "yarn", "--deploy-mode", "cluster", "--python-env", str(archive), "jobs/refresh.py")
    assert "spark.pyspark.driver.python=./lookalike-env/bin/python" in option_values(cluster, "--conf")


def test_wrapper_refuses_a_missing_environment_archive(tmp_path: Path):
    """A --python-env archive that does not exist fails before Spark starts, naming it."""
    missing = tmp_path / "nope.tar.gz"
    result = subprocess.run(["./spark-submit.sh", "--python-env", str(missing), "jobs/refresh.py"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"no archive {missing}" in result.stderr


def test_wrapper_keeps_an_interpreter_the_user_names():
    """--conf spark.pyspark.python=... (e.g. a container image's Python) is not overridden by the project's."""
    command = submit_command("--master", "k8s://https://api:6443", "--conf", "spark.pyspark.python=/opt/env/bin/python",
                             "jobs/refresh.py")
    assert [c for c in option_values(command, "--conf") if c.startswith("spark.pyspark.python=")] == [
        "spark.pyspark.python=/opt/env/bin/python"
    ]


def test_library_archive_holds_every_module_of_the_library_and_schemas(tmp_path: Path):
    """scripts/package_lib.py (run by the wrapper and the Airflow DAG) zips every module, and the zip alone imports."""
    out = tmp_path / "lookalike.zip"
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "scripts/package_lib.py", "--out", str(out)], cwd=REPO,
                   check=True, timeout=60)
    with zipfile.ZipFile(out) as archive:
        names = sorted(archive.namelist())
    expected = sorted(
        [f"lookalike/{p.relative_to(REPO / 'lib' / 'lookalike')}" for p in (REPO / "lib" / "lookalike").rglob("*.py")]
        + [f"schemas/{p.relative_to(REPO / 'schemas')}" for p in (REPO / "schemas").rglob("*.py")]
    )
    assert names == expected
    # Imported from the zip alone (as an executor does), not from the checkout.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import lookalike.alternatives, schemas; "
             "print(lookalike.alternatives.__file__); print(len(schemas.ALL_TABLES))")
    result = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-I", "-c", probe, str(out)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    module_file, tables = result.stdout.split()
    assert module_file == str(out / "lookalike" / "alternatives.py") and int(tables) == len(ALL_TABLES)


def _addressed_build(checkout: Path, folder: Path) -> Path:
    result = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "package_lib.py"),
                             "--addressed", str(folder)], cwd=checkout, capture_output=True, text=True, check=True, timeout=60)
    return Path(result.stdout.strip())


def test_a_running_jobs_library_zip_is_never_rewritten(tmp_path: Path):
    """The wrapper's zip is named by its content: the same sources give the same file, bytes unchanged;
    edited sources a new file, and the earlier one (a running job's) stays as it was. Stale zips go."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "lib" / "lookalike", checkout / "lib" / "lookalike", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schemas", checkout / "schemas", ignore=shutil.ignore_patterns("__pycache__"))
    folder = tmp_path / "dist"
    first = _addressed_build(checkout, folder)
    assert re.fullmatch(r"lookalike-[0-9a-f]{16}\.zip", first.name)
    running = first.read_bytes()
    inode = first.stat().st_ino
    assert _addressed_build(checkout, folder) == first and first.stat().st_ino == inode
    with open(checkout / "lib" / "lookalike" / "cli.py", "a", encoding="utf-8") as edited:
        edited.write("\n# an edit after the first job started\n")
    second = _addressed_build(checkout, folder)
    assert second != first and second.is_file()
    assert first.read_bytes() == running
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.name, second.name])  # no partial files left
    # A zip unused for more than a week is removed by the next build; the one in use is kept.
    week_ago = first.stat().st_mtime - 8 * 86400
    os.utime(first, (week_ago, week_ago))
    assert _addressed_build(checkout, folder) == second
    assert sorted(p.name for p in folder.iterdir()) == [second.name]
