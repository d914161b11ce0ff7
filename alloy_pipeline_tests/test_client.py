"""The Alloy client against the simulator over real HTTP, one fault at a time."""

import csv
import logging
import time

import pytest

from alloy_pipeline.alloy.archive import ArchiveError
from alloy_pipeline.alloy.client import AlloyClient, AlloyError, AlloyTaskError, PollPolicy
from alloy_pipeline.alloy.simulator import AlloySimulator, Fault
from alloy_pipeline.aqs import load_query
from alloy_pipeline_tests.harness import API_KEY, REPO

FAST = PollPolicy(initial_seconds=0.05, growth=1.5, max_seconds=0.4, timeout_seconds=10)


class RecordingSleep:
    """A real sleep that remembers how long it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(min(seconds, 0.5))


@pytest.fixture
def request_body():
    return load_query(REPO / "aqs_queries" / "DW Container Job.json").request


def client(simulator: AlloySimulator, sleep: RecordingSleep | None = None, **kwargs) -> AlloyClient:
    return AlloyClient(
        simulator.url,
        API_KEY,
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
    assert names == ["DW Container Job.csv", "JoinedDesign_Waste Container_1.csv"]
    main = next(path for path in export.csv_files if path.name == "DW Container Job.csv")
    with main.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "Item ID"
    assert len(rows) - 1 == simulator.dataset.count("designs_wasteContainerJob")
    assert not (tmp_path / f"{export.task_id}.zip").exists(), "the zip is removed once extracted"
    assert f"Alloy export task {export.task_id}: Complete" in caplog.text
    assert_key_never_leaked(simulator, caplog)


def test_waits_for_a_slow_task_logging_progress(simulator, request_body, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    simulator.inject(Fault(kind="slow_task", seconds=0.6))
    sleep = RecordingSleep()
    with client(simulator, sleep) as alloy:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert "Running" in caplog.text or "Queued" in caplog.text
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


@pytest.mark.parametrize("endpoint", ["export", "task", "export_file", "file"])
def test_retries_server_errors_on_every_endpoint(simulator, request_body, tmp_path, endpoint) -> None:
    simulator.inject(Fault(kind="status", endpoint=endpoint, status=503, times=2))
    with client(simulator) as alloy:
        export = alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert len(export.csv_files) == 2


def test_retries_dropped_connections(simulator, request_body, tmp_path) -> None:
    simulator.inject(Fault(kind="disconnect", endpoint="task", times=2))
    with client(simulator) as alloy:
        export = alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert len(export.csv_files) == 2


def test_gives_up_after_bounded_retries(simulator, request_body, tmp_path, caplog) -> None:
    simulator.inject(Fault(kind="status", endpoint="export", status=500, times=10))
    with client(simulator, max_retries=2) as alloy, pytest.raises(AlloyError, match="HTTP 500") as raised:
        alloy.export(request_body, tmp_path, max_archive_bytes=10**8)
    assert len([seen for seen in simulator.requests if seen.path == "/api/export"]) == 3
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
