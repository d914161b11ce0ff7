"""The same assets through Spark Connect: the server that ships in the pyspark wheel, on loopback."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.alloy.simulator import AlloySimulator
from alloy_pipeline.lake import Lake
from alloy_pipeline_tests.harness import API_KEY, REPO

pytestmark = pytest.mark.spark_connect


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Start `sbin/start-connect-server.sh` in the foreground, bound to 127.0.0.1; stop it after."""
    spark_home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("spark-connect")
    port = _free_port()
    environment = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOG_DIR": str(logs),
        "SPARK_PID_DIR": str(logs),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    server = subprocess.Popen(
        [
            "bash", str(spark_home / "sbin" / "start-connect-server.sh"), "--wait",
            "--master", "local[2]",
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", f"spark.connect.grpc.binding.port={port}",
            "--conf", "spark.sql.session.timeZone=UTC",
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.driver.memory=1g",
        ],
        env=environment,
        stdout=(logs / "server.out").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"Spark Connect server did not start:\n{(logs / 'server.out').read_text()[-3000:]}")
            time.sleep(0.5)
    yield f"sc://127.0.0.1:{port}", logs / "server.out"
    os.killpg(server.pid, 15)
    server.wait(timeout=60)


def materialize_in_subprocess(day: str, environment: dict[str, str]) -> None:
    """`dagster asset materialize`, as a user would run it: a process that has only Spark Connect.

    pyspark refuses a Connect session in a process that already runs a local one (this test
    session's), and Dagster runs each run in its own process anyway.
    """
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
            "-m", "alloy_pipeline.definitions", "--select", "*", "--partition", day,
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]


def test_raw_and_snapshot_assets_run_through_spark_connect(
    connect_server: tuple[str, Path], simulator: AlloySimulator, spark: SparkSession, tmp_path: Path
) -> None:
    connect_url, server_log = connect_server
    aqs_dir = tmp_path / "aqs"
    aqs_dir.mkdir()
    shutil.copy(REPO / "aqs_queries" / "DW Container Job.json", aqs_dir)
    environment = {
        **os.environ,
        "SPARK_REMOTE": connect_url,
        "ALLOY_API_URL": simulator.url,
        "ALLOY_API_KEY": API_KEY,
        "ALLOY_AQS_DIR": str(aqs_dir),
        "ALLOY_RAW_ZONE": str(tmp_path / "raw"),
        "ALLOY_REFINED_ZONE": str(tmp_path / "refined"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()
    materialize_in_subprocess("2024-03-01", environment)
    changes = simulator.dataset.simulate_day(seed=1)
    materialize_in_subprocess("2024-03-02", environment)

    lake = Lake(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"))
    [raw1, raw2] = lake.raw_manifests("dw_container_job")
    assert (raw1.kind, raw2.kind) == ("full", "incremental")
    [day1, day2] = lake.snapshot_manifests("dw_container_job")
    assert day2.raw_days == (day2.day,) and day2.base_day == day1.day
    snapshot = spark.read.parquet(day2.tables["dw_container_job"].path)
    stored = {row.item_id for row in snapshot.select("item_id").collect()}
    live = set(simulator.dataset.ids("designs_wasteContainerJob"))
    assert live <= stored and stored - live <= set(changes.deleted), "incremental days keep deleted items"
    assert snapshot.count() == len(stored) == day2.tables["dw_container_job"].rows
    assert "Spark Connect - session_id" in server_log.read_text(errors="replace"), "the server did the work"
