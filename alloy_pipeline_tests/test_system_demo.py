"""`make demo` and `make dev` as a user runs them, each in a data folder and on ports of its own.

Minutes each, so they are marked `system`: `make system` runs them, `make test` leaves them out.
Processes are found through /proc, so these run on Linux (as CI does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from alloy_pipeline.definitions import build_definitions
from alloy_pipeline.demo_instance import DEMO_RECORD, INSTANCE_FOLDER, DemoRecord, dev_environment, project_root
from alloy_pipeline.engine import free_port
from alloy_pipeline.pools import snapshot_pool
from alloy_pipeline_tests.harness import wait_until

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc"),
]

CLI = Path(sys.executable).with_name("alloy-pipeline")
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def run(*arguments: str | Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(argument) for argument in arguments],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def user_environment(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose DAGSTER_HOME holds an instance of their own, which neither
    the demo nor `make dev` may touch."""
    home = tmp_path / "users-own-dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("# the user's own instance\n")
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("ALLOY_", "SPARK_"))}
    return environment | {"DAGSTER_HOME": str(home)}


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A data folder, whose engine is stopped at the end (`make dev` leaves it running)."""
    folder = tmp_path / "data"
    yield folder
    run(CLI, "engine", "stop", "--data", folder, env=dict(os.environ), cwd=tmp_path)


def demo_runs(home: Path) -> tuple[set[str], set[tuple[str, str]], set[dg.DagsterRunStatus]]:
    """The days of the demo's daily runs, the ranges of its rebuild runs, and their statuses."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
    daily = {
        record.dagster_run.tags["dagster/partition"]
        for record in records
        if record.dagster_run.job_name == "alloy_daily"
    }
    ranged = {
        (record.dagster_run.tags[RANGE_START], record.dagster_run.tags[RANGE_END])
        for record in records
        if RANGE_START in record.dagster_run.tags
    }
    assert len(records) == len(daily) + len(ranged), [record.dagster_run.tags for record in records]
    return daily, ranged, {record.dagster_run.status for record in records}


def test_each_demo_leaves_an_instance_of_only_its_runs_on_a_calendar_of_only_its_days(
    tmp_path: Path, data: Path, user_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two demos, the second of one day, run from outside the checkout: one engine serves both
    (`engine start` keeps it), which spares a JVM start."""
    home = data / INSTANCE_FOLDER
    (home / "history").mkdir(parents=True)
    port = str(free_port())
    assert (
        run(CLI, "engine", "start", "--data", data, "--port", port, env=user_environment, cwd=tmp_path).returncode == 0
    )
    users_calendar = user_environment | {"ALLOY_PARTITIONS_START": "2024-01-01"}

    first = run(CLI, "demo", "--data", data, "--engine-port", port, env=users_calendar, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "dagster.yaml) found" not in first.stdout + first.stderr
    assert [path.name for path in data.glob(f"{INSTANCE_FOLDER}.before-demo-*/history")] == ["history"]
    assert (home / "dagster.yaml").read_text() == (project_root() / "deploy" / "dagster.yaml").read_text()
    record = DemoRecord.model_validate_json((home / DEMO_RECORD).read_text())
    days = [day.isoformat() for day in record.days]
    assert len(days) == 3 and record.partitions_start.isoformat() == days[0]
    assert demo_runs(home) == (set(days), {(days[0], days[-1])}, {dg.DagsterRunStatus.SUCCESS})

    environment = dev_environment(data, user_environment)
    assert environment["DAGSTER_HOME"] == str(home) and environment["ALLOY_PARTITIONS_START"] == days[0]
    assert dev_environment(data, users_calendar)["ALLOY_PARTITIONS_START"] == "2024-01-01"
    for name in os.environ.keys() - environment.keys():
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    definitions = build_definitions()
    keys = list(definitions.resolve_all_asset_keys())
    assert keys
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for key in keys:
            assert definitions.resolve_assets_def(key).partitions_def.get_partition_keys() == days, key
            assert instance.get_materialized_partitions(key) == set(days), key

    second = run(CLI, "demo", "--data", data, "--days", "1", "--engine-port", port, env=users_calendar, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Welcome to Dagster" not in second.stdout + second.stderr
    assert demo_runs(home) == ({days[-1]}, {(days[-1], days[-1])}, {dg.DagsterRunStatus.SUCCESS})
    assert DemoRecord.model_validate_json((home / DEMO_RECORD).read_text()).partitions_start.isoformat() == days[-1]
    users_home = Path(user_environment["DAGSTER_HOME"])
    assert [path.name for path in users_home.iterdir()] == ["dagster.yaml"]


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live process below `root`, with its start time (which tells it from a later process
    given its pid) and command line."""
    parents: dict[int, int] = {}
    described: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
            described[int(entry.name)] = (fields[19], command)
    below: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return {pid: described[pid] for pid in below}


def still_running(processes: dict[int, tuple[str, str]]) -> dict[int, str]:
    """Those of `processes` that still run (the same pid with the same start time, not a zombie)."""
    running = {}
    for pid, (started, command) in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and fields[19] == started:
            running[pid] = command
    return running


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_sigterm_to_make_devs_process_group_stops_dagster_dev_within_seconds_and_leaves_the_engine(
    tmp_path: Path, data: Path, user_environment: dict[str, str]
) -> None:
    """While it serves, its instance keeps one snapshot step a query (`alloy-pipeline pools`)."""
    ports = {"DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port(), "ENGINE_PORT": free_port()}
    log = tmp_path / "make-dev.log"
    with log.open("w") as output:
        make = subprocess.Popen(
            ["make", "dev", f"DATA={data}", *(f"{name}={port}" for name, port in ports.items())],
            cwd=project_root(),
            env=user_environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    processes: dict[int, tuple[str, str]] = {}
    try:

        def serving() -> bool:
            assert make.poll() is None, f"make dev ended ({make.returncode}):\n{log.read_text()[-3000:]}"
            return answers(f"http://127.0.0.1:{ports['DAGSTER_PORT']}/server_info")

        wait_until(serving, "the Dagster UI answers", 300)
        processes = descendants(make.pid)
        commands = " | ".join(command for _, command in processes.values())
        for part in ("alloy-pipeline dev", "dagster dev", "dagster_webserver", "dagster._daemon", "code-server"):
            assert part in commands, f"no {part} among make dev's processes: {commands}"
        dagster_dev = next(pid for pid, (_, command) in processes.items() if " dagster dev " in f"{command} ")
        environment = Path(f"/proc/{dagster_dev}/environ").read_bytes().split(b"\0")
        assert f"DAGSTER_HOME={data / INSTANCE_FOLDER}".encode() in environment
        pools = [snapshot_pool(query) for query in ("dw_container_job", "graffiti_reports", "gully_inspections")]
        with dg.DagsterInstance.from_config(str(data / INSTANCE_FOLDER)) as instance:
            limits = instance.event_log_storage.get_concurrency_infos(pools)
        assert {pool: limits[pool].limit for pool in pools} == dict.fromkeys(pools, 1), "one snapshot step a query"

        os.killpg(make.pid, signal.SIGTERM)
        wait_until(lambda: not still_running(processes), f"make dev's processes end: {still_running(processes)}", 15)
        make.wait(5)
        status = run(
            CLI,
            "engine",
            "status",
            "--data",
            data,
            "--port",
            str(ports["ENGINE_PORT"]),
            env=user_environment,
            cwd=tmp_path,
        )
        assert status.returncode == 0, status.stderr
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        for pid in still_running(processes):
            os.kill(pid, signal.SIGKILL)
