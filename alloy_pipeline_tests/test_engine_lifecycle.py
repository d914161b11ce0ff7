"""Who may stop the local engine: `stop` ends only this folder's engine (never a process that took
its pid, a tail of its log, or the engine of the folder a copy came from), and `running()` blocks
share an engine, the last one out stopping it unless `start` keeps it.

No JVM starts here beyond the session's engine: `start` and `running()` launch a stand-in, a
process with the server's identifying command line that listens on its port. Everything after the
launch (the state, the identity checks, the leases, the signals) is the real code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alloy_pipeline import engine as engines
from alloy_pipeline.cli import engine_command, main
from alloy_pipeline.engine import IDENTIFYING_SETTINGS, SERVER_CLASS, EngineSettings, EngineState
from alloy_pipeline_tests.harness import wait_until

LISTENER = """
import socket, sys, time
listening = socket.socket()
listening.bind(("127.0.0.1", int(sys.argv[1])))
listening.listen()
time.sleep(120)
"""
"""A process that listens on a port and does nothing else, whatever else its arguments say."""
SLEEPER = "import time; time.sleep(120)"


def stand_in_arguments(settings: EngineSettings) -> list[str]:
    """What the engine's command line says about it: its class, its port, its folder's catalog."""
    conf = settings.server_conf()
    return [SERVER_CLASS, f"spark.connect.grpc.binding.port={settings.port}"] + [
        f"{name}={conf[name]}" for name in IDENTIFYING_SETTINGS
    ]


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes `start` and `running()` launch in place of the Spark Connect server."""
    launched: list[subprocess.Popen[bytes]] = []

    def launch(settings: EngineSettings, inherited: object) -> tuple[int, Path]:
        engines._new_token(settings)
        server = subprocess.Popen([sys.executable, "-c", LISTENER, str(settings.port), *stand_in_arguments(settings)])
        launched.append(server)
        wait_until(lambda: engines._listens_on(server.pid, settings.port), "the stand-in listens", 10, poll=0.02)
        return server.pid, settings.home / "stand-in.out"

    monkeypatch.setattr(engines, "_launch", launch)
    monkeypatch.setattr(engines, "_wait_until_it_answers", lambda settings, state: None)
    yield launched
    for server in launched:
        server.kill()
        server.wait()


def ended(server: subprocess.Popen[bytes]) -> bool:
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return True


def record(settings: EngineSettings, pid: int, started: str | None) -> None:
    """State as `start` records it, naming `pid`, and the token it keeps beside it."""
    settings.home.mkdir(parents=True, exist_ok=True)
    state = EngineState(endpoint=settings.endpoint, pid=pid, log=settings.home / "server.out", started=started)
    settings.state_file.write_text(state.model_dump_json())
    settings.token_file.parent.mkdir(exist_ok=True)
    settings.token_file.write_text("a stopped server's token")


@pytest.mark.parametrize(
    ("decoy", "reused", "reason"),
    [
        (["sleep", "60"], True, "is now another process"),
        (
            [sys.executable, "-c", SLEEPER, f"logs/spark-alloy-pipeline-{SERVER_CLASS}-1-host.out"],
            False,
            "is not a Spark Connect server",
        ),
        (
            [sys.executable, "-c", SLEEPER, SERVER_CLASS],
            False,
            "is not the Spark Connect server of this data folder and port",
        ),
    ],
    ids=["a-process-that-took-its-pid", "a-tail-of-its-log", "a-process-naming-the-server-class"],
)
def test_stop_leaves_alone_a_process_that_is_not_the_engine(
    decoy: list[str], reused: bool, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recorded pid names a process that is not the server `start` launched: `stop` sends it no
    signal, says why, and forgets the records (they describe no engine)."""
    bystander = subprocess.Popen(decoy)
    try:
        settings = EngineSettings.under(tmp_path, port=engines.free_port())
        # Popen returns once the child's exec began; its command line is readable only once the
        # new program is loaded, which on a busy machine can be milliseconds later.
        wait_until(
            lambda: bool(getattr(engines._process(bystander.pid), "command", "")), "the decoy's command line", 10, 0.01
        )
        process = engines._process(bystander.pid)
        assert process is not None
        record(settings, bystander.pid, "an earlier start time" if reused else process.started)
        assert engines.status(settings) is None
        assert engine_command("stop", settings) == 0
        told = capsys.readouterr().err
        assert f"no Spark engine was running from {settings.home}: its recorded pid {bystander.pid} {reason}" in told
        assert "not stopping it" in told
        assert bystander.poll() is None, "another program's process was left running"
        assert not settings.state_file.exists() and not settings.token_file.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_leaves_alone_the_engine_of_the_folder_a_copy_came_from(
    tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`cp -r data data-copy` copies the engine's state: stopping the copy's engine must not stop
    the original's, whose pid, start time and port the copy's state names."""
    original = EngineSettings.under(tmp_path / "data", port=engines.free_port())
    engines.start(original)
    copy = EngineSettings.under(tmp_path / "data-copy", port=original.port)
    shutil.copytree(original.home, copy.home)

    assert engines.status(copy) is None
    assert engine_command("stop", copy) == 0
    told = capsys.readouterr().err
    metastore = "spark.hadoop.javax.jdo.option.ConnectionURL"
    lacks = f"(its command line lacks `{metastore}={copy.server_conf()[metastore]}`"
    assert f"is not the Spark Connect server of this data folder and port {lacks}" in told
    assert engines.status(original) is not None, "the original's engine still runs"
    assert not copy.state_file.exists()

    outcome = engines.stop(original)
    assert outcome.stopped and f"pid {stand_ins[0].pid}" in outcome.message
    assert ended(stand_ins[0])


def test_the_last_running_block_to_leave_stops_the_engine(
    tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    """`make demo` starts the engine, `make sql` joins it, the demo ends first: the engine stays
    for the query, and goes when the query ends. A lease whose holder died counts for nothing."""
    settings = EngineSettings.under(tmp_path, port=engines.free_port())
    demo, query = engines.running(settings), engines.running(settings)
    state = demo.__enter__()
    assert query.__enter__() == state and len(stand_ins) == 1, "the second block joins the first's engine"
    settings.users.joinpath("4194304-ended").touch()  # the lease of a block whose process was killed

    demo.__exit__(None, None, None)
    assert engines.status(settings) == state, "the engine stays while a block still uses it"

    query.__exit__(None, None, None)
    assert engines.status(settings) is None and ended(stand_ins[0])
    assert list(settings.users.iterdir()) == [], "the stale lease was cleared"


def test_an_engine_start_was_called_on_stays_after_every_running_block(
    tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    """`engine start` while a `running()` block holds the engine it started (`make dev` during
    `make demo`): the engine then stays until `engine stop`, as one `start` started would."""
    settings = EngineSettings.under(tmp_path, port=engines.free_port())
    with engines.running(settings) as state:
        assert state.stop_when_unused
        assert engines.start(settings) == (state.model_copy(update={"stop_when_unused": False}), False)
    with engines.running(settings):
        pass
    assert engines.status(settings) is not None and len(stand_ins) == 1

    assert engines.stop(settings).stopped
    assert ended(stand_ins[0])


def test_running_never_stops_the_engine_start_started(engine: EngineSettings) -> None:
    """The session's engine, started by `engines.start` as `engine start` starts one."""
    with engines.running(engine) as state:
        assert state == engines.status(engine)
    assert engines.status(engine) == state


def test_an_engine_on_another_master_is_refused_not_reused(
    tmp_path: Path, stand_ins: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`engine start --master spark://…` records its master, which `status` shows; a second start
    naming another master is refused, and one naming none (`make dev` without SPARK_MASTER, `make
    sql`) uses the engine that runs."""
    cluster = "spark://127.0.0.1:7077"
    engine = ["--data", str(tmp_path), "--port", str(engines.free_port())]
    assert main(["engine", "start", *engine, "--master", cluster]) == 0
    assert f"Spark engine started (pid {stand_ins[0].pid}, master {cluster}," in capsys.readouterr().err
    assert main(["engine", "status", *engine]) == 0
    assert f"master {cluster}," in capsys.readouterr().err

    assert main(["engine", "start", *engine, "--master", "local[2]"]) == 1
    assert (
        f"alloy-pipeline engine start: the Spark engine of {tmp_path / 'engine'} already runs on master {cluster}, "
        "not local[2]: stop it first" in capsys.readouterr().err
    )
    assert main(["engine", "start", *engine]) == 0
    assert f"already running (pid {stand_ins[0].pid}, master {cluster}," in capsys.readouterr().err
    assert len(stand_ins) == 1 and stand_ins[0].poll() is None

    assert main(["engine", "stop", *engine]) == 0
    assert ended(stand_ins[0])


@pytest.mark.parametrize("command", ["engine start", "dev"])
@pytest.mark.parametrize("master", ["yarn", "spark://host", "spark://host:99999", "local[0]", "k8s://https://h:443"])
def test_a_master_the_engine_cannot_run_on_is_refused_before_anything_starts(
    command: str, master: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main([*command.split(), "--data", str(tmp_path), "--master", master])
    assert refused.value.code == 2
    assert f"argument --master: {master!r} is not a Spark master the engine runs on" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("master", "bound_to_loopback"),
    [
        ("local", True),
        ("local[*]", True),
        ("local[4,2]", True),
        ("spark://127.0.0.1:7077", True),
        ("spark://localhost:7077", True),
        ("spark://10.0.0.5:7077", False),
        ("spark://spark-master.internal:7077,spark-standby.internal:7077", False),
    ],
)
def test_a_driver_binds_to_loopback_only_where_every_executor_is_on_this_machine(
    master: str, bound_to_loopback: bool
) -> None:
    """Executors on other hosts must reach the engine's driver: it binds to loopback only for local
    Spark and a cluster whose master is on loopback."""
    assert EngineSettings(master=master).master == master
    assert engines._on_this_machine(master) is bound_to_loopback
