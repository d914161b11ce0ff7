"""The local Spark engine: one long-lived Spark Connect server on loopback that every step talks to.

Starting a JVM costs far more than the work of a day's small extract, and a Derby metastore
admits one JVM at a time. So on a laptop one engine (the Spark Connect server that ships in the
pyspark wheel) owns the JVM and the catalog, and every Dagster step is a thin client of it, set
by `SPARK_REMOTE`: the same code path that talks to a cluster's Connect endpoint in production.

The engine's state (pid file, `engine.json`, log) lives in its home folder; `stop` ends only the
process recorded there, and only if it is still that Spark Connect server.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyspark
from pydantic import BaseModel, ConfigDict, Field

from alloy_pipeline.spark import LOCAL_SPARK_CONFIG, connected

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
IDENT = "alloy-pipeline"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 15002


class EngineError(RuntimeError):
    """The engine could not be started or reached."""


class EngineSettings(BaseModel):
    """Where the engine keeps its state and catalog, and how big it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default=Path("data/engine"), description="Pid file, engine.json and the server log.")
    metastore: Path = Field(
        default=Path("data/catalog/metastore_db"), description="The Derby metastore behind the Hive catalog."
    )
    warehouse: Path = Field(default=Path("data/catalog/warehouse"), description="Spark's warehouse folder.")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="Loopback port of the Connect server.")
    master: str = Field(default="local[2]", description="Spark master of the engine.")
    driver_memory: str = Field(default="4g", description="Heap of the engine's JVM.")
    extra_conf: dict[str, str] = Field(default_factory=dict, description="More --conf settings for the server.")
    start_timeout_seconds: float = Field(default=180, gt=0, description="How long `start` waits for an answer.")

    @classmethod
    def under(cls, root: Path, **settings: object) -> EngineSettings:
        """The engine of a data folder: its state in `root/engine`, its catalog in `root/catalog`."""
        return cls.model_validate(
            {
                "home": root / "engine",
                "metastore": root / "catalog" / "metastore_db",
                "warehouse": root / "catalog" / "warehouse",
                **settings,
            }
        )

    @property
    def url(self) -> str:
        return f"sc://{LOOPBACK}:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.home / "engine.json"

    @property
    def pid_file(self) -> Path:
        """Where `spark-daemon.sh` records the server's pid (its own naming)."""
        return self.home / f"spark-{IDENT}-{SERVER_CLASS}-1.pid"

    def server_conf(self) -> dict[str, str]:
        """The local settings of `spark.py`, the Hive catalog on Derby, bound to loopback."""
        metastore, warehouse = self.metastore.resolve(), self.warehouse.resolve()
        conf = {name: value for name, value in LOCAL_SPARK_CONFIG.items() if name != "spark.master"}
        return (
            conf
            | {
                "spark.app.name": "alloy-pipeline-engine",
                "spark.driver.memory": self.driver_memory,
                "spark.connect.grpc.binding.address": LOOPBACK,
                "spark.connect.grpc.binding.port": str(self.port),
                "spark.sql.catalogImplementation": "hive",
                "spark.sql.warehouse.dir": str(warehouse),
                "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={metastore};create=true",
                "spark.driver.extraJavaOptions": (
                    f"-Dderby.system.home={metastore.parent} -Dderby.stream.error.file={self.home.resolve() / 'derby.log'}"
                ),
            }
            | self.extra_conf
        )


class EngineState(BaseModel):
    """What `start` recorded about the server it started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    pid: int
    log: Path


def _is_our_server(pid: int) -> bool:
    """Whether `pid` is alive and still a Spark Connect server (pids get reused)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            command = subprocess.run(
                ["ps", "-ww", "-p", str(pid), "-o", "command="], capture_output=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return SERVER_CLASS.encode() in command


def free_port() -> int:
    """A loopback port nothing listens on now, other than the default one `make demo` takes."""
    while True:
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
        if port != DEFAULT_PORT:
            return port


def _answers(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


def status(settings: EngineSettings) -> EngineState | None:
    """The running engine recorded in `settings.home`, or None."""
    try:
        state = EngineState.model_validate_json(settings.state_file.read_text())
    except (OSError, ValueError):
        return None
    if not _is_our_server(state.pid) or not _answers(int(state.url.rsplit(":", 1)[1])):
        return None
    return state


@contextmanager
def _lock(settings: EngineSettings) -> Iterator[None]:
    """Two `start`s at once (parallel make targets) must not launch two servers."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _log_tail(log: Path, characters: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-characters:]
    except OSError:
        return "(no log)"


def _launch(settings: EngineSettings) -> EngineState:
    spark_home = Path(pyspark.__file__).parent
    logs = settings.home.resolve() / "logs"
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")
    } | {
        "SPARK_HOME": str(spark_home),
        "SPARK_PID_DIR": str(settings.home.resolve()),
        "SPARK_LOG_DIR": str(logs),
        "SPARK_IDENT_STRING": IDENT,
        "SPARK_LOCAL_IP": LOOPBACK,
    }
    arguments = ["--master", settings.master]
    for name, value in settings.server_conf().items():
        arguments += ["--conf", f"{name}={value}"]
    settings.metastore.parent.mkdir(parents=True, exist_ok=True)
    settings.pid_file.unlink(missing_ok=True)
    launched = subprocess.run(
        ["bash", str(spark_home / "sbin" / "start-connect-server.sh"), *arguments],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    logs_found = sorted(logs.glob(f"spark-{IDENT}-{SERVER_CLASS}-1-*.out"))
    log = logs_found[-1] if logs_found else logs / "unknown.out"
    if launched.returncode != 0 or not settings.pid_file.exists():
        raise EngineError(
            f"the Spark engine did not start ({(launched.stderr or launched.stdout).strip()[-2000:]}); "
            f"log {log}:\n{_log_tail(log)}"
        )
    state = EngineState(url=settings.url, pid=int(settings.pid_file.read_text().strip()), log=log)
    settings.state_file.write_text(state.model_dump_json(indent=2))
    return state


def _wait_until_it_answers(settings: EngineSettings, state: EngineState) -> None:
    """Wait for the port, then open the catalog: the metastore client's 3 s start belongs here,
    not in the first run's first registration."""
    deadline = time.monotonic() + settings.start_timeout_seconds
    while not _answers(settings.port):
        if not _is_our_server(state.pid):
            raise EngineError(f"the Spark engine exited while starting; log {state.log}:\n{_log_tail(state.log)}")
        if time.monotonic() > deadline:
            raise EngineError(
                f"the Spark engine did not answer on {state.url} within {settings.start_timeout_seconds:g} s; "
                f"log {state.log}"
            )
        time.sleep(0.25)
    with connected(state.url) as session:
        session.sql("SHOW DATABASES").collect()


def start(settings: EngineSettings) -> tuple[EngineState, bool]:
    """Start the engine unless it already runs; return it and whether this call started it."""
    with _lock(settings):
        running = status(settings)
        if running is not None:
            return running, False
        if _answers(settings.port):
            raise EngineError(
                f"port {settings.port} on {LOOPBACK} is taken by another program; choose another with --port"
            )
        state = _launch(settings)
        try:
            _wait_until_it_answers(settings, state)
        except BaseException:
            _terminate(state.pid)
            raise
        return state, True


def _terminate(pid: int, grace_seconds: float = 30) -> None:
    if not _is_our_server(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while _is_our_server(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _is_our_server(pid):
        os.kill(pid, signal.SIGKILL)


def stop(settings: EngineSettings) -> bool:
    """Stop the engine recorded in `settings.home`; False if none was running."""
    with _lock(settings):
        try:
            state = EngineState.model_validate_json(settings.state_file.read_text())
        except (OSError, ValueError):
            return False
        was_running = _is_our_server(state.pid)
        _terminate(state.pid)
        settings.state_file.unlink(missing_ok=True)
        settings.pid_file.unlink(missing_ok=True)
        return was_running


@contextmanager
def running(settings: EngineSettings) -> Iterator[EngineState]:
    """The engine for the length of a block: started if needed, and stopped only if started here."""
    state, started = start(settings)
    try:
        yield state
    finally:
        if started:
            stop(settings)
