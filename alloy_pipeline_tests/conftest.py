"""Shared fixtures: one Spark engine for the whole test session, and this process a client of it."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from moto.server import ThreadedMotoServer
from pyspark.sql import SparkSession

from alloy_pipeline import engine as engines
from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.spark import connected
from alloy_pipeline_tests.harness import API_KEY, Pipeline

ENGINE_TIME_ZONE = "America/New_York"
"""The test engine's own default: every session must still work in UTC."""
TEST_ENGINE_JIT = ("-XX:TieredStopAtLevel=1", "-XX:ReservedCodeCacheSize=256m")
"""The test engine compiles with C1 only: a suite is a few minutes of small jobs, and C2 spent about
two thirds of the engine's CPU compiling code for jobs that were over before it paid back (50 s of
89 s over three of the test files). The larger code cache keeps C1's code from being swept."""
STARTER_SECRETS = {
    name: f"starter-secret-{name.lower()}"
    for name in ("ALLOY_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
}
"""Secrets in the environment the test engine is started from, as in a Dagster process: its JVM
must hold none of them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests without Spark first, in their order: they run while the engine starts. A test that
    starts local Spark of its own runs last, so its JVM does not slow the engine's start."""
    items.sort(key=lambda item: (item.get_closest_marker("own_spark") is not None, "engine" in item.fixturenames))


def _test_engine(root: Path) -> EngineSettings:
    return EngineSettings.under(
        root,
        port=engines.free_port(),
        driver_memory="3g",
        extra_conf={"spark.sql.shuffle.partitions": "2", "spark.sql.session.timeZone": ENGINE_TIME_ZONE},
        java_options=TEST_ENGINE_JIT,
    )


class SharedEngine:
    """Under pytest-xdist (`make test` runs three workers): the workers share one engine, which the
    controller names and stops at the end. A second engine would cost its JVM's start and memory,
    and split the warm-up the suite relies on.

    Whichever worker first needs it starts it; `engines.start` does so under the engine folder's
    lock, so the other finds it running, or waits for its start to end.
    """

    WORKER_INPUT = "alloy_test_engine"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="alloy-test-engine-"))
        self.settings = _test_engine(self.root)

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[self.WORKER_INPUT] = self.settings.model_dump_json()

    def pytest_unconfigure(self) -> None:
        engines.stop(self.settings)
        shutil.rmtree(self.root, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") != "no":
        config.pluginmanager.register(SharedEngine(), "alloy-shared-engine")


@pytest.fixture(scope="session", autouse=True)
def engine_starting(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[EngineSettings] | None]:
    """The local engine, as `alloy-pipeline engine start` runs it, in a folder and on a port of its own
    (or the controller's, shared by every worker: `SharedEngine`), started in the background as the
    session begins if any selected test needs it."""
    if not any("engine" in item.fixturenames for item in request.session.items):
        yield None
        return
    shared = getattr(request.config, "workerinput", {}).get(SharedEngine.WORKER_INPUT)
    if shared is None:
        settings = _test_engine(tmp_path_factory.mktemp("data"))
    else:
        settings = EngineSettings.model_validate_json(shared)

    def start() -> EngineSettings:
        engines.start(settings, os.environ | STARTER_SECRETS)
        return settings

    with ThreadPoolExecutor(max_workers=1) as starter:
        started = starter.submit(start)
        try:
            yield started
        finally:
            started.exception()
            if shared is None:
                engines.stop(settings)


@pytest.fixture(scope="session")
def engine(engine_starting: Future[EngineSettings] | None) -> EngineSettings:
    assert engine_starting is not None
    return engine_starting.result()


@pytest.fixture(scope="session")
def spark(engine: EngineSettings) -> Iterator[SparkSession]:
    """The session every Spark test shares: a client of the test engine, as every step is."""
    with connected(engine.url) as session:
        yield session


@pytest.fixture
def simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[AlloySimulator]:
    """The simulator, and the code location's environment naming it as the Alloy API (ALLOY_API_URL),
    the only place the key may be sent."""
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY) as running:
        monkeypatch.setenv("ALLOY_API_URL", running.url)
        yield running


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def pipeline(
    simulator: AlloySimulator, engine: EngineSettings, spark: SparkSession, instance: dg.DagsterInstance, tmp_path: Path
) -> Pipeline:
    return Pipeline.create(
        simulator, engine.url, spark, instance, tmp_path, ["DW Container Job", "Graffiti Reports", "Gully Inspections"]
    )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 and Secrets Manager, served over HTTP on loopback."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at moto the way production points it at AWS: through the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    return moto_endpoint


@pytest.fixture
def bucket(aws: str) -> str:
    """A fresh bucket on moto's S3."""
    name = f"council-lake-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return name
