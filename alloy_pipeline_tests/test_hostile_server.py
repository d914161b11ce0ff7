"""The client against a broken or hostile Alloy, and the API key's safety.

Everything runs against the simulator over real HTTP on loopback: ids that would escape a path,
task statuses the client has never seen, HTML pages with status 200, downloads cut short, bursts
of 503s while an export runs, replies that could start a second export, and zip bombs. Each must
either be ridden out or end in an `AlloyError` that names the endpoint and the task.

Whatever the key looks like (padded, as pasted from a secret or a CRLF `.env` file) and whatever
goes wrong, the key must appear only in the `Authorization` header: never in a log line, an
exception or anything chained to it, a file, or Dagster's event log and run storage.
"""

import csv
import json
import logging
import time
import traceback
from pathlib import Path

import dagster as dg
import httpx
import pytest

from alloy_pipeline.alloy.archive import ArchiveError
from alloy_pipeline.alloy.client import (
    AlloyClient,
    AlloyError,
    AlloyReplyError,
    AlloyResource,
    AlloyTaskError,
    PollPolicy,
    checked_api_url,
    max_download_bytes,
)
from alloy_pipeline.alloy.simulator import AlloySimulator, Fault
from alloy_pipeline.alloy.transport import MAX_RETRY_AFTER_SECONDS
from alloy_pipeline.aqs import load_query
from alloy_pipeline_tests.harness import API_KEY, REPO
from alloy_pipeline_tests.test_client import FAST, RecordingSleep, client

REQUEST = load_query(REPO / "aqs_queries" / "DW Container Job.json").request
CAP = 10**8
PADDED_KEYS = [f"  {API_KEY}  ", f"{API_KEY}\n", f"{API_KEY}\r\n", f"\t{API_KEY} \n"]


def chained_texts(error: BaseException) -> list[str]:
    """`error` and every exception chained to it (cause or context), as str, repr and traceback."""
    texts: list[str] = []
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), "".join(traceback.format_exception(current))]
        pending += [linked for linked in (current.__cause__, current.__context__) if linked is not None]
    return texts


def assert_absent(secrets: list[str], texts: list[str], folder: Path) -> None:
    """No secret in any text, nor in any file under `folder`."""
    for secret in secrets:
        assert not [text for text in texts if secret in text]
        assert not [path for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def polls(simulator: AlloySimulator) -> list[str]:
    """The paths of the task polls the simulator received."""
    return [seen.path for seen in simulator.requests if seen.path.startswith("/api/task/")]


def started_task(simulator: AlloySimulator) -> str:
    return polls(simulator)[0].rsplit("/", 1)[-1]


# --- the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", PADDED_KEYS, ids=["spaces", "lf", "crlf", "tab-space-lf"])
def test_a_padded_key_is_stripped_and_never_appears(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, padded: str
) -> None:
    """h11 refuses `Bearer <key>\\n`, and its error quotes the header: strip the key before sending."""
    caplog.set_level(logging.DEBUG)
    simulator.inject(Fault("status", endpoint="task", status=503, times=2))
    simulator.inject(Fault("truncated_download"))
    with client(simulator, api_key=padded) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert len(export.csv_files) == 4
    assert {seen.headers["authorization"] for seen in simulator.requests} == {f"Bearer {API_KEY}"}
    assert all(API_KEY not in seen.path + seen.query for seen in simulator.requests)
    assert_absent([API_KEY], [caplog.text], tmp_path)


@pytest.mark.parametrize(
    "key",
    [
        "left-half-3b1f right-half-9c2e",
        "left-half-3b1f\nright-half-9c2e",
        "left-half-3b1f\x00right-half-9c2e",
        "left-half-3b1fé-right-half-9c2e",
    ],
    ids=["inner-space", "inner-newline", "nul", "non-ascii"],
)
def test_a_key_that_cannot_be_a_header_is_refused_without_echoing_it(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    with pytest.raises(AlloyError, match="cannot be sent in an HTTP header") as raised:
        client(simulator, api_key=key)
    assert simulator.requests == []
    assert_absent(["left-half-3b1f", "right-half-9c2e"], [caplog.text, *chained_texts(raised.value)], tmp_path)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("reply", endpoint="task", body="<html>maintenance</html>", content_type="text/html"),
        Fault("failed_task", message="Export too large"),
        Fault("failed_task", message="proxy saw {authorization}"),
        Fault("zip_bomb"),
        Fault("reset_download", times=10),
        Fault("status", endpoint="export_file", status=500, times=10),
        Fault("disconnect", endpoint="export"),
        Fault("status", endpoint="export", status=400, body='{"echo": "{authorization}"}'),
    ],
    ids=[
        "html",
        "failed-task",
        "failed-task-echoes-the-header",
        "zip-bomb",
        "resets",
        "http-500",
        "post-dropped",
        "proxy-echoes-the-header",
    ],
)
def test_the_key_never_appears_when_an_export_fails(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: Fault
) -> None:
    caplog.set_level(logging.DEBUG)
    simulator.inject(fault)
    with (
        client(simulator, api_key=f"{API_KEY}\r\n", max_retries=2) as alloy,
        pytest.raises((AlloyError, ArchiveError)) as raised,
    ):
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert_absent([API_KEY], [caplog.text, *chained_texts(raised.value)], tmp_path)


def test_the_key_never_reaches_dagsters_event_log_or_run_storage(
    simulator: AlloySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that rides out faults, and runs that fail, as Dagster records them and in the files of
    its instance (sqlite run and event storage, compute logs), kept under `tmp_path` to be read."""
    workdir, home = tmp_path / "work", tmp_path / "dagster_home"
    workdir.mkdir()
    home.mkdir()

    @dg.asset
    def alloy_extract(context: dg.AssetExecutionContext, alloy: AlloyResource) -> dg.MaterializeResult:
        export = alloy.export(REQUEST, workdir, context.log)
        return dg.MaterializeResult(metadata={"task_id": export.task_id, "csv_files": len(export.csv_files)})

    resource = AlloyResource(
        base_url=simulator.url, api_key=dg.EnvVar("ALLOY_API_KEY"), poll_initial_seconds=0.01, poll_max_seconds=0.1
    )
    simulator.inject(Fault("status", endpoint="task", status=503, times=8))
    simulator.inject(Fault("reset_download"))
    monkeypatch.setenv("ALLOY_API_KEY", f" {API_KEY}\r\n")
    recorded: list[str] = []
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        riding_out = dg.materialize([alloy_extract], resources={"alloy": resource}, instance=instance)
        simulator.inject(Fault("failed_task", message="proxy saw {authorization}"))
        echoed = dg.materialize([alloy_extract], resources={"alloy": resource}, instance=instance, raise_on_error=False)
        monkeypatch.setenv("ALLOY_API_KEY", f"{API_KEY} {API_KEY}")
        refused = dg.materialize(
            [alloy_extract], resources={"alloy": resource}, instance=instance, raise_on_error=False
        )
        assert riding_out.success and not echoed.success and not refused.success
        for result in (riding_out, echoed, refused):
            run = instance.get_run_by_id(result.run_id)
            assert run is not None and run.job_snapshot_id is not None
            recorded += [dg.serialize_value(entry) for entry in instance.all_logs(result.run_id)]
            recorded += [dg.serialize_value(run), dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id))]
    assert any("polling again" in text for text in recorded) and any("header" in text for text in recorded)
    holding = {path.suffix for path in home.rglob("*") if path.is_file() and b"polling again" in path.read_bytes()}
    assert {".db", ".err"} <= holding, "the files read include the event storage and the compute logs"
    assert any("ended Failed: proxy saw Bearer [redacted]" in text for text in recorded)
    assert_absent([API_KEY], recorded, tmp_path)


# --- ids from the server ----------------------------------------------------------------------


BAD_IDS = ["../../etc/passwd", "a/b", "..", "%2e%2e", "", " 0123", "a" * 200, 12345, None]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_a_task_id_that_is_not_an_id_is_refused_before_use(
    simulator: AlloySimulator, tmp_path: Path, bad_id: object
) -> None:
    simulator.inject(Fault("reply", endpoint="export", body=json.dumps({"backgroundTaskId": bad_id})))
    with client(simulator) as alloy, pytest.raises(AlloyReplyError, match="POST /api/export.*backgroundTaskId"):
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert [seen.path for seen in simulator.requests] == ["/api/export"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_a_file_id_that_is_not_an_id_is_refused_before_use(
    simulator: AlloySimulator, tmp_path: Path, bad_id: object
) -> None:
    simulator.inject(Fault("reply", endpoint="export_file", body=json.dumps({"fileItemId": bad_id})))
    with client(simulator) as alloy, pytest.raises(AlloyReplyError, match="fileItemId") as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert f"export task {started_task(simulator)}" in str(raised.value)
    assert not [seen for seen in simulator.requests if seen.path.startswith("/api/file/")]
    assert list(tmp_path.iterdir()) == []


def test_local_names_never_come_from_the_server(simulator: AlloySimulator, tmp_path: Path) -> None:
    """The zip and the CSV folder have fixed names; only the CSVs inside keep theirs."""
    with client(simulator) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert [path.name for path in tmp_path.iterdir()] == ["csv"]
    assert all(path.is_relative_to(tmp_path / "csv") for path in export.csv_files)


# --- task replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [{"status": "Exporting"}, {"status": "Running", "processState": None}, {"status": "Queued", "extra": [1]}],
    ids=["unknown-status", "null-process-state", "extra-field"],
)
def test_unexpected_but_harmless_task_replies_are_polled_through(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, task: dict[str, object]
) -> None:
    simulator.inject(Fault("reply", endpoint="task", body=json.dumps({"task": task}), times=3))
    with client(simulator) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert len(export.csv_files) == 4
    if task["status"] == "Exporting":
        assert f"Alloy export task {export.task_id}: unknown status 'Exporting'; polling again" in caplog.text


def test_a_failed_tasks_echoed_key_is_redacted_from_the_error_and_the_log(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that echoes the request's header into the task's error must not leak the key."""
    caplog.set_level(logging.DEBUG)
    simulator.inject(Fault("failed_task", message="proxy saw {authorization}"))
    with client(simulator) as alloy, pytest.raises(AlloyTaskError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert str(raised.value) == f"Alloy export task {raised.value.task_id} ended Failed: proxy saw Bearer [redacted]"
    assert_absent([API_KEY], [caplog.text, *chained_texts(raised.value)], tmp_path)


def test_a_cancelled_task_ends_the_run_naming_the_task(simulator: AlloySimulator, tmp_path: Path) -> None:
    body = json.dumps({"task": {"status": "Cancelled", "error": "Cancelled by an administrator"}})
    simulator.inject(Fault("reply", endpoint="task", body=body))
    with client(simulator) as alloy, pytest.raises(AlloyTaskError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert raised.value.status == "Cancelled"
    assert f"task {raised.value.task_id} ended Cancelled: Cancelled by an administrator" in str(raised.value)


@pytest.mark.parametrize(
    ("endpoint", "body", "content_type", "problem"),
    [
        ("export", "<html>Service moved</html>", "text/html", "Invalid JSON"),
        ("task", "<html>Maintenance</html>", "text/html; charset=utf-8", "Invalid JSON"),
        ("task", '{"task": {}}', "application/json", "task.status: Field required"),
        (
            "task",
            '{"task": {"status": "Running", "processState": {"processed": "many"}}}',
            "application/json",
            "processed",
        ),
        ("task", '{"task": null}', "application/json", "task"),
        ("export_file", "<html>Login</html>", "text/html", "Invalid JSON"),
    ],
    ids=["export-html", "task-html", "task-no-status", "task-bad-progress", "task-null", "export-file-html"],
)
def test_an_undecodable_reply_names_the_endpoint_and_the_task(
    simulator: AlloySimulator, tmp_path: Path, endpoint: str, body: str, content_type: str, problem: str
) -> None:
    simulator.inject(Fault("reply", endpoint=endpoint, body=body, content_type=content_type))  # type: ignore[arg-type]
    with client(simulator) as alloy, pytest.raises(AlloyReplyError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    message = str(raised.value)
    assert problem in message and content_type in message and "HTTP 200" in message
    if endpoint == "export":
        assert message.startswith("Alloy POST /api/export: unexpected reply")
    else:
        assert f"(export task {started_task(simulator)}): unexpected reply" in message


# --- polling through trouble ------------------------------------------------------------------


@pytest.mark.parametrize(
    "burst",
    [Fault("status", endpoint="task", status=503, times=12), Fault("disconnect", endpoint="task", times=12)],
    ids=["503s", "dropped-connections"],
)
def test_a_burst_of_failures_while_polling_does_not_lose_the_export(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, burst: Fault
) -> None:
    """Five retries are a few seconds; an export may have run for hours. Poll on until the timeout."""
    simulator.inject(burst)
    with client(simulator, max_retries=2) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert len(export.csv_files) == 4
    assert len(polls(simulator)) > 12
    assert "polling again" in caplog.text


def test_a_task_unreachable_until_the_timeout_still_times_out(simulator: AlloySimulator, tmp_path: Path) -> None:
    simulator.inject(Fault("status", endpoint="task", status=503, times=1000))
    poll = PollPolicy(initial_seconds=0.05, growth=2, max_seconds=0.1, timeout_seconds=0.5)
    with client(simulator, poll=poll, max_retries=0) as alloy, pytest.raises(AlloyError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert "still unreachable after" in str(raised.value) and "timeout" in str(raised.value)


@pytest.mark.parametrize(
    ("asked", "waited"), [(45.0, 45.0), (7200.0, MAX_RETRY_AFTER_SECONDS)], ids=["above-poll-cap", "above-maximum"]
)
def test_retry_after_is_honoured_beyond_the_poll_cap_up_to_a_maximum(
    simulator: AlloySimulator, tmp_path: Path, asked: float, waited: float
) -> None:
    simulator.inject(Fault("status", endpoint="task", status=429, retry_after=asked))
    sleep = RecordingSleep()
    with client(simulator, sleep) as alloy:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert waited in sleep.waits and max(sleep.waits) == waited > FAST.max_seconds


# --- starting an export once ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault("status", endpoint="export", status=503), Fault("disconnect", endpoint="export")],
    ids=["503", "dropped-after-sending"],
)
def test_starting_an_export_is_not_retried_once_alloy_may_have_started_it(
    simulator: AlloySimulator, tmp_path: Path, fault: Fault
) -> None:
    simulator.inject(fault)
    with client(simulator) as alloy, pytest.raises(AlloyError, match="POST /api/export"):
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert [seen.path for seen in simulator.requests] == ["/api/export"]


# --- downloads --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated_download", "reset_download"])
def test_a_cut_download_resumes_where_it_stopped(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    simulator.inject(Fault(kind, times=3))  # type: ignore[arg-type]
    with client(simulator) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    with export.csv_files[0].open(newline="", encoding="utf-8") as main:
        assert len(list(csv.reader(main))) == 1 + simulator.dataset.count("designs_wasteContainerJob")
    downloads = [seen for seen in simulator.requests if seen.path.startswith("/api/file/")]
    assert "range" not in downloads[0].headers
    starts = [int(seen.headers["range"].removeprefix("bytes=").removesuffix("-")) for seen in downloads[1:]]
    assert len(starts) == 3 and 0 < starts[0] < starts[1] < starts[2], "each attempt resumes further on"
    assert caplog.text.count("download interrupted") == 3


def test_a_resume_answered_with_the_whole_file_starts_the_file_again(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server or proxy that ignores `Range` answers 200 with every byte: nothing is appended
    (`zipfile` would read a zip after the half already written, so the size tells)."""
    simulator.inject(Fault("truncated_download"))
    simulator.inject(Fault("range_ignored"))
    with client(simulator) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    first, resume = [seen for seen in simulator.requests if seen.path.startswith("/api/file/")]
    assert "range" not in first.headers and resume.headers["range"].startswith("bytes=")
    whole = httpx.get(simulator.url + first.path, headers={"Authorization": f"Bearer {API_KEY}"}).content
    assert export.archive_bytes == len(whole)
    with export.csv_files[0].open(newline="", encoding="utf-8") as main:
        assert len(list(csv.reader(main))) == 1 + simulator.dataset.count("designs_wasteContainerJob")
    assert caplog.text.count("download interrupted") == 1


def test_a_resume_answered_from_another_byte_is_refused_naming_the_task(
    simulator: AlloySimulator, tmp_path: Path
) -> None:
    """A 206 whose `Content-Range` does not start where the file stopped would splice the zip."""
    simulator.inject(Fault("truncated_download"))
    simulator.inject(Fault("wrong_content_range"))
    with client(simulator) as alloy, pytest.raises(AlloyReplyError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    resume = [seen for seen in simulator.requests if seen.path.startswith("/api/file/")][-1]
    start = resume.headers["range"].removeprefix("bytes=").removesuffix("-")
    assert str(raised.value).endswith(
        f"(export task {started_task(simulator)}): unexpected HTTP 206 to a request from byte {start}"
    )
    assert list(tmp_path.iterdir()) == [], "the partial zip is removed"


def test_a_download_cut_every_time_fails_naming_the_task(simulator: AlloySimulator, tmp_path: Path) -> None:
    simulator.inject(Fault("reset_download", times=10))
    with client(simulator, max_retries=2) as alloy, pytest.raises(AlloyError, match="interrupted 3 times") as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert f"export task {started_task(simulator)}" in str(raised.value)


def test_a_download_dropped_after_its_last_byte_is_complete(
    simulator: AlloySimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The resume asks for the bytes after the last: the server's 416 says there are none."""
    simulator.inject(Fault("dropped_after_last_byte"))
    with client(simulator) as alloy:
        export = alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert len(export.csv_files) == 4
    first, resume = [seen for seen in simulator.requests if seen.path.startswith("/api/file/")]
    assert "range" not in first.headers and resume.headers["range"] == f"bytes={export.archive_bytes}-"
    assert caplog.text.count("download interrupted") == 1


def test_a_download_that_never_ends_stops_at_the_cap_naming_the_task(simulator: AlloySimulator, tmp_path: Path) -> None:
    """Extraction's cap comes too late for a server that streams without end: the download has its own."""
    simulator.inject(Fault("endless_download"))
    with client(simulator) as alloy, pytest.raises(AlloyError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=1000)
    message = str(raised.value)
    assert f"(export task {started_task(simulator)}): download passed {max_download_bytes(1000):,} bytes" in message
    assert "raise max_archive_bytes" in message
    assert list(tmp_path.iterdir()) == [], "the refused zip is removed"


@pytest.mark.parametrize("pause", [0.05, 5.0], ids=["trickling", "stalled"])
def test_a_download_past_its_deadline_fails_naming_the_task(
    simulator: AlloySimulator, tmp_path: Path, pause: float
) -> None:
    """Each piece arrives well within the read timeout; the whole download still has a deadline,
    and no read waits past it."""
    simulator.inject(Fault("slow_download", seconds=pause))
    started = time.monotonic()
    with client(simulator, download_timeout_seconds=0.3) as alloy, pytest.raises(AlloyError) as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert time.monotonic() - started < 1.5
    message = str(raised.value)
    assert f"(export task {started_task(simulator)}): download not finished after" in message
    assert "raise download_timeout_seconds" in message
    assert list(tmp_path.iterdir()) == []


def test_a_zip_bomb_is_refused_naming_the_task(simulator: AlloySimulator, tmp_path: Path) -> None:
    """It is under the size cap, so only the ratio cap stops it; nothing is left extracted."""
    simulator.inject(Fault("zip_bomb"))
    with client(simulator) as alloy, pytest.raises(ArchiveError, match="compression ratio cap") as raised:
        alloy.export(REQUEST, tmp_path, max_archive_bytes=CAP)
    assert str(raised.value).startswith("Alloy export task ")
    assert list(tmp_path.iterdir()) == []


def test_a_client_without_a_key_makes_no_request(simulator: AlloySimulator) -> None:
    with pytest.raises(AlloyError, match="ALLOY_API_KEY"):
        AlloyClient(simulator.url, " \r\n")
    assert simulator.requests == []


def test_run_config_cannot_send_the_key_to_another_host(
    simulator: AlloySimulator, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Anyone who reaches the launchpad can set a resource's config; the key still goes only to ALLOY_API_URL."""

    @dg.asset
    def alloy_extract(context: dg.AssetExecutionContext, alloy: AlloyResource) -> None:
        alloy.export(REQUEST, tmp_path, context.log)

    resource = AlloyResource(base_url=simulator.url, api_key=API_KEY, poll_initial_seconds=0.01)
    with AlloySimulator(dataset=simulator.dataset, api_key=API_KEY) as attacker:
        elsewhere = attacker.url
        result = dg.materialize(
            [alloy_extract],
            resources={"alloy": resource},
            run_config={"resources": {"alloy": {"config": {"base_url": attacker.url}}}},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        assert attacker.requests == [], "not one request, so no Authorization header, reached the other host"
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.error.cause.message
    assert f"alloy.base_url '{elsewhere}' is not the Alloy API URL configured in ALLOY_API_URL" in message
    assert API_KEY not in message
    assert simulator.requests == []


@pytest.mark.parametrize(
    ("configured", "allowed"),
    [
        ("https://api.uk.alloyapp.io", True),
        ("https://api.uk.alloyapp.io/", True),
        ("http://127.0.0.1:8765", True),
        ("http://localhost:8765", True),
        ("http://[::1]:8765", True),
        ("http://alloy.council.example", False),
        ("ftp://api.uk.alloyapp.io", False),
    ],
)
def test_the_key_travels_over_https_except_to_this_machine(
    monkeypatch: pytest.MonkeyPatch, configured: str, allowed: bool
) -> None:
    monkeypatch.setenv("ALLOY_API_URL", configured)
    if allowed:
        assert checked_api_url(configured.rstrip("/")) == configured.rstrip("/")
        return
    with pytest.raises(AlloyError, match="only over https"):
        checked_api_url(configured)


def test_without_alloy_api_url_the_key_goes_only_to_alloy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOY_API_URL", raising=False)
    assert checked_api_url("https://api.uk.alloyapp.io") == "https://api.uk.alloyapp.io"
    with pytest.raises(AlloyError, match="ALLOY_API_URL"):
        checked_api_url("https://api.eu.alloyapp.io")
