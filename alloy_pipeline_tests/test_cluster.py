"""The engine as the driver of a Spark standalone cluster: a master and one worker on loopback,
started from the pyspark wheel's jars, run a day and a ranged rebuild in the worker's executors,
and the lake holds the tables the local engine writes.

Three JVMs start besides the session's engine, so it is marked `system`: `make system` runs it
after `make test`. The daemons run in sessions of their own, which teardown kills whole (the
worker's executors are in its process group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyspark
import pytest
from pyspark.sql import SparkSession

from alloy_pipeline import engine as engines
from alloy_pipeline.engine import LOOPBACK, EngineSettings
from alloy_pipeline.lake import LakeResource
from alloy_pipeline_tests.conftest import ENGINE_TIME_ZONE, STARTER_SECRETS
from alloy_pipeline_tests.harness import REPO, RUN_TIME_COLUMNS, Pipeline, rows_of, wait_until

pytestmark = pytest.mark.system

SPARK_HOME = Path(pyspark.__file__).parent
AQS_FILE, JOIN = "DW Container Job", "root.attributes_jobAssignedContainer."
QUERY = "dw_container_job"
DAY, NEXT_DAY = "2024-03-01", "2024-03-02"
"""The day exported, and a day without an export, which the ranged rebuild carries forward."""
START_SECONDS = 120.0
RUN_SECONDS = 300.0
"""How long the cluster's runs may take on a loaded machine; about 50 s on a quiet one."""
EXECUTOR_MEMORY = "512m"


def get_json(url: str) -> Any:
    """A web UI's JSON, with the patience of a loaded machine (httpx's 5 s is not)."""
    return httpx.get(url, timeout=30).raise_for_status().json()


@dataclass(frozen=True)
class Daemon:
    """A master or worker, in a session of its own, logging to a file."""

    process: subprocess.Popen[bytes]
    log: Path

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"{self.log.name} exited:\n{self.log.read_text(errors='replace')[-3000:]}"

    def kill(self) -> None:
        """SIGTERM to its whole process group (the worker's executors included), then SIGKILL."""
        for each in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, each)
            except ProcessLookupError:
                break
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()


def start_daemon(name: str, role: str, arguments: list[str], folder: Path) -> Daemon:
    """`spark-class <role>` from the wheel's jars, on loopback, with small heaps and folders under `folder`.

    Its environment is this process's, less any Spark client setting: an operator's worker, which
    holds none of the engine starter's secrets (`STARTER_SECRETS`)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SPARK_")} | {
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_LOG_DIR": str(folder / "logs"),
        "SPARK_LOCAL_DIRS": str(folder / "local"),
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",  # else it takes port 6066
    }
    log = folder / f"{name}.out"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), role, *arguments],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Daemon(process, log)


@dataclass(frozen=True)
class Cluster:
    """A running standalone cluster of one worker, and the engine as its driver."""

    master_web: str
    engine: EngineSettings
    driver_web: str

    def master_state(self) -> dict:
        return get_json(f"{self.master_web}/json/")

    def application(self) -> str:
        (app,) = get_json(f"{self.driver_web}/api/v1/applications")
        return app["id"]

    def completed_tasks(self) -> dict[str, int]:
        """Each executor's completed tasks, as the driver's REST API reports them (`driver` is the engine)."""
        executors = get_json(f"{self.driver_web}/api/v1/applications/{self.application()}/allexecutors")
        return {executor["id"]: executor["completedTasks"] for executor in executors}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and one worker of 2 cores and 1 GiB on loopback, and an engine on them, started as
    `engine start --master spark://…` starts it from a Dagster process's environment, with the
    driver's web UI on (the local engine has it off) to count the executors' tasks.

    Of the session's scope so that it starts while the session's engine does, not after it."""
    folder = tmp_path_factory.mktemp("spark-cluster")
    (folder / "work").mkdir()
    master_port, master_web_port, worker_web_port, ui_port = (engines.free_port() for _ in range(4))
    master = f"spark://{LOOPBACK}:{master_port}"
    daemons: list[Daemon] = []
    settings = EngineSettings.under(
        folder / "data",
        port=engines.free_port(),
        master=master,
        driver_memory="1g",
        executor_memory=EXECUTOR_MEMORY,
        cores_max=2,
        extra_conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.sql.session.timeZone": ENGINE_TIME_ZONE,
            "spark.ui.enabled": "true",
            "spark.ui.port": str(ui_port),
        },
    )
    try:
        daemons.append(
            start_daemon(
                "master",
                "org.apache.spark.deploy.master.Master",
                ["--host", LOOPBACK, "--port", str(master_port), "--webui-port", str(master_web_port)],
                folder,
            )
        )
        daemons.append(
            start_daemon(
                "worker",
                "org.apache.spark.deploy.worker.Worker",
                ["--host", LOOPBACK, "--cores", "2", "--memory", "1g", "--webui-port", str(worker_web_port)]
                + ["--work-dir", str(folder / "work"), master],
                folder,
            )
        )
        running = Cluster(f"http://{LOOPBACK}:{master_web_port}", settings, f"http://{LOOPBACK}:{ui_port}")

        def master_reports(condition: Callable[[dict], bool]) -> Callable[[], bool]:
            def check() -> bool:
                for daemon in daemons:
                    daemon.assert_alive()
                try:
                    return condition(running.master_state())
                except (httpx.HTTPError, ValueError):  # starting: its pages attach one by one (404, HTML)
                    return False

            return check

        wait_until(master_reports(lambda state: state["status"] == "ALIVE"), "the master is up", START_SECONDS)
        engines.start(settings, os.environ | STARTER_SECRETS)  # meanwhile the worker registers
        wait_until(
            master_reports(lambda state: state["aliveworkers"] == 1),
            "the worker registers with the master",
            START_SECONDS,
        )
        yield running
    finally:
        engines.stop(settings)
        for daemon in reversed(daemons):
            daemon.kill()


CLUSTER_RUN = """
import json, os, sys
from pathlib import Path
import dagster as dg
from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.spark import connect_session
from alloy_pipeline_tests.harness import API_KEY, Pipeline
remote, root, aqs_file, join, day, next_day = sys.argv[1:7]
spark = connect_session(remote)
with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY) as simulator, dg.instance_for_test() as instance:
    os.environ["ALLOY_API_URL"] = simulator.url
    pipeline = Pipeline.create(simulator, remote, spark, instance, Path(root), [aqs_file]).keep_joins(aqs_file, join)
    pipeline.run(day)
    pipeline.rebuild(day, next_day)
executors = spark.range(4).selectExpr(
    "reflect('java.lang.System', 'getProperty', 'sun.java.command') AS command",
    "reflect('java.lang.System', 'getenv') AS environment",
)
print(json.dumps(sorted({(row.command, row.environment) for row in executors.collect()})))
"""
"""A Dagster process whose steps are clients of the cluster's engine, as `make dev`'s are of its
engine: a day of raw and snapshot and a ranged rebuild of one query, then what the executors'
JVMs say of themselves (their command line, their environment). A process of its own, because
pyspark keeps one Connect session per process and this one's is the local engine's."""


def lake_tables(pipeline_root: Path, spark: SparkSession) -> dict[tuple[str, str, str], list[tuple]]:
    """Every table of every raw and snapshot day of the query under `pipeline_root`, as a reader of
    the lake gets it, less the columns that say when it ran."""
    lake = LakeResource(raw_zone=str(pipeline_root / "raw-zone"), refined_zone=str(pipeline_root / "refined-zone"))
    manifests = [("raw", manifest) for manifest in lake.raw_manifests(QUERY)]
    manifests += [("snapshot", manifest) for manifest in lake.snapshot_manifests(QUERY)]
    return {
        (layer, manifest.day.isoformat(), table): rows_of(spark.read.parquet(entry.path), RUN_TIME_COLUMNS)
        for layer, manifest in manifests
        for table, entry in manifest.tables.items()
    }


def test_a_day_and_a_ranged_rebuild_run_in_the_workers_executors_and_write_what_the_local_engine_writes(
    cluster: Cluster, pipeline: Pipeline, tmp_path: Path
) -> None:
    """The cluster's run and the local engine's run at once, from one simulated tenancy each (the
    same seeded data): the lakes must hold the same tables."""
    tasks_before = cluster.completed_tasks()
    on_cluster = tmp_path / "on-cluster"
    child = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_RUN, cluster.engine.url, str(on_cluster), AQS_FILE, JOIN, DAY, NEXT_DAY],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "cluster-run.log").open("wb"),
    )
    try:
        local = pipeline.keep_only(AQS_FILE).keep_joins(AQS_FILE, JOIN)
        local.run(DAY)
        local.rebuild(DAY, NEXT_DAY)
        output, _ = child.communicate(timeout=RUN_SECONDS)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, (tmp_path / "cluster-run.log").read_text(errors="replace")[-5000:]

    written = lake_tables(on_cluster, pipeline.spark)
    assert {(layer, day) for layer, day, _ in written} == {("raw", DAY), ("snapshot", DAY), ("snapshot", NEXT_DAY)}
    assert all(written.values()), "every table has rows"
    assert written == lake_tables(local.root, pipeline.spark)

    tasks = cluster.completed_tasks()
    ran = {executor: count - tasks_before.get(executor, 0) for executor, count in tasks.items()}
    assert ran.pop("driver") == 0, "a standalone cluster's driver runs no tasks"
    assert sum(ran.values()) > 0, f"no executor ran the pipeline's tasks: {tasks}"
    application = cluster.application()
    (worker,) = cluster.master_state()["workers"]
    worker_executors = get_json(f"{worker['webuiaddress']}/json/")["executors"]
    assert {(executor["appid"], str(executor["id"])) for executor in worker_executors} >= {
        (application, executor) for executor in ran
    }, "the executors are the worker's"

    for command, environment in json.loads(output.splitlines()[-1]):
        assert command.startswith("org.apache.spark.executor.CoarseGrainedExecutorBackend"), command
        assert f"--worker-url spark://Worker@{worker['host']}:{worker['port']}" in command
        leaked = [name for name, secret in STARTER_SECRETS.items() if secret in environment]
        assert not leaked, f"the executors hold the engine starter's {leaked}"
