"""The local Spark engine: one long-lived Spark Connect server on loopback that every step talks to.

Starting a JVM costs far more than the work of a day's small extract, and a Derby metastore
admits one JVM at a time. So on a laptop one engine (the Spark Connect server that ships in the
pyspark wheel) owns the JVM and the catalog, and every Dagster step is a thin client of it, set
by `SPARK_REMOTE`: the same code path that talks to a cluster's Connect endpoint in production.

The engine's state (pid file, `engine.json`, log) lives in its home folder; `stop` ends only the
process recorded there, and only if it is still that Spark Connect server.

Nobody else gets in. A Connect client can read and write any file the engine's user can, and run
SQL in a JVM, so an open port on a shared machine would hand all that to every local user. `start`
therefore gives each server a fresh secret token (Spark Connect's pre-shared key,
`SPARK_CONNECT_AUTHENTICATE_TOKEN`), kept in `home/secret/token` (0600 in a 0700 folder), and
every client presents it: `EngineSettings.url`, the SPARK_REMOTE that `engine start` prints,
carries it as `;token=…`. And the JVM starts from an environment holding only what Spark needs
(`server_environment`), so a client with the token still cannot read the Alloy key or the AWS
credentials of whoever started it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pyspark
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from alloy_pipeline.spark import LOCAL_SPARK_CONFIG, connected

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
IDENT = "alloy-pipeline"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 15002
TOKEN_VARIABLE = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
"""Where the server reads its token: the environment, because a `--conf` would sit in the JVM's
command line, which every local user can read in `ps` and /proc/<pid>/cmdline."""
CLIENT_HOST = "localhost"
"""The host clients name. A client that sends a token demands TLS, except from `localhost`, where
pyspark uses gRPC's local credentials (plain TCP, refused unless the peer is loopback): the engine
has no certificate, and its token never leaves the machine."""

INHERITED_VARIABLES = frozenset(
    {
        # The machine and its user: where java and python are, whose home, locale and time zone.
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "JAVA_HOME",
        "JAVA_TOOL_OPTIONS",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        # Where AWS's default credential chain finds credentials (a profile, a role, a token file),
        # and which region and endpoint: never the keys themselves.
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_EC2_METADATA_DISABLED",
    }
)
"""The variables the engine's JVM inherits by name; see `server_environment`."""
INHERITED_PREFIXES = ("LC_", "SPARK_", "HADOOP_", "PYSPARK_")
"""Families the JVM inherits: the locale, and the operator's settings of Spark and Hadoop."""
NEVER_INHERITED = frozenset({"SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", TOKEN_VARIABLE})
"""A client's settings (they would make the server a client) and any token but its own."""


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
    def endpoint(self) -> str:
        """The server's address without its token: safe to log and to record."""
        return f"sc://{CLIENT_HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The SPARK_REMOTE of this engine's clients: its endpoint and the token of the running server.

        Read from the token file each time, so it is the token of the server now running. Raises
        `EngineError` when there is none: the engine never started, or an alloy-pipeline from
        before tokens started it (stop it and start it again).
        """
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            token = ""
        if not token:
            raise EngineError(
                f"no token in {self.token_file}: start the engine with `alloy-pipeline engine start` "
                "(if one is running, it predates tokens: `alloy-pipeline engine stop` it first)"
            )
        return f"{self.endpoint}/;token={token}"

    @property
    def state_file(self) -> Path:
        return self.home / "engine.json"

    @property
    def token_file(self) -> Path:
        """The running server's token, readable by its owner only (0600, in a 0700 folder)."""
        return self.home / "secret" / "token"

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
    """What `start` recorded about the server it started (never its token: see `EngineSettings.url`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(
        validation_alias=AliasChoices("endpoint", "url"),
        description="The server's address; `url` in the state of an engine started before tokens, so "
        "`stop` still ends it.",
    )
    pid: int
    log: Path

    @property
    def port(self) -> int:
        port = urlsplit(self.endpoint).port
        if port is None:
            raise ValueError(f"no port in the recorded endpoint {self.endpoint}")
        return port


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
    if not _is_our_server(state.pid) or not _answers(state.port):
        return None
    return state


def server_environment(inherited: Mapping[str, str], token: str) -> dict[str, str]:
    """The environment of the engine's JVM: what it needs from `inherited`, and its token.

    An allow-list (`INHERITED_VARIABLES`, `INHERITED_PREFIXES`), not a deny-list: any client can
    read the JVM's environment (SQL's `reflect('java.lang.System', 'getenv')`, or `os.environ` in a
    Python UDF, whose worker inherits it), and the Dagster process that starts it holds secrets
    under names nobody can list in advance (`ALLOY_API_KEY`, the AWS keys, a Postgres password, a
    CI token).
    What Spark needs is short and known: the system's basics, Spark's and Hadoop's own variables,
    and pointers to AWS credentials. S3 credentials reach `s3a://` through the default credential
    chain (a profile in `AWS_PROFILE`'s files, an instance or task role, web identity) or through
    `spark.hadoop.fs.s3a.*` settings in `$SPARK_CONF_DIR/spark-defaults.conf`, never through the
    starter's `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`. A variable Spark
    turns out to need joins the allow-list here.
    """
    kept = {
        name: value
        for name, value in inherited.items()
        if (name in INHERITED_VARIABLES or name.startswith(INHERITED_PREFIXES)) and name not in NEVER_INHERITED
    }
    return kept | {TOKEN_VARIABLE: token}


def _private_folder(folder: Path) -> Path:
    """`folder`, created if needed, owned by this user and closed to everyone else (0700)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise EngineError(f"{folder} is not a folder of this user's: it cannot hold the engine's token")
    folder.chmod(0o700)
    return folder


def _new_token(settings: EngineSettings) -> str:
    """A fresh token for a server about to start, written to `settings.token_file` as a whole.

    The file is created with mode 0600 under a temporary name and then renamed over the old one,
    so no reader ever sees it readable by others, empty or half-written.
    """
    token = secrets.token_urlsafe(32)
    folder = _private_folder(settings.token_file.parent)
    temporary = folder / f".token-{secrets.token_hex(8)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, token.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, settings.token_file)
    return token


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


def _launch(settings: EngineSettings, inherited: Mapping[str, str]) -> EngineState:
    spark_home = Path(pyspark.__file__).parent
    logs = settings.home.resolve() / "logs"
    environment = server_environment(inherited, _new_token(settings)) | {
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
    state = EngineState(endpoint=settings.endpoint, pid=int(settings.pid_file.read_text().strip()), log=log)
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
                f"the Spark engine did not answer on {state.endpoint} within {settings.start_timeout_seconds:g} s; "
                f"log {state.log}"
            )
        time.sleep(0.25)
    with connected(settings.url) as session:
        session.sql("SHOW DATABASES").collect()


def start(settings: EngineSettings, inherited: Mapping[str, str] | None = None) -> tuple[EngineState, bool]:
    """Start the engine unless it already runs; return it and whether this call started it.

    A new server inherits what it needs of `inherited` (default: this process's environment),
    filtered by `server_environment`; its clients' URL is `settings.url`.
    """
    with _lock(settings):
        running = status(settings)
        if running is not None:
            return running, False
        if _answers(settings.port):
            raise EngineError(
                f"port {settings.port} on {LOOPBACK} is taken by another program; choose another with --port"
            )
        state = _launch(settings, os.environ if inherited is None else inherited)
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
        for recorded in (settings.state_file, settings.pid_file, settings.token_file):
            recorded.unlink(missing_ok=True)
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
