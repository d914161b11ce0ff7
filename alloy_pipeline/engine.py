"""The local Spark engine: one long-lived Spark Connect server on loopback that every step talks to.

Starting a JVM costs far more than the work of a day's small extract, and a Derby metastore
admits one JVM at a time. So on a laptop one engine (the Spark Connect server that ships in the
pyspark wheel) owns the JVM and the catalog, and every Dagster step is a thin client of it, set
by `SPARK_REMOTE`: the same code path that talks to a cluster's Connect endpoint in production.

The engine's state (pid file, `engine.json`, log) lives in its home folder; `stop` ends only the
process recorded there, and only while it is still that process (the same start time) and this
folder's Spark Connect server (its catalog and port in its command line, listening on that port):
pids get reused, and data folders get copied with their state.

`start` keeps the engine until `stop`; `running()` keeps it for a block, and shares it: each block
holds a lease in `home/users`, and an engine that a `running()` started is stopped by the last
block to leave (`make sql` while `make demo` runs must not lose the engine), unless `start` was
called on it meanwhile.

Nobody else gets in. A Connect client can read and write any file the engine's user can, and run
SQL in a JVM, so an open port on a shared machine would hand all that to every local user. `start`
therefore gives each server a fresh secret token (Spark Connect's pre-shared key,
`SPARK_CONNECT_AUTHENTICATE_TOKEN`), kept in `home/secret/token` (0600 in a 0700 folder), and
every client presents it: `EngineSettings.url`, the SPARK_REMOTE that `engine start` prints,
carries it as `;token=…`. And the JVM starts from an environment holding only what Spark needs
(`server_environment`), so a client with the token still cannot read the Alloy key or the AWS
credentials of whoever started it.

On a Spark standalone cluster (`master="spark://host:port"`) the engine is the cluster's driver:
the Connect port, the catalog and the metastore stay here, and the work runs in executors in the
workers' JVMs, which inherit the workers' environment, never the engine's.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyspark
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pyspark.sql.connect.session import SparkSession as ConnectSession

from alloy_pipeline.loopback import is_loopback
from alloy_pipeline.spark import LOCAL_SPARK_CONFIG

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
IDENT = "alloy-pipeline"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 15002
LOCAL_MASTER = LOCAL_SPARK_CONFIG["spark.master"]
"""The master of an engine started without one: Spark in the engine's own JVM."""
MASTER = re.compile(r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|spark://[^\s/:,]+:\d{1,5}(,[^\s/:,]+:\d{1,5})*")
"""The masters the engine runs on: local Spark (`local`, `local[4]`, `local[*]`, `local[4,2]` with
retries), or a standalone cluster's master(s) (`spark://host:7077`, `spark://a:7077,b:7077`)."""
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


def spark_master(value: str) -> str:
    """`value` if it is a master the engine runs on (`MASTER`); else a `ValueError` saying which are."""
    if not MASTER.fullmatch(value) or any(int(port) > 65535 for port in re.findall(r":(\d+)", value)):
        raise ValueError(
            f"{value!r} is not a Spark master the engine runs on: use local Spark (`local[2]`, `local[*]`) "
            "or a Spark standalone cluster's `spark://host:port`"
        )
    return value


def _on_this_machine(master: str) -> bool:
    """Whether every executor of `master` runs on this machine: local Spark, or a cluster whose
    master is on loopback (which no worker on another host can register with)."""
    hosts = master.removeprefix("spark://").split(",")
    return master.startswith("local") or all(is_loopback(host.rsplit(":", 1)[0]) for host in hosts)


class EngineSettings(BaseModel):
    """Where the engine keeps its state and catalog, and how big it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default=Path("data/engine"), description="Pid file, engine.json and the server log.")
    metastore: Path = Field(
        default=Path("data/catalog/metastore_db"), description="The Derby metastore behind the Hive catalog."
    )
    warehouse: Path = Field(default=Path("data/catalog/warehouse"), description="Spark's warehouse folder.")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="Loopback port of the Connect server.")
    master: str | None = Field(
        default=None,
        description="Spark master of the engine (`spark_master`): `LOCAL_MASTER` when None, which also "
        "accepts a running engine whatever its master, where a named one must be the running engine's.",
    )
    driver_memory: str = Field(default="4g", description="Heap of the engine's JVM.")
    executor_memory: str | None = Field(
        default=None, description="Heap of each executor on a cluster (`spark.executor.memory`); Spark's 1g when None."
    )
    cores_max: int | None = Field(
        default=None,
        ge=1,
        description="The cores the engine takes of a cluster in all (`spark.cores.max`); every free core when None.",
    )
    extra_conf: dict[str, str] = Field(default_factory=dict, description="More --conf settings for the server.")
    java_options: tuple[str, ...] = Field(
        default=(),
        description="More options of the engine's JVM (after its Derby settings), e.g. a JIT or GC flag.",
    )
    start_timeout_seconds: float = Field(default=180, gt=0, description="How long `start` waits for an answer.")

    @field_validator("master")
    @classmethod
    def _known_master(cls, master: str | None) -> str | None:
        return None if master is None else spark_master(master)

    @property
    def master_to_start(self) -> str:
        return self.master or LOCAL_MASTER

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

    @property
    def users(self) -> Path:
        """The leases of the `running()` blocks using the engine: one flock'd file each."""
        return self.home / "users"

    def server_conf(self) -> dict[str, str]:
        """The local settings of `spark.py`, the Hive catalog on Derby, bound to loopback, and the
        executors' size on a cluster. Paths are absolute: a cluster's executors run elsewhere."""
        metastore, warehouse = self.metastore.resolve(), self.warehouse.resolve()
        conf = {name: value for name, value in LOCAL_SPARK_CONFIG.items() if name != "spark.master"}
        if self.executor_memory is not None:
            conf["spark.executor.memory"] = self.executor_memory
        if self.cores_max is not None:
            conf["spark.cores.max"] = str(self.cores_max)
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
                    " ".join(
                        (
                            f"-Dderby.system.home={metastore.parent}",
                            f"-Dderby.stream.error.file={self.home.resolve() / 'derby.log'}",
                            *self.java_options,
                        )
                    )
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
    master: str = Field(
        default=LOCAL_MASTER,
        description="The Spark master it was started with; the local one in the state of an engine started "
        "before masters were recorded, which were all local.",
    )
    started: str | None = Field(
        default=None,
        description="The server process's start time as the system reports it (/proc/<pid>/stat's starttime, "
        "else `ps -o lstart`), which tells it from a later process given the same pid; None in the state "
        "of an engine started before it was recorded.",
    )
    stop_when_unused: bool = Field(
        default=False,
        description="Whether the last `running()` block to leave stops it: set when a `running()` started it, "
        "cleared by `start`.",
    )

    @property
    def port(self) -> int:
        port = urlsplit(self.endpoint).port
        if port is None:
            raise ValueError(f"no port in the recorded endpoint {self.endpoint}")
        return port


PROC = Path("/proc/self/stat").exists()
"""Whether this system describes processes in /proc (Linux); elsewhere `ps` does."""
IDENTIFYING_SETTINGS = ("spark.hadoop.javax.jdo.option.ConnectionURL", "spark.driver.extraJavaOptions")
"""The server settings that name a data folder: its metastore, its home (derby.log)."""


@dataclass(frozen=True)
class _Process:
    """A live process as the system describes it."""

    started: str
    """Its start time, in the system's own terms: equal for one process, different for a later one."""
    command: str
    """Its arguments, joined by spaces."""


def _process(pid: int) -> _Process | None:
    """The live process `pid`, or None when there is none (a zombie, which cannot serve, counts as none)."""
    if PROC:
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        fields = stat_line[stat_line.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        state, started = fields[0], fields[19]  # fields 3 and 22 of proc(5)
        command = " ".join(argument.decode(errors="replace") for argument in arguments.split(b"\0") if argument)
    else:
        try:
            listed = subprocess.run(
                ["ps", "-ww", "-p", str(pid), "-o", "stat=", "-o", "lstart=", "-o", "command="],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.split(maxsplit=6)
        except (OSError, subprocess.SubprocessError):
            return None
        if len(listed) < 7:
            return None
        state, started, command = listed[0], " ".join(listed[1:6]), listed[6].strip()
    return None if state.startswith(("Z", "X")) else _Process(started=started, command=command)


def _still_running(state: EngineState) -> bool:
    """Whether the process `start` launched is alive: its pid, with its start time when recorded."""
    process = _process(state.pid)
    return process is not None and state.started in (None, process.started)


def _not_the_engine(settings: EngineSettings, state: EngineState) -> str | None:
    """Why the process `state` records is not this folder's engine (a sentence), or None when it is.

    `stop` sends it SIGTERM, so it must be the process `start` launched (the same start time: a
    pid is reused once its process ends) and a Spark Connect server with this folder's catalog and
    the recorded port in its command line (a copied data folder holds another folder's engine).
    """
    process = _process(state.pid)
    if process is None:
        return f"its recorded pid {state.pid} is not running"
    if state.started is not None and process.started != state.started:
        return (
            f"its recorded pid {state.pid} is now another process (started at {process.started}, not "
            f"{state.started}): not stopping it"
        )
    conf = settings.server_conf()
    expected = [f"spark.connect.grpc.binding.port={state.port}"] + [
        f"{name}={conf[name]}" for name in IDENTIFYING_SETTINGS
    ]
    padded = f" {process.command} "
    if f" {SERVER_CLASS} " not in padded:
        return (
            f"its recorded pid {state.pid} is not a Spark Connect server (`{process.command[:200]}`): not stopping it"
        )
    missing = [argument for argument in expected if f" {argument} " not in padded]
    if missing:
        return (
            f"its recorded pid {state.pid} is not the Spark Connect server of this data folder and port (its "
            f"command line lacks `{missing[0]}`; a folder copied with its state names another folder's engine): "
            "not stopping it"
        )
    return None


def _listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port`; where /proc cannot say, whether
    anything answers on that loopback port."""
    if not PROC:
        return _answers(port)
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, status_code, inode = (row.split()[index] for index in (1, 3, 9))
            if status_code == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                sockets.add(f"socket:[{inode}]")
    try:
        descriptors = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor.path) in sockets:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


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


def _recorded(settings: EngineSettings) -> EngineState | None:
    """The state `start` recorded in `settings.home`, or None."""
    try:
        return EngineState.model_validate_json(settings.state_file.read_text())
    except (OSError, ValueError):
        return None


def _record(settings: EngineSettings, state: EngineState) -> None:
    settings.state_file.write_text(state.model_dump_json(indent=2))


def status(settings: EngineSettings) -> EngineState | None:
    """The running engine recorded in `settings.home`, or None: the recorded process must be this
    folder's engine (`_not_the_engine`) and listen on its port."""
    state = _recorded(settings)
    if state is None or _not_the_engine(settings, state) is not None or not _listens_on(state.pid, state.port):
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


def _launch(settings: EngineSettings, inherited: Mapping[str, str]) -> tuple[int, Path]:
    """Launch the server in the background (`start-connect-server.sh`); return its pid and log.

    Its driver binds to loopback when every executor runs on this machine (`_on_this_machine`);
    on a cluster elsewhere it binds where the operator's `SPARK_LOCAL_IP` (else Spark) says, which
    the executors must reach. The Connect port is loopback's either way.

    The launcher runs in a session of its own, and so does the JVM it leaves behind: a signal to
    the process group of whoever started it (Ctrl-C or SIGTERM to `make dev` or `make demo`) must
    not reach the engine, which `stop` ends (or the last `running()` block, for an engine it
    started); `spark-daemon.sh`'s nohup shields it from SIGHUP alone.
    """
    spark_home = Path(pyspark.__file__).parent
    logs = settings.home.resolve() / "logs"
    environment = server_environment(inherited, _new_token(settings)) | {
        "SPARK_HOME": str(spark_home),
        "SPARK_PID_DIR": str(settings.home.resolve()),
        "SPARK_LOG_DIR": str(logs),
        "SPARK_IDENT_STRING": IDENT,
    }
    if _on_this_machine(settings.master_to_start):
        environment["SPARK_LOCAL_IP"] = LOOPBACK
    arguments = ["--master", settings.master_to_start]
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
        start_new_session=True,
    )
    logs_found = sorted(logs.glob(f"spark-{IDENT}-{SERVER_CLASS}-1-*.out"))
    log = logs_found[-1] if logs_found else logs / "unknown.out"
    if launched.returncode != 0 or not settings.pid_file.exists():
        raise EngineError(
            f"the Spark engine did not start ({(launched.stderr or launched.stdout).strip()[-2000:]}); "
            f"log {log}:\n{_log_tail(log)}"
        )
    return int(settings.pid_file.read_text().strip()), log


def _wait_until_it_answers(settings: EngineSettings, state: EngineState) -> None:
    """Wait for the port, then open the catalog: the metastore client's 3 s start belongs here,
    not in the first run's first registration.

    The catalog is opened in a session of its own (`create`): `connected` would hand back, and
    then stop, a session this process already holds, on another server (pyspark keeps one per process).
    """
    deadline = time.monotonic() + settings.start_timeout_seconds
    while not _answers(settings.port):
        if not _still_running(state):
            raise EngineError(f"the Spark engine exited while starting; log {state.log}:\n{_log_tail(state.log)}")
        if time.monotonic() > deadline:
            raise EngineError(
                f"the Spark engine did not answer on {state.endpoint} within {settings.start_timeout_seconds:g} s; "
                f"log {state.log}"
            )
        time.sleep(0.25)
    session = ConnectSession.builder.remote(settings.url).create()
    try:
        session.sql("SHOW DATABASES").collect()
    finally:
        session.stop()


def _start(
    settings: EngineSettings, inherited: Mapping[str, str] | None, stop_when_unused: bool
) -> tuple[EngineState, bool]:
    """`start` and `running()`'s start, under the lock of `settings.home`."""
    running_now = status(settings)
    if running_now is not None:
        if settings.master not in (None, running_now.master):
            raise EngineError(
                f"the Spark engine of {settings.home} already runs on master {running_now.master}, not "
                f"{settings.master}: stop it first (`alloy-pipeline engine stop`), or leave out --master to use it"
            )
        if running_now.stop_when_unused and not stop_when_unused:
            running_now = running_now.model_copy(update={"stop_when_unused": False})
            _record(settings, running_now)
        return running_now, False
    if _answers(settings.port):
        raise EngineError(f"port {settings.port} on {LOOPBACK} is taken by another program; choose another with --port")
    pid, log = _launch(settings, os.environ if inherited is None else inherited)
    process = _process(pid)  # its start time, read now: it stays the same through spark-class's exec of java
    state = EngineState(
        endpoint=settings.endpoint,
        pid=pid,
        log=log,
        master=settings.master_to_start,
        started=process.started if process else None,
        stop_when_unused=stop_when_unused,
    )
    _record(settings, state)
    try:
        _wait_until_it_answers(settings, state)
    except BaseException:
        _terminate(state)
        raise
    return state, True


def start(settings: EngineSettings, inherited: Mapping[str, str] | None = None) -> tuple[EngineState, bool]:
    """Start the engine unless it already runs; return it and whether this call started it.

    A running engine is returned only if `settings.master` is None or its master: one on another
    master is refused (`EngineError`), rather than handing a client the wrong cluster.

    The engine then runs until `stop`, even one a `running()` block started: `engine start` is a
    promise to the operator that it stays. A new server inherits what it needs of `inherited`
    (default: this process's environment), filtered by `server_environment`; its clients' URL is
    `settings.url`.
    """
    with _lock(settings):
        return _start(settings, inherited, stop_when_unused=False)


def _terminate(state: EngineState, grace_seconds: float = 30) -> None:
    """SIGTERM the recorded process, and SIGKILL it if it outlives `grace_seconds`; the caller has
    checked it is the engine, and each signal goes only to that same process (its start time)."""
    if not _still_running(state):
        return
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while _still_running(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _still_running(state):
        os.kill(state.pid, signal.SIGKILL)


@dataclass(frozen=True)
class StopOutcome:
    """What `stop` did, for the operator."""

    stopped: bool
    """Whether it ended a server."""
    message: str
    """What it found and did, and why when it stopped nothing."""


def _stop(settings: EngineSettings) -> StopOutcome:
    """`stop` under the lock of `settings.home`."""
    state = _recorded(settings)
    if state is None:
        return StopOutcome(False, f"no Spark engine was running from {settings.home}")
    problem = _not_the_engine(settings, state)
    if problem is None:
        _terminate(state)
    for recorded in (settings.state_file, settings.pid_file, settings.token_file):
        recorded.unlink(missing_ok=True)
    if problem is not None:
        return StopOutcome(False, f"no Spark engine was running from {settings.home}: {problem}")
    return StopOutcome(True, f"Spark engine stopped (pid {state.pid}, {state.endpoint})")


def stop(settings: EngineSettings) -> StopOutcome:
    """Stop the engine recorded in `settings.home`, if that process is still this folder's engine
    (`_not_the_engine`), whoever is using it; the folder's records of it go either way."""
    with _lock(settings):
        return _stop(settings)


class _Lease:
    """A `running()` block's claim on the engine: a file in `settings.users` that it keeps flock'd.

    The kernel drops the lock when its holder ends, however it ends (a killed `make sql` included),
    so a lease file nobody holds is stale, and `_users` removes it.
    """

    def __init__(self, settings: EngineSettings) -> None:
        settings.users.mkdir(parents=True, exist_ok=True)
        self.path = settings.users / f"{os.getpid()}-{secrets.token_hex(4)}"
        self._handle = self.path.open("w")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self._handle.close()


def _users(settings: EngineSettings) -> int:
    """How many leases are held (this process's own included: each has a descriptor of its own, so
    a second one here conflicts with it), removing those whose holders have ended."""
    held = 0
    for lease in settings.users.glob("*"):
        try:
            handle = lease.open("rb")
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held += 1
                continue
        lease.unlink(missing_ok=True)
    return held


@contextmanager
def running(settings: EngineSettings) -> Iterator[EngineState]:
    """The engine for the length of a block: started if needed, and shared with every other block.

    The block holds a lease on the engine while it runs. An engine a `running()` started is stopped
    by the last block to leave, whichever started it: `make sql` while `make demo` runs keeps the
    engine until both are done. An engine that `start` started, or was called on since, stays.
    Starting and taking the lease happen under one lock, as do leaving and the check for others,
    so a block joining while another leaves never finds its engine stopped.
    """
    with _lock(settings):
        state, _ = _start(settings, None, stop_when_unused=True)
        lease = _Lease(settings)
    try:
        yield state
    finally:
        with _lock(settings):
            lease.release()
            current = _recorded(settings)
            if current is not None and current.stop_when_unused and not _users(settings):
                _stop(settings)
