"""`alloy-pipeline dev` (`make dev`): `dagster dev` on a data folder's instance, its engine and the
Alloy simulator, stopped in order on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from alloy_pipeline import engine
from alloy_pipeline.aqs import load_queries
from alloy_pipeline.demo_instance import (
    DEMO_API_KEY,
    dev_environment,
    instance_config,
    make_data_option,
    project_root,
)
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.pools import limit_snapshot_pools

DEV_STOP_SECONDS = 10.0
"""How long `dev` lets `dagster dev` shut down in order before it kills what is left of it."""


def dev(data: Path, port: int, simulator_port: int, engine_port: int, master: str | None = None) -> int:
    """`make dev`: `dagster dev` on the instance and calendar of `data` (the demo's, see
    `dev_environment`), against its engine and the simulator, until Ctrl-C or SIGTERM.

    The engine is the data folder's, started on `master` if it is not running (`EngineSettings.master`:
    a cluster's `spark://host:port` makes it that cluster's driver). The instance's snapshot pools
    get their limit of one step (`alloy-pipeline pools`), so a backfill and a day's run started
    from the UI build a query's snapshots one at a time, as in production.

    The engine runs in a session of its own (`engine.start`), so it outlives this. The simulator is
    served from this process. `dagster dev` runs in a session of its own too, and this process
    stops it: a signal to make's process group would reach dagster dev and each of its children at
    once, racing dagster dev's own ordered shutdown (it restarts a code server it finds exited, for
    instance). So a signal here becomes one SIGTERM to dagster dev, which stops its webserver,
    daemon and code servers in turn; what is left of its session after that, or after
    `DEV_STOP_SECONDS`, is killed.
    """
    from alloy_pipeline.alloy.simulator import AlloySimulator, dataset_for_queries, demo_dataset

    data = data.resolve()
    environment = dev_environment(data, os.environ)
    home = Path(environment["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(instance_config(), home / "dagster.yaml")
    queries = load_queries(Path(environment["ALLOY_AQS_DIR"]))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limit_snapshot_pools(instance, [query.slug for query in queries])
    dataset = dataset_for_queries((query.request.to_body() for query in queries), demo_dataset())
    settings = EngineSettings.under(data, port=engine_port, master=master)
    state, _ = engine.start(settings)
    # A plain list, not a threading.Event: a second signal (make forwards its SIGTERM to this
    # process, which had one of its own) would find Event.set's lock held by the first, forever.
    received: list[int] = []
    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, lambda signum, frame: received.append(signum))
    with AlloySimulator(dataset, api_key=DEMO_API_KEY, port=simulator_port, task_seconds=2.0) as simulator:
        print(
            f"Instance {home} (partitions from {environment.get('ALLOY_PARTITIONS_START', 'the default start')}); "
            f"Alloy simulator at {simulator.url} (key {DEMO_API_KEY}); dagster dev steps are clients of the Spark "
            f"engine at {settings.endpoint} (master {state.master}), which stays running afterwards "
            f"(make engine-stop{make_data_option(data)})",
            flush=True,
        )
        environment |= {"SPARK_REMOTE": settings.url, "ALLOY_API_URL": simulator.url, "ALLOY_API_KEY": DEMO_API_KEY}
        command = [sys.executable, "-m", "dagster", "dev", "--host", "127.0.0.1", "--port", str(port)]
        workspace = ["--workspace", str(project_root() / "workspace.yaml")]
        process = subprocess.Popen([*command, *workspace], env=environment, start_new_session=True)
        try:
            while process.poll() is None and not received:
                time.sleep(0.2)
        finally:
            _stop_dagster(process)
    return 0 if received else process.returncode


def _stop_dagster(process: subprocess.Popen[bytes]) -> None:
    """End `dagster dev` (`process`, the leader of its own session) and everything left in its
    process group: run workers, a code server restarted mid-shutdown."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(DEV_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"dagster dev did not stop within {DEV_STOP_SECONDS:g} s: killing it", file=sys.stderr)
    for each, patience in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        deadline = time.monotonic() + patience
        try:
            os.killpg(process.pid, each)
            while time.monotonic() < deadline:
                process.poll()
                os.killpg(process.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            break
    process.wait()
