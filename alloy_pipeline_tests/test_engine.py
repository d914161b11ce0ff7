"""The local engine, and the pipeline as a user runs it: `dagster asset materialize` processes that
are clients of one Spark Connect server, or run local Spark themselves when SPARK_REMOTE is unset."""

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import grpc
import pyarrow.parquet as pq
import pytest
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import SparkSession
from pyspark.sql.connect.session import SparkSession as ConnectSession

from alloy_pipeline import engine as engines
from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.cli import engine_command
from alloy_pipeline.engine import EngineError, EngineSettings
from alloy_pipeline.lake import LakeResource
from alloy_pipeline.spark import SparkConnectUnreachable, connect_session, endpoint, on_loopback
from alloy_pipeline_tests.conftest import ENGINE_TIME_ZONE, STARTER_SECRETS
from alloy_pipeline_tests.harness import API_KEY, REPO, Pipeline

QUERY = "dw_container_job"
QUERIES = ["DW Container Job", "Graffiti Reports"]


def materialize_in_subprocess(day: str, environment: dict[str, str], select: str = "*") -> str:
    """`dagster asset materialize`, as a user runs it; returns its output."""
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "alloy_pipeline.definitions",
            "--select",
            select,
            "--partition",
            day,
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-8000:]
    return output


def user_environment(simulator: AlloySimulator, tmp_path: Path, queries: list[str]) -> dict[str, str]:
    aqs_dir = tmp_path / "aqs"
    aqs_dir.mkdir()
    for name in queries:
        shutil.copy(REPO / "aqs_queries" / f"{name}.json", aqs_dir)
    (tmp_path / "dagster_home").mkdir()
    environment = {
        **os.environ,
        "ALLOY_API_URL": simulator.url,
        "ALLOY_API_KEY": API_KEY,
        "ALLOY_AQS_DIR": str(aqs_dir),
        "ALLOY_RAW_ZONE": str(tmp_path / "raw"),
        "ALLOY_REFINED_ZONE": str(tmp_path / "refined"),
        "ALLOY_RAW_DATABASE": f"raw_{tmp_path.name}",
        "ALLOY_REFINED_DATABASE": f"refined_{tmp_path.name}",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    environment.pop("SPARK_REMOTE", None)
    environment.pop("SPARK_CONNECT_MODE_ENABLED", None)
    return environment


def step_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = record.timestamp
    return {step: (starts[step], ends[step]) for step in starts}


def overlap(first: tuple[float, float], second: tuple[float, float]) -> bool:
    return first[0] < second[1] and second[0] < first[1]


def test_parallel_steps_are_clients_of_one_engine(engine: EngineSettings, spark: SparkSession, tmp_path: Path) -> None:
    """One run of two queries: steps in parallel processes, all talking to the engine, with one
    Alloy export in flight at a time, and every table registered in the engine's one catalog."""
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, task_seconds=1.0) as simulator:
        environment = user_environment(simulator, tmp_path, QUERIES) | {
            "SPARK_REMOTE": engine.url,
            "ALLOY_MAX_CONCURRENT_EXPORTS": "1",
        }
        output = materialize_in_subprocess("2024-03-01", environment)
    assert "in-memory catalog" not in output
    assert "Executing steps using multiprocess executor" in output, "a run of several steps runs them in processes"
    assert f"on {engine.endpoint}" in output, "each step logs the engine it talks to"
    assert token_of(engine) not in output, "and never its token"

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        windows = step_windows(instance, run.run_id)
    raw = [window for step, window in windows.items() if "__raw__" in step]
    snapshots = [window for step, window in windows.items() if "__snapshot__" in step]
    assert len(raw) == len(snapshots) == len(QUERIES)
    assert not any(overlap(a, b) for i, a in enumerate(raw) for b in raw[i + 1 :]), "one export at a time"
    assert any(overlap(a, b) for a in raw for b in snapshots), "other steps run alongside the export"

    lake = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"))
    for query in ("dw_container_job", "graffiti_reports"):
        [manifest] = lake.snapshot_manifests(query)
        [count] = spark.sql(
            f"SELECT count(*) AS n FROM refined_{tmp_path.name}.{query}_{query} WHERE snapshot_date = '20240301'"
        ).collect()
        assert count.n == manifest.tables[query].rows, f"{query} is registered in the engine's catalog"
    state = engines.status(engine)
    assert state is not None and "Spark Connect - session_id" in state.log.read_text(errors="replace")


@pytest.mark.own_spark
def test_local_spark_without_spark_remote(simulator: AlloySimulator, tmp_path: Path) -> None:
    """Without SPARK_REMOTE a step runs local Spark itself; its catalog ends with it, and it says so."""
    environment = user_environment(simulator, tmp_path, ["Graffiti Reports"])
    output = materialize_in_subprocess("2024-03-01", environment, select="alloy/raw/graffiti_reports")
    [manifest] = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined")).raw_manifests(
        "graffiti_reports"
    )
    assert manifest.tables["graffiti_reports"].rows == pq.read_table(manifest.tables["graffiti_reports"].path).num_rows
    assert "registering in local Spark's in-memory catalog, which ends with this step" in output
    assert "Executing steps in process" in output, "a run of one step runs it in the run's own process"


def test_import_timestamp_is_utc_whatever_the_time_zones(
    engine: EngineSettings, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine defaults to another time zone, and the step's machine to a third."""
    with ConnectSession.builder.remote(engine.url).create() as fresh:
        assert fresh.conf.get("spark.sql.session.timeZone") == ENGINE_TIME_ZONE
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        pipeline.run("2024-07-01", group="alloy_raw")
    finally:
        monkeypatch.undo()
        time.tzset()
    manifest = pipeline.raw_manifest(QUERY, "2024-07-01")
    assert manifest is not None
    requested = manifest.requested_at.astimezone(dt.UTC)
    table = pq.read_table(manifest.tables[QUERY].path, columns=["import_timestamp", "import_datetime"]).to_pylist()
    assert {row["import_datetime"].replace(tzinfo=dt.UTC) for row in table} == {requested}
    [epoch_text] = {row["import_timestamp"] for row in table}
    assert re.fullmatch(r"\d{10}\.\d{1,6}", epoch_text), "epoch seconds as the old jobs wrote them"
    assert dt.datetime.fromtimestamp(float(epoch_text), dt.UTC) == requested


def test_start_reuses_the_running_engine(engine: EngineSettings) -> None:
    """And knows the server it started by its start time, its command line and its port."""
    running = engines.status(engine)
    assert running is not None and running.started is not None and not running.stop_when_unused
    assert engines._listens_on(running.pid, engine.port)
    assert engines.start(engine) == (running, False)


def test_start_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EngineError, match=f"port {port} .* is taken by another program"):
            engines.start(EngineSettings(home=tmp_path, port=port))


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        ("sc://127.0.0.1:15002", True),
        ("sc://localhost:15002/;user_id=analyst", True),
        ("sc://localhost:15002/;token=secret", True),
        ("sc://[::1]:15002", True),
        ("sc://spark.council.example:443/;use_ssl=true;token=secret", False),
        ("sc://10.0.0.7:15002", False),
        ("sc://127.0.0.2:15002", True),
        ("sc://localhost.council.example:15002", False),
    ],
)
def test_only_clients_on_loopback_give_up_reattachable_execution(remote: str, local: bool) -> None:
    assert on_loopback(remote) is local


def test_endpoint_leaves_the_token_out() -> None:
    assert endpoint("sc://localhost:15002/;token=secret;user_id=analyst") == "sc://localhost:15002"
    assert endpoint("sc://10.0.0.7:15002") == "sc://10.0.0.7:15002"


def token_of(settings: EngineSettings) -> str:
    return settings.token_file.read_text()


@pytest.mark.parametrize(
    ("credentials", "refusal"),
    [
        ("", "No authentication token provided"),
        ("/;token=not-the-engines-token", "Invalid authentication token"),
    ],
)
def test_a_client_without_the_engines_token_is_refused(engine: EngineSettings, credentials: str, refusal: str) -> None:
    """Over plain TCP to 127.0.0.1 without a token, and over local credentials with a wrong one.

    A session of its own (not the builder's), so the refused one never becomes this process's default."""
    hosts = ["127.0.0.1", "localhost"] if not credentials else ["localhost"]
    for host in hosts:
        outsider = ConnectSession(connection=f"sc://{host}:{engine.port}{credentials}")
        try:
            with pytest.raises(SparkConnectGrpcException, match=refusal) as refused:
                outsider.sql("SELECT 1").collect()
            assert refused.value.getGrpcStatusCode() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            outsider.client.close()


REFUSED_THEN_ADMITTED = """
import os, sys
from alloy_pipeline.spark import SparkConnectRefused, connect_session
try:
    connect_session(sys.argv[1])
except SparkConnectRefused as refused:
    print(f"{type(refused).__name__}: {refused}", file=sys.stderr)
print(connect_session(os.environ["SPARK_REMOTE"]).sql("SELECT 'admitted' AS answer").first().answer)
"""


def test_a_refused_step_is_told_where_the_token_comes_from(engine: EngineSettings) -> None:
    """`connect_session`, as a step's SparkResource opens it, in a process of its own (a process
    keeps its first session): the error names the endpoint and `engine start`, never the token,
    and the refused session does not stand in for the next one."""
    wrong = "not-the-engines-token"
    completed = subprocess.run(
        [sys.executable, "-c", REFUSED_THEN_ADMITTED, f"{engine.endpoint}/;token={wrong}"],
        env={**os.environ, "SPARK_REMOTE": engine.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "admitted"
    assert f"SparkConnectRefused: the Spark Connect server at {engine.endpoint} refused" in completed.stderr
    assert "`alloy-pipeline engine start` prints" in completed.stderr
    assert wrong not in completed.stderr and token_of(engine) not in completed.stderr


GONE_TOKEN = "a-token-for-no-log"


@pytest.mark.parametrize("port_state", ["nothing-listens", "accepts-and-never-answers"])
def test_a_step_whose_engine_is_gone_fails_within_its_patience(
    port_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`connect_session`, as a step's SparkResource opens it, on the port of a stopped or killed
    engine (refused at once), or of a hung one (accepted, never answered: within the patience, not
    gRPC's 20 s connect timeout times pyspark's retries). The error names the endpoint and
    `engine start`, never the token, and comes before a session exists: this process keeps its own."""
    patience = 1.0
    monkeypatch.setattr("alloy_pipeline.spark.ENGINE_PATIENCE_SECONDS", patience)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound, so nobody else takes the port; refusing until it listens
        if port_state == "accepts-and-never-answers":
            holder.listen()
        port = holder.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(SparkConnectUnreachable) as gone:
            connect_session(f"sc://localhost:{port}/;token={GONE_TOKEN}")
        took = time.monotonic() - began
    if port_state == "nothing-listens":
        assert took < patience and "Connection refused" in str(gone.value)
    else:
        assert patience <= took < patience + 2 and f"did not answer within {patience:g} s" in str(gone.value)
    assert str(gone.value).startswith(f"the Spark engine at sc://localhost:{port} ")
    assert "start it with `alloy-pipeline engine start`" in str(gone.value)
    assert GONE_TOKEN not in str(gone.value)


ENGINE_THAT_DIES = """
import sys, time
from concurrent import futures
import grpc
from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc
from alloy_pipeline import spark


class Configures(base_pb2_grpc.SparkConnectServiceServicer):
    # Enough of a Spark Connect server for `connect_session`, which sets its session's settings.

    def Config(self, request, context):
        return base_pb2.ConfigResponse(session_id=request.session_id, server_side_session_id="stand-in")


server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
base_pb2_grpc.add_SparkConnectServiceServicer_to_server(Configures(), server)
port = server.add_secure_port("localhost:0", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP))
server.start()
session = spark.connect_session(f"sc://localhost:{port}/;token={sys.argv[2]}")
server.stop(None).wait()  # the engine dies: killed, or stopped by `engine stop`
if sys.argv[1] == "query":
    spark.ENGINE_PATIENCE_SECONDS = 1.0
    began = time.monotonic()
    for attempt in ("first", "second"):
        try:
            session.sql("SELECT 1").collect()
        except spark.SparkConnectUnreachable as gone:
            print(f"{attempt} {time.monotonic() - began:.2f} {gone}", file=sys.stderr)
print(time.time())  # Python exits from here
"""


def test_a_step_whose_engine_dies_fails_within_its_patience_and_exits_at_once() -> None:
    """A client of an engine that answered and then died: its query fails within the patience (a
    second query at once), and its process exits at once, not after pyspark's exit hook has retried
    the engine for ten minutes, whether or not a call found the engine gone first. Two processes of
    their own, at once: a process keeps its first session."""
    runs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", ENGINE_THAT_DIES, mode, GONE_TOKEN],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("exit", "query")  # in the order they end
    }
    errors = {}
    for mode, run in runs.items():
        out, errors[mode] = run.communicate(timeout=120)
        exited = time.time()
        assert run.returncode == 0, errors[mode][-3000:]
        assert exited - float(out.split()[-1]) < 3, (
            f"{mode}: the process took {exited - float(out.split()[-1]):.1f} s to exit"
        )
    first, second = (
        re.search(rf"^{attempt} ([0-9.]+) (.*)$", errors["query"], re.MULTILINE) for attempt in ("first", "second")
    )
    assert first is not None and second is not None, errors["query"][-3000:]
    assert float(first[1]) < 3 and float(second[1]) - float(first[1]) < 0.5
    assert re.match(r"the Spark engine at sc://localhost:\d+ stopped answering \(.*Connection refused\)", first[2])
    assert "start it with `alloy-pipeline engine start`" in first[2]
    assert GONE_TOKEN not in errors["query"] + errors["exit"]


def test_the_token_is_its_owners_alone(engine: EngineSettings) -> None:
    """0600 in a 0700 folder, and nowhere else another user can read: not in the server's command
    line (`ps`), nor in its state or log."""
    state = engines.status(engine)
    assert state is not None
    token = token_of(engine)
    assert len(token) >= 40
    assert engine.url == f"sc://localhost:{engine.port}/;token={token}"
    for path, mode in ((engine.token_file, 0o600), (engine.token_file.parent, 0o700)):
        info = path.stat()
        assert (oct(info.st_mode & 0o777), info.st_uid) == (oct(mode), os.getuid()), path
    assert token.encode() not in Path(f"/proc/{state.pid}/cmdline").read_bytes()
    assert token not in engine.state_file.read_text()
    assert token not in state.log.read_text(errors="replace")


def test_engine_status_prints_the_url_with_its_token_on_stdout_only(
    engine: EngineSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `remote=$(alloy-pipeline engine start)` captures; the terminal sees where the token is."""
    assert engine_command("status", engine) == 0
    printed = capsys.readouterr()
    assert printed.out == f"{engine.url}\n"
    assert token_of(engine) not in printed.err
    assert str(engine.token_file) in printed.err


def test_the_engines_jvm_holds_none_of_its_starters_secrets(engine: EngineSettings, spark: SparkSession) -> None:
    """The test engine was started from an environment holding an Alloy key and AWS keys: neither
    its process's environment nor SQL (`reflect` reads the JVM's own) shows any of them."""
    state = engines.status(engine)
    assert state is not None
    inherited = dict(
        entry.split("=", 1) for entry in Path(f"/proc/{state.pid}/environ").read_text().split("\0") if entry
    )
    assert inherited[engines.TOKEN_VARIABLE] == token_of(engine), "the environment read is the server's own"
    assert not inherited.keys() & STARTER_SECRETS.keys()
    [row] = spark.sql(
        "SELECT reflect('java.lang.System', 'getenv') AS environment, "
        "reflect('java.lang.System', 'getenv', 'ALLOY_API_KEY') AS alloy_api_key"
    ).collect()
    assert "SPARK_HOME=" in row.environment and row.alloy_api_key == "null"
    for name, secret in STARTER_SECRETS.items():
        assert f"{name}=" not in row.environment and secret not in row.environment, name


def test_the_jvm_inherits_only_what_spark_needs() -> None:
    """An allow-list: the system's basics, Spark's and Hadoop's settings and pointers to AWS
    credentials pass; the keys, anything of Alloy's or Dagster's, and a client's settings do not."""
    kept = {
        "PATH": "/usr/bin",
        "HOME": "/home/etl",
        "LC_ALL": "en_GB.UTF-8",
        "JAVA_HOME": "/usr/lib/jvm/17",
        "SPARK_CONF_DIR": "/etc/spark",
        "HADOOP_CONF_DIR": "/etc/hadoop",
        "AWS_PROFILE": "lake",
        "AWS_REGION": "eu-west-2",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/token",
    }
    dropped = {
        "ALLOY_API_KEY": "key",
        "ALLOY_API_KEY_SECRET_ID": "prod/alloy/api-key",
        "ALLOY_API_URL": "https://api.uk.alloyapp.io",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "session",
        "DAGSTER_PG_PASSWORD": "postgres",
        "GITHUB_TOKEN": "ghp",
        "SPARK_REMOTE": "sc://localhost:15002/;token=a-client-setting",
        "SPARK_CONNECT_MODE_ENABLED": "1",
        engines.TOKEN_VARIABLE: "another-servers-token",
    }
    assert engines.server_environment(kept | dropped, "this-servers-token") == kept | {
        engines.TOKEN_VARIABLE: "this-servers-token"
    }
