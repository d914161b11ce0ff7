"""The run queue of deploy/dagster.yaml as `dagster dev`'s daemon works it: runs submitted through
the GraphQL API, as the UI submits them, to an instance of that configuration.

Four runs, each a run worker and a step process, so it is in the `system` tier (`make system`)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from alloy_pipeline.alloy.simulator import Fault
from alloy_pipeline.demo_instance import instance_config
from alloy_pipeline.engine import EngineSettings, free_port
from alloy_pipeline.lake import REFINED, LakeResource
from alloy_pipeline.naming import raw_key, snapshot_key
from alloy_pipeline.partitions import Day, ranged_run_tags
from alloy_pipeline.pools import limit_snapshot_pools
from alloy_pipeline_tests.harness import API_KEY, Pipeline, wait_until

pytestmark = pytest.mark.system

QUERY = "gully_inspections"
FIRST, SECOND, THIRD = "2024-03-01", "2024-03-02", "2024-03-03"
"""The snapshot runs take the first two days, the raw runs the third: no tag of theirs is shared."""
QUEUED, STARTED, SUCCESS = dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS


def instance_home(root: Path) -> Path:
    """A DAGSTER_HOME with deploy/dagster.yaml, whose daemon looks at the queue every second, not every 5."""
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        instance_config().read_text() + "\nrun_queue:\n  dequeue_interval_seconds: 1\ntelemetry:\n  enabled: false\n"
    )
    return home


def code_location_environment(pipeline: Pipeline, engine: EngineSettings, home: Path) -> dict[str, str]:
    """The code location of `pipeline`'s AQS folder, lake, catalog, simulator and engine, on instance `home`.
    No cascade: the sensor would launch rebuilds of its own."""
    catalog = pipeline.session_catalog()
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("ALLOY_", "SPARK_"))}
    return environment | {
        "DAGSTER_HOME": str(home),
        "ALLOY_AQS_DIR": str(pipeline.aqs_dir),
        "ALLOY_API_URL": pipeline.simulator.url,
        "ALLOY_API_KEY": API_KEY,
        "ALLOY_RAW_ZONE": pipeline.lake.raw_zone,
        "ALLOY_REFINED_ZONE": pipeline.lake.refined_zone,
        "ALLOY_MAPPING_LOCATION": pipeline.mapping_location,
        "ALLOY_RAW_DATABASE": catalog.raw_database,
        "ALLOY_REFINED_DATABASE": catalog.refined_database,
        "ALLOY_CASCADE": "off",
        "SPARK_REMOTE": engine.url,
    }


@contextmanager
def dagster_dev(environment: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster dev` on the code location, in a session of its own, ended with all it started; its
    output is printed if the block fails."""
    command = ["dagster", "dev", "-m", "alloy_pipeline.definitions", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            env=environment,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    except BaseException:
        print(log.read_text()[-6000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


@contextmanager
def commit_held(lake: LakeResource, query: str, day: str) -> Iterator[None]:
    """Hold the lock every commit of `day`'s snapshot takes to write its manifest (`Zone.write_text_if`):
    a snapshot step that reaches that commit waits in it, its pool slot claimed, until the block ends."""
    manifest = Path(lake.refined.path_of(REFINED.manifest_path(query, Day.from_key(day))))
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with (manifest.parent / f".{manifest.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass
class Queue:
    """Runs submitted as the UI submits them, and what the instance says of them."""

    client: DagsterGraphQLClient
    instance: dg.DagsterInstance
    dagster_dev: subprocess.Popen[bytes]

    def submit(self, key: dg.AssetKey, tags: dict[str, str]) -> str:
        return self.client.submit_job_execution("__ASSET_JOB", asset_selection=[key], tags=tags)

    def submit_once_loaded(self, key: dg.AssetKey, tags: dict[str, str]) -> str:
        """`submit`, retried until the server and its code location are up."""
        submitted: list[str] = []

        def taken() -> bool:
            assert self.dagster_dev.poll() is None, "dagster dev ended"
            try:
                submitted.append(self.submit(key, tags))
            except DagsterGraphQLClientError:
                return False
            return True

        wait_until(taken, "dagster dev takes a run", 120)
        return submitted[0]

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        return self.run(run_id).status

    def in_step(self, run_id: str) -> bool:
        return bool(self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))

    def step_ended(self, run_id: str) -> float:
        [success] = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        return success.timestamp


def test_a_second_run_of_a_day_and_a_day_inside_a_ranged_run_wait_for_the_first(
    pipeline: Pipeline, engine: EngineSettings, tmp_path: Path
) -> None:
    """Two runs of one day's raw extract: the second stays queued until the first has ended (the tag
    limit on `dagster/partition`). A ranged snapshot run and a snapshot run of a day inside its range,
    which no tag limit keeps apart: with the query's snapshot pool set to 1 (docs/production.md,
    section 7), the day's run stays queued while the ranged run's step runs.

    The first of each pair is held (its export by the simulator, its commit by the manifest's lock)
    while the test looks at the second, and meanwhile another run leaves the queue: the daemon was
    working the queue, and kept the second in it."""
    pipeline.keep_only("Gully Inspections")
    home = instance_home(tmp_path)
    port = free_port()
    released = threading.Event()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limit_snapshot_pools(instance, [QUERY])  # `alloy-pipeline pools`
        environment = code_location_environment(pipeline, engine, home)
        with dagster_dev(environment, port, tmp_path / "dagster-dev.log") as dev:
            queue = Queue(DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=30), instance, dev)
            try:
                pipeline.run(FIRST, group="alloy_raw")  # what the snapshots build on, while dagster dev starts
                pipeline.simulator.inject(Fault("held_task", release=released))
                with commit_held(pipeline.lake, QUERY, FIRST):
                    first_raw = queue.submit_once_loaded(raw_key(QUERY), {"dagster/partition": THIRD})
                    second_raw = queue.submit(raw_key(QUERY), {"dagster/partition": THIRD})
                    ranged = queue.submit(snapshot_key(QUERY), ranged_run_tags(FIRST, SECOND))
                    wait_until(
                        lambda: (
                            len([seen for seen in pipeline.simulator.requests if seen.path == "/api/export"]) >= 2
                            and queue.status(first_raw) == STARTED
                            and queue.in_step(ranged)
                        ),
                        "the first raw run's export is held, and the ranged run is in its step",
                        90,
                    )
                    assert queue.status(second_raw) == QUEUED
                    inside = queue.submit(snapshot_key(QUERY), {"dagster/partition": SECOND})
                    released.set()
                    wait_until(lambda: queue.status(second_raw) != QUEUED, "the second raw run leaves the queue", 60)
                    assert queue.status(first_raw) == SUCCESS
                    assert queue.status(inside) == QUEUED and queue.status(ranged) == STARTED

                runs = {"first_raw": first_raw, "second_raw": second_raw, "ranged": ranged, "inside": inside}
                wait_until(lambda: all(queue.run(run).is_finished for run in runs.values()), "the runs end", 120)
                assert {name: queue.status(run) for name, run in runs.items()} == dict.fromkeys(runs, SUCCESS)
                records = {name: instance.get_run_record_by_id(run) for name, run in runs.items()}
                assert records["second_raw"].start_time >= records["first_raw"].end_time
                assert records["inside"].start_time >= queue.step_ended(ranged)
            finally:
                released.set()
