"""The Alloy client against the simulator over real HTTP, one fault at a time.

Hostile replies and the API key's safety have their own module, test_hostile_server.py.
"""

import csv
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from alloy_pipeline.alloy.archive import ArchiveError
from alloy_pipeline.alloy.client import AlloyClient, AlloyError, AlloyResource, AlloyTaskError, PollPolicy
from alloy_pipeline.alloy.simulator import AlloySimulator, Fault, dataset_for_queries
from alloy_pipeline.alloy.transport import RetryingTransport
from alloy_pipeline.aqs import ExportRequest, load_query
from alloy_pipeline_tests.harness import API_KEY, REPO
from alloy_pipeline_tests.test_aqs import WATERMARK, with_alloy_extras

FAST = PollPolicy(initial_seconds=0.05, growth=1.5, max_seconds=0.4, timeout_seconds=10)


class RecordingSleep:
    """A real sleep, of at most `longest` seconds, that remembers how long it was asked to wait."""

    def __init__(self, longest: float = 0.5) -> None:
        self.waits: list[float] = []
        self._longest = longest

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(min(seconds, self._longest))


class ReleasingSleep(RecordingSleep):
    """Sets `release` (of a `held_task` fault) once the client has waited `polls` times."""

    def __init__(self, release: threading.Event, polls: int) -> None:
        super().__init__()
        self._release = release
        self._polls = polls

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        if len(self.waits) == self._polls:
            self._release.set()


@pytest.fixture
def request_body() -> ExportRequest:
    return load_query(REPO / "aqs_queries" / "DW Container Job.json").request


def client(
    simulator: AlloySimulator, sleep: RecordingSleep | None = None, *, api_key: str = API_KEY, **kwargs: Any
) -> AlloyClient:
    return AlloyClient(
        simulator.url,
        api_key,
        poll=kwargs.pop("poll", FAST),
        logger=logging.getLogger("alloy-test"),
        sleep=sleep or RecordingSleep(),
        **kwargs,
    )


def assert_key_never_leaked(simulator: AlloySimulator, caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    assert simulator.requests, "the client talked to the simulator"
    for seen in simulator.requests:
        assert API_KEY not in seen.path + "?" + seen.query
        assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in caplog.text
    for text in texts:
        assert API_KEY not in text


def test_export_round_trip(simulator, request_body, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with client(simulator) as alloy:
        export = alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    names = sorted(path.name for path in export.csv_files)
    assert names == [
        "DW Container Job.csv",
        "JoinedDesign_Collection Round_3.csv",
        "JoinedDesign_Premises_2.csv",
        "JoinedDesign_Waste Container_1.csv",
    ]
    main = next(path for path in export.csv_files if path.name == "DW Container Job.csv")
    with main.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "Item ID"
    assert len(rows) - 1 == simulator.dataset.count("designs_wasteContainerJob") == export.processed == export.total
    assert [path.name for path in tmp_path.iterdir()] == ["csv"], "the zip is removed once extracted"
    assert f"Alloy export task {export.task_id}: Complete" in caplog.text
    assert_key_never_leaked(simulator, caplog)


@pytest.mark.parametrize("state", [{}, {"processState": None}, {"processState": {}}])
def test_a_finished_task_without_counts_reports_none_not_zero(simulator, request_body, state) -> None:
    """No count is not a count of 0: the raw asset's row-count check must not read it as an empty export."""
    with client(simulator) as alloy:
        task_id = alloy.start_export(request_body)
        alloy.wait_for(task_id)
        simulator.inject(Fault("reply", endpoint="task", body=json.dumps({"task": {"status": "Complete", **state}})))
        finished = alloy.wait_for(task_id)
    assert (finished.processed, finished.total) == (None, None)


def test_waits_for_a_running_task_with_growing_delays_logging_progress(
    simulator, request_body, tmp_path, caplog
) -> None:
    """The task runs until the client has polled three times and waited after each."""
    caplog.set_level(logging.INFO)
    release = threading.Event()
    simulator.inject(Fault("held_task", release=release))
    sleep = ReleasingSleep(release, polls=3)
    with client(simulator, sleep) as alloy:
        export = alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert f"Alloy export task {export.task_id}: Running (0/{export.total} processed)" in caplog.text
    assert len([seen for seen in simulator.requests if seen.path.startswith("/api/task/")]) > 3
    assert sleep.waits[:3] == pytest.approx([0.05, 0.075, 0.1125])
    assert max(sleep.waits) <= FAST.max_seconds


def test_times_out_on_a_task_that_never_ends(simulator, request_body, tmp_path) -> None:
    simulator.inject(Fault(kind="slow_task", seconds=60))
    poll = PollPolicy(initial_seconds=0.05, growth=2, max_seconds=0.1, timeout_seconds=0.5)
    with client(simulator, poll=poll) as alloy, pytest.raises(AlloyError, match="timeout"):
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)


def test_honours_retry_after_on_429(simulator, request_body, tmp_path, caplog) -> None:
    simulator.inject(Fault(kind="status", endpoint="export", status=429, retry_after=0.3, times=2))
    sleep = RecordingSleep()
    with client(simulator, sleep) as alloy:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert sleep.waits[:2] == [0.3, 0.3]
    assert caplog.text.count("HTTP 429") == 2
    assert_key_never_leaked(simulator, caplog)


def test_honours_rate_limit_reset_on_429(simulator, request_body, tmp_path) -> None:
    simulator.inject(Fault(kind="status", endpoint="task", status=429, rate_limit_reset=0.25))
    sleep = RecordingSleep()
    with client(simulator, sleep) as alloy:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert any(wait == pytest.approx(0.25, abs=0.05) for wait in sleep.waits)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", endpoint="task", status=429, retry_after=120, wait_form="http_date"),
        Fault("status", endpoint="task", status=429, rate_limit_reset=120, wait_form="epoch"),
        Fault("status", endpoint="task", status=429, rate_limit_reset=120, wait_form="iso"),
    ],
    ids=["retry-after-http-date", "rate-limit-reset-epoch", "rate-limit-reset-iso"],
)
def test_a_429_may_name_the_moment_to_retry_at(simulator: AlloySimulator, fault: Fault) -> None:
    """Two minutes from now, as an HTTP date (whole seconds), epoch seconds or ISO 8601."""
    simulator.inject(fault)
    sleep = RecordingSleep(longest=0)
    with retrying(httpx.HTTPTransport(), sleep) as http:
        response = http.get(f"{simulator.url}/api/task/x")
    assert response.status_code == 404, "retried once the wait was over: the unknown task's own answer"
    [wait] = sleep.waits
    assert 118 < wait <= 120


READING_PATHS = {"task": r"/api/task/\w+", "export_file": r"/api/export/\w+/file", "file": r"/api/file/\w+"}


def transport_retries(caplog: pytest.LogCaptureFixture, endpoint: str) -> list[str]:
    """The transport's warnings about retrying `endpoint`, as `<reason>; retry <n> of <max>`."""
    logged = re.compile(rf"Alloy GET {READING_PATHS[endpoint]}: (.+; retry \d+ of \d+) in [\d.]+ s")
    return [match.group(1) for record in caplog.records if (match := logged.fullmatch(record.getMessage()))]


@pytest.mark.parametrize("endpoint", list(READING_PATHS))
@pytest.mark.parametrize(
    ("fault", "reason"), [("status", "HTTP 503"), ("disconnect", "RemoteProtocolError")], ids=["503", "dropped"]
)
def test_the_transport_retries_every_reading_endpoint(
    simulator, request_body, tmp_path, caplog, endpoint, fault, reason
) -> None:
    """Retried by the transport at once, not ridden out by the poll loop or the download's resumes."""
    simulator.inject(Fault(fault, endpoint=endpoint, status=503, times=2))
    with client(simulator) as alloy:
        export = alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert len(export.csv_files) == 4
    assert transport_retries(caplog, endpoint) == [f"{reason}; retry 1 of 5", f"{reason}; retry 2 of 5"]
    assert "polling again" not in caplog.text and "download interrupted" not in caplog.text
    assert len([seen for seen in simulator.requests if re.fullmatch(READING_PATHS[endpoint], seen.path)]) >= 3


def test_gives_up_after_bounded_retries(simulator, request_body, tmp_path, caplog) -> None:
    simulator.inject(Fault(kind="status", endpoint="export_file", status=500, times=10))
    with client(simulator, max_retries=2) as alloy, pytest.raises(AlloyError, match="HTTP 500") as raised:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert len([seen for seen in simulator.requests if seen.path.endswith("/file")]) == 3
    assert_key_never_leaked(simulator, caplog, str(raised.value))


@pytest.mark.parametrize(("kind", "status"), [("failed_task", "Failed"), ("deleted_task", "Deleted")])
def test_failed_or_deleted_task_carries_alloy_message_and_task_id(
    simulator, request_body, tmp_path, kind, status
) -> None:
    simulator.inject(Fault(kind=kind, message="Export too large for tenancy"))
    with client(simulator) as alloy, pytest.raises(AlloyTaskError) as raised:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert raised.value.status == status
    assert raised.value.task_id in str(raised.value)
    if kind == "failed_task":
        assert "Export too large for tenancy" in str(raised.value)


def test_corrupt_zip_is_a_clear_error(simulator, request_body, tmp_path) -> None:
    simulator.inject(Fault(kind="corrupt_zip"))
    with client(simulator) as alloy, pytest.raises(ArchiveError, match="task"):
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)


def test_archive_over_the_cap_is_refused(simulator, request_body, tmp_path) -> None:
    with client(simulator) as alloy, pytest.raises(ArchiveError, match="cap"):
        alloy.export(request_body, tmp_path, max_archive_bytes=1000)


def test_wrong_key_is_refused_without_echoing_it(simulator, request_body, tmp_path, caplog) -> None:
    wrong = "wrong-key-77"
    with AlloyClient(simulator.url, wrong, poll=FAST) as alloy, pytest.raises(AlloyError, match="401") as raised:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert wrong not in str(raised.value) and wrong not in caplog.text


def test_no_key_is_refused_before_any_request(simulator) -> None:
    with pytest.raises(AlloyError, match="ALLOY_API_KEY"):
        AlloyClient(simulator.url, "")
    assert simulator.requests == []


def test_task_ids_are_quoted_into_paths(simulator: AlloySimulator) -> None:
    """An id that reached the client unchecked still cannot name another endpoint."""
    with client(simulator) as alloy, pytest.raises(AlloyError, match="404"):
        alloy.task("../export/x")
    assert simulator.requests[-1].path == "/api/task/..%2Fexport%2Fx"


class ScriptedFailures(httpx.BaseTransport):
    """Raises the scripted transport errors, one per request, then sends requests for real."""

    def __init__(self, *failures: Callable[[httpx.Request], httpx.TransportError]) -> None:
        self._failures = list(failures)
        self._real = httpx.HTTPTransport()
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self._failures:
            raise self._failures.pop(0)(request)
        return self._real.handle_request(request)


def retrying(wrapped: httpx.BaseTransport, sleep: RecordingSleep) -> httpx.Client:
    transport = RetryingTransport(
        wrapped, max_retries=3, backoff_seconds=0.01, max_wait=0.05, logger=logging.getLogger("alloy-test"), sleep=sleep
    )
    return httpx.Client(transport=transport, headers={"Authorization": f"Bearer {API_KEY}"})


def connect_error(request: httpx.Request) -> httpx.TransportError:
    return httpx.ConnectError("connection refused", request=request)


def read_error(request: httpx.Request) -> httpx.TransportError:
    return httpx.ReadError("connection reset", request=request)


def local_error(request: httpx.Request) -> httpx.TransportError:
    return httpx.LocalProtocolError("Illegal header value b'Bearer secret\\n'", request=request)


def test_starting_an_export_is_retried_when_the_connection_never_opened(
    simulator: AlloySimulator, request_body: ExportRequest
) -> None:
    """No request reached Alloy, so no export can have started."""
    flaky = ScriptedFailures(connect_error, connect_error)
    with retrying(flaky, RecordingSleep()) as http:
        response = http.post(f"{simulator.url}/api/export", json=request_body.to_body())
    assert response.status_code == 200 and flaky.attempts == 3


@pytest.mark.parametrize("failure", [read_error, local_error], ids=["sent-then-reset", "local-protocol-error"])
def test_starting_an_export_is_not_retried_once_it_may_have_been_sent(
    simulator: AlloySimulator, request_body: ExportRequest, failure: Callable[[httpx.Request], httpx.TransportError]
) -> None:
    """After a reset the export may be running; a local protocol error would only recur."""
    flaky = ScriptedFailures(failure)
    sleep = RecordingSleep()
    with retrying(flaky, sleep) as http, pytest.raises(httpx.TransportError):
        http.post(f"{simulator.url}/api/export", json=request_body.to_body())
    assert flaky.attempts == 1 and sleep.waits == []
    assert simulator.requests == []


def test_local_protocol_errors_are_not_retried_even_on_reads(simulator: AlloySimulator) -> None:
    """A request that cannot be written (an invalid header) fails the same way every time."""
    flaky = ScriptedFailures(local_error, local_error)
    with retrying(flaky, RecordingSleep()) as http, pytest.raises(httpx.LocalProtocolError):
        http.get(f"{simulator.url}/api/task/x")
    assert flaky.attempts == 1


def test_an_unsupported_url_fails_at_once_naming_only_the_error_type(caplog: pytest.LogCaptureFixture) -> None:
    sleep = RecordingSleep()
    task_id = "0123456789abcdef01234567"
    with AlloyClient("ftp://127.0.0.1:1", API_KEY, sleep=sleep) as alloy, pytest.raises(AlloyError) as raised:
        alloy.task(task_id)
    assert str(raised.value) == f"Alloy GET /api/task/{task_id} (export task {task_id}): UnsupportedProtocol"
    assert sleep.waits == [] and "retry" not in caplog.text


@pytest.mark.parametrize(
    "setting",
    [
        {"poll_initial_seconds": 0},
        {"poll_initial_seconds": -1},
        {"poll_growth": 0.5},
        {"poll_max_seconds": 0},
        {"task_timeout_seconds": 0},
        {"max_retries": -1},
        {"request_timeout_seconds": 0},
        {"download_timeout_seconds": 0},
        {"max_archive_bytes": 0},
    ],
    ids=lambda setting: "-".join(f"{name}={value}" for name, value in setting.items()),
)
def test_nonsensical_settings_are_refused_when_the_resource_is_built(setting: dict[str, float]) -> None:
    """A zero first delay would poll Alloy in a tight loop; refuse it before any run starts."""
    [name] = setting
    with pytest.raises(ValidationError, match=name) as raised:
        AlloyResource(api_key=API_KEY, **setting)
    assert API_KEY not in str(raised.value)


@pytest.mark.parametrize(
    "setting", [{"initial_seconds": 0}, {"growth": 0.9}, {"max_seconds": -1}, {"timeout_seconds": 0}]
)
def test_a_poll_policy_refuses_nonsensical_delays(setting: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="poll|timeout"):
        PollPolicy(**setting)


def test_the_key_field_is_secret_in_dagsters_config_schema() -> None:
    """Dagster masks secret fields in the UI's config scaffolds; the description points at EnvVar."""
    fields = AlloyResource.to_config_schema().as_field().config_type.fields
    assert fields["api_key"].is_secret
    assert 'EnvVar("ALLOY_API_KEY")' in (fields["api_key"].description or "")


def test_fields_the_pipeline_does_not_read_reach_alloy_unchanged(tmp_path) -> None:
    written = with_alloy_extras()
    aqs_file = tmp_path / "Fix My Street Defect.json"
    aqs_file.write_text(json.dumps(written))
    request = load_query(aqs_file).request
    for folder in ("full", "incremental"):
        (tmp_path / folder).mkdir()
    with AlloySimulator(dataset=dataset_for_queries([written]), api_key=API_KEY) as simulator:
        with client(simulator) as alloy:
            alloy.export(request, tmp_path / "full", max_archive_bytes=10**8)
            alloy.export(request.edited(after=WATERMARK), tmp_path / "incremental", max_archive_bytes=10**8)
        full, incremental = (seen.body for seen in simulator.requests if seen.method == "POST")
    assert full == written
    assert {key: value for key, value in incremental.items() if key != "aqs"} == {
        key: value for key, value in written.items() if key != "aqs"
    }
    assert incremental["aqs"]["properties"] == written["aqs"]["properties"]
    assert incremental["aqs"]["children"][0]["children"][0] == written["aqs"]["children"][0]
