"""The Alloy simulator, exercised over real HTTP the way the pipeline's client uses it."""

from __future__ import annotations

import copy
import csv
import io
import json
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alloy_pipeline.alloy.simulator import (
    SYNTHETIC_ROOT,
    AlloySimulator,
    Fault,
    demo_dataset,
    synthetic_dataset,
    synthetic_request,
)

API_KEY = "test-key"
AQS_DIR = Path(__file__).resolve().parents[1] / "aqs_queries"
JOBS = "designs_wasteContainerJob"
CONTAINER_LINK = "attributes_jobAssignedContainer"
SINCE_2024: dict[str, Any] = {
    "type": "GreaterThan",
    "children": [
        {"type": "ItemProperty", "properties": {"itemPropertyName": "lastEditDate"}},
        {"type": "DateTime", "properties": {"value": ["2024-01-01T00:00:00.000Z"]}},
    ],
}


def example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((AQS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return body


def with_filter(body: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["aqs"]["children"] = [node]
    return changed


@pytest.fixture
def sim() -> Iterator[AlloySimulator]:
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY) as simulator:
        yield simulator


def connect(simulator: AlloySimulator) -> httpx.Client:
    return httpx.Client(base_url=simulator.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)


@pytest.fixture
def client(sim: AlloySimulator) -> Iterator[httpx.Client]:
    with connect(sim) as http:
        yield http


def start(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/export", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["backgroundTaskId"])


def finish(client: httpx.Client, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """Poll the task until it ends, as a client does (exports are built in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = client.get(f"/api/task/{task_id}").json()["task"]
        if task["status"] in ("Complete", "Failed", "Deleted") or time.monotonic() > deadline:
            return task
        time.sleep(0.01)


def completed(client: httpx.Client, body: dict[str, Any]) -> str:
    """Start an export and wait for it to complete; its task id."""
    task_id = start(client, body)
    assert finish(client, task_id)["status"] == "Complete"
    return task_id


def download(client: httpx.Client, task_id: str) -> bytes:
    file_id = client.get(f"/api/export/{task_id}/file").raise_for_status().json()["fileItemId"]
    response = client.get(f"/api/file/{file_id}").raise_for_status()
    assert response.headers["content-type"] == "application/zip"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


def export(client: httpx.Client, body: dict[str, Any]) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(download(client, completed(client, body))))


def rows(archive: zipfile.ZipFile, name: str) -> list[list[str]]:
    with archive.open(name) as raw:
        return list(csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))


def main_rows(archive: zipfile.ZipFile) -> list[list[str]]:
    return rows(archive, next(name for name in archive.namelist() if "/" in name))


# --- auth, headers, recording -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/export"), ("GET", "/api/task/x"), ("GET", "/api/export/x/file"), ("GET", "/api/file/x")],
)
@pytest.mark.parametrize(
    "auth",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}],
    ids=["none", "wrong", "not-bearer"],
)
def test_every_endpoint_wants_the_bearer_key(sim: AlloySimulator, method: str, path: str, auth: dict[str, str]) -> None:
    response = httpx.request(method, f"{sim.url}{path}?token={API_KEY}", headers=auth, json={})
    assert response.status_code == 401
    assert set(response.json()) == {"errorCode", "message"}
    assert {"x-rate-limit-remaining", "x-rate-limit-reset"} <= set(response.headers)
    assert sim.requests[-1].query == f"token={API_KEY}"  # recorded, so tests can catch keys in URLs


def test_requests_are_recorded_and_carry_rate_limit_headers(sim: AlloySimulator, client: httpx.Client) -> None:
    body = example("DW Container Job")
    task_id = start(client, body)
    response = client.get(f"/api/task/{task_id}")
    assert int(response.headers["x-rate-limit-remaining"]) == 9_998
    assert 0 < int(response.headers["x-rate-limit-reset"]) <= 60
    finish(client, task_id)
    download(client, task_id)
    seen = sim.requests
    calls = [(r.method, r.path.split("/")[2]) for r in seen]
    assert calls[:2] == [("POST", "export"), ("GET", "task")]
    assert set(calls[2:-2]) <= {("GET", "task")}  # polls until the background build is done
    assert calls[-2:] == [("GET", "export"), ("GET", "file")]
    assert seen[0].body == body
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in seen)
    assert all(API_KEY not in r.path + r.query for r in seen)


def test_rate_limit_is_enforced_per_window() -> None:
    with (
        AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, rate_limit=2) as limited,
        connect(limited) as http,
    ):
        assert [http.get("/api/task/x").status_code for _ in range(3)] == [404, 404, 429]
        refused = http.get("/api/task/x")
        assert refused.headers["x-rate-limit-remaining"] == "0"
        assert 0 < float(refused.headers["retry-after"]) <= 60


def test_unknown_ids_are_404(client: httpx.Client) -> None:
    assert client.get("/api/task/0123456789abcdef01234567").status_code == 404
    assert client.get("/api/export/0123456789abcdef01234567/file").status_code == 404
    assert client.get("/api/file/0123456789abcdef01234567").status_code == 404


# --- the export's shape -----------------------------------------------------------------------


def test_join_export_has_alloy_zip_layout_and_name_headers(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("DW Container Job"))
    assert archive.namelist() == [
        "DW Container Job/DW Container Job.csv",
        "JoinedDesign_Waste Container_1.csv",
    ]

    header, *records = rows(archive, "DW Container Job/DW Container Job.csv")
    prefix = "root.Assigned Container.Waste Container"
    assert header == [
        "Item ID",
        "Title",
        "Status",
        "Job Type",
        "Priority",
        "Raised Date",
        "Notes",
        f"{prefix}.Title",
        f"{prefix}.Container Type",
        f"{prefix} Item IDs",
    ]
    dataset = sim.dataset
    assert [record[0] for record in records] == dataset.ids(JOBS)
    for record in records:
        linked = dataset.linked_ids(record[0], CONTAINER_LINK)
        assert record[9] == ", ".join(linked)
        titles = [dataset.value(item_id, "attributes_itemsTitle") or "" for item_id in linked]
        assert record[7] == ", ".join(titles)

    joined_header, *joined = rows(archive, "JoinedDesign_Waste Container_1.csv")
    assert joined_header == [
        "Item ID",
        "Title",
        "Container Type",
        "AQS Path",
        "Predecessor File",
        "Predecessor Item",
        "Primary Item",
    ]
    expected = [(linked, job) for job in dataset.ids(JOBS) for linked in dataset.linked_ids(job, CONTAINER_LINK)]
    assert [(row[0], row[6]) for row in joined] == expected
    assert any(len(dataset.linked_ids(job, CONTAINER_LINK)) > 1 for job in dataset.ids(JOBS))
    assert any(not dataset.linked_ids(job, CONTAINER_LINK) for job in dataset.ids(JOBS))
    for row in joined:
        assert row[3:6] == [f"root.{CONTAINER_LINK}.designs_wasteContainer", "DW Container Job.csv", row[6]]


def test_code_headers_and_the_query_filter(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("Graffiti Reports"))
    assert archive.namelist() == ["Graffiti Reports/Graffiti Reports.csv", "JoinedDesign_Street_1.csv"]
    header, *records = main_rows(archive)
    prefix = "root.attributes_graffitiStreet.designs_street"
    assert header[:3] == ["Item ID", "attributes_itemsTitle", "attributes_graffitiStatus"]
    assert header[-3:] == [
        f"{prefix}.attributes_itemsTitle",
        f"{prefix}.attributes_streetUsrn",
        f"{prefix} Item IDs",
    ]
    reports = sim.dataset.ids("designs_graffitiReport")
    open_ids = [i for i in reports if sim.dataset.value(i, "attributes_graffitiStatus") == "Open"]
    assert 0 < len(open_ids) < len(reports)
    assert [record[0] for record in records] == open_ids
    assert rows(archive, "JoinedDesign_Street_1.csv")[0][:3] == [
        "Item ID",
        "attributes_itemsTitle",
        "attributes_streetUsrn",
    ]


def test_duplicate_display_names_and_punctuation_stay_in_the_header(client: httpx.Client) -> None:
    archive = export(client, example("Gully Inspections"))
    assert archive.namelist() == ["Gully Inspections/Gully Inspections.csv"]
    header, *records = main_rows(archive)
    assert header.count("Notes") == 2
    assert "Depth (mm)" in header and "Cleansed?" in header
    assert len(records) == 100
    depth = header.index("Depth (mm)")
    assert any(record[depth] == "" for record in records)


def test_quoted_cells_round_trip(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("DW Container Job"))
    raw = archive.read("DW Container Job/DW Container Job.csv")
    assert raw.endswith(b"\r\n") and b'""' in raw
    header, *records = rows(archive, "DW Container Job/DW Container Job.csv")
    notes = header.index("Notes")
    exported = {record[0]: record[notes] for record in records}
    assert exported == {i: sim.dataset.value(i, "attributes_jobNotes") or "" for i in sim.dataset.ids(JOBS)}
    values = set(exported.values())
    for tricky in (",", '"', "\n"):
        assert any(tricky in value for value in values), f"no note holds {tricky!r}"
    assert "" in values


def test_bom_option_prefixes_every_csv() -> None:
    with (
        AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, bom=True) as with_bom,
        connect(with_bom) as http,
    ):
        archive = export(http, example("DW Container Job"))
        assert all(archive.read(name).startswith(b"\xef\xbb\xbfItem ID,") for name in archive.namelist())


def test_no_bom_by_default(client: httpx.Client) -> None:
    archive = export(client, example("DW Container Job"))
    assert all(archive.read(name).startswith(b"Item ID,") for name in archive.namelist())


def test_synthetic_dataset_serves_its_request() -> None:
    dataset = synthetic_dataset(500)
    with AlloySimulator(dataset=dataset, api_key=API_KEY) as bench, connect(bench) as http:
        archive = export(http, synthetic_request("Bench.csv", export_header_type="Code"))
    assert archive.namelist() == [
        "Bench/Bench.csv",
        "JoinedDesign_Synthetic Site_1.csv",
        "JoinedDesign_Synthetic Owner_2.csv",
    ]
    header, *records = main_rows(archive)
    assert len(header) == 1 + 12 + 2 * 3 and len(records) == 500
    assert len(rows(archive, "JoinedDesign_Synthetic Site_1.csv")) == 1 + 500
    assert 1 < len(rows(archive, "JoinedDesign_Synthetic Owner_2.csv")) < 1 + 500
    assert synthetic_dataset(500).ids("designs_syntheticRecord") == dataset.ids("designs_syntheticRecord")


# --- background builds ------------------------------------------------------------------------


def export_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("alloy-export-")]


def test_post_answers_at_once_and_the_build_reports_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the simulator keeps its zips
    bench = AlloySimulator(dataset=synthetic_dataset(50_000), api_key=API_KEY).start()
    try:
        with connect(bench) as http:
            task_id = start(http, synthetic_request())
            first = http.get(f"/api/task/{task_id}").json()["task"]
            assert first["status"] in ("Queued", "Running"), "the POST waited for the export"
            assert http.get(f"/api/export/{task_id}/file").status_code == 409
            seen = []
            deadline = time.monotonic() + 5
            while len(seen) < 2 and time.monotonic() < deadline:
                state = http.get(f"/api/task/{task_id}").json()["task"]
                assert state["status"] in ("Queued", "Running")
                if state["status"] == "Running" and state["processState"]["processed"] > max(seen, default=0):
                    assert state["processState"]["total"] == 50_000
                    seen.append(state["processState"]["processed"])
                time.sleep(0.02)
            assert len(seen) == 2 and 0 < seen[0] < seen[1] < 50_000
    finally:
        began = time.monotonic()
        bench.stop()
    assert time.monotonic() - began < 2, "stop() cancels a build rather than waiting for it"
    assert not export_threads()
    assert not list(tmp_path.iterdir()), "the zip and the work folder are gone"


def test_an_export_holds_the_data_as_it_was_when_requested() -> None:
    dataset = synthetic_dataset(5_000)
    before = dataset.ids(SYNTHETIC_ROOT)
    first, title = before[0], "attributes_itemsTitle"
    old_title = dataset.value(first, title) or ""
    with AlloySimulator(dataset=dataset, api_key=API_KEY) as bench, connect(bench) as http:
        task_id = start(http, synthetic_request())
        dataset.set_value(first, title, "changed after the request")
        dataset.delete(SYNTHETIC_ROOT, 50)
        dataset.insert(SYNTHETIC_ROOT, 20)
        assert http.get(f"/api/task/{task_id}").json()["task"]["status"] != "Complete", "built too soon"
        assert finish(http, task_id)["status"] == "Complete"
        archive = zipfile.ZipFile(io.BytesIO(download(http, task_id)))
    header, *records = main_rows(archive)
    assert [record[0] for record in records] == before
    assert records[0][header.index("Title")] == old_title
    assert len(dataset.ids(SYNTHETIC_ROOT)) == 5_000 - 50 + 20


# --- filters and validation -------------------------------------------------------------------


def test_greater_than_last_edit_date_returns_only_edited_items(sim: AlloySimulator, client: httpx.Client) -> None:
    body = example("DW Container Job")
    assert len(main_rows(export(client, with_filter(body, SINCE_2024)))) == 1
    edited = sim.dataset.edit(JOBS, 3)
    records = main_rows(export(client, with_filter(body, SINCE_2024)))[1:]
    assert sorted(record[0] for record in records) == sorted(edited)
    assert all(sim.dataset.item(i).last_edit_date.year >= 2024 for i in edited)


def test_and_keeps_the_query_filter_alongside_the_watermark(sim: AlloySimulator, client: httpx.Client) -> None:
    body = example("Graffiti Reports")
    reopened, closed = sim.dataset.ids("designs_graffitiReport")[:2]
    sim.dataset.set_value(reopened, "attributes_graffitiStatus", "Open")
    sim.dataset.set_value(closed, "attributes_graffitiStatus", "Closed")
    both = {"type": "And", "children": [body["aqs"]["children"][0], SINCE_2024]}
    records = main_rows(export(client, with_filter(body, both)))[1:]
    assert [record[0] for record in records] == [reopened]


def _since(value: str) -> dict[str, Any]:
    node = copy.deepcopy(SINCE_2024)
    node["children"][1]["properties"]["value"] = [value]
    return node


DROP = object()
CONTAINER_TITLE = "designs_wasteContainer.attributes_itemsTitle"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("discriminator", "JsonExportWebRequestModel", id="discriminator"),
        pytest.param("exportHeaderType", DROP, id="no-header-type"),
        pytest.param("fileName", "../escape.csv", id="file-name-with-path"),
        pytest.param("aqs.type", "Aggregate", id="root-type"),
        pytest.param("aqs.properties.dodiCode", "designs_nothing", id="unknown-design"),
        pytest.param("aqs.properties.attributes", ["attributes_nothing"], id="unknown-attribute"),
        pytest.param("aqs.properties.collectionCode", ["Archive"], id="unknown-collection"),
        pytest.param(
            "aqs.properties.joinAttributes",
            ["root.attributes_jobAssignedContainer.designs_street.attributes_itemsTitle"],
            id="join-to-the-wrong-design",
        ),
        pytest.param(
            "aqs.properties.joinAttributes", [f"root.attributes_nothing.{CONTAINER_TITLE}"], id="unknown-link"
        ),
        pytest.param("aqs.properties.joinAttributes", ["attributes_itemsTitle"], id="join-path-shape"),
        pytest.param("aqs.children", [SINCE_2024, SINCE_2024], id="two-root-children"),
        pytest.param("aqs.children", [{"type": "Like", "children": []}], id="unsupported-node"),
        pytest.param("aqs.children", [{"type": "And", "children": []}], id="empty-and"),
        pytest.param("aqs.children", [_since("2024-01-01")], id="date-without-time"),
        pytest.param("aqs.children", [_since("2024-13-01T00:00:00.000Z")], id="impossible-date"),
        pytest.param("aqs.children", [{"type": "Equals", "children": SINCE_2024["children"]}], id="equals-on-a-date"),
    ],
)
def test_bad_requests_are_400(client: httpx.Client, path: str, value: Any) -> None:
    body = example("DW Container Job")
    *parents, key = path.split(".")
    parent = body
    for part in parents:
        parent = parent[part]
    if value is DROP:
        del parent[key]
    else:
        parent[key] = value
    response = client.post("/api/export", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"errorCode", "message"}


def test_a_query_takes_no_joins_and_a_body_must_be_json(client: httpx.Client) -> None:
    body = example("DW Container Job")
    body["aqs"]["type"] = "Query"
    assert client.post("/api/export", json=body).status_code == 400
    assert client.post("/api/export", content=b"{not json").status_code == 400


# --- faults -----------------------------------------------------------------------------------


def test_status_fault_with_rate_limit_headers(sim: AlloySimulator, client: httpx.Client) -> None:
    sim.inject(Fault("status", endpoint="export", status=429, retry_after=0.5, rate_limit_reset=2))
    refused = client.post("/api/export", json=example("DW Container Job"))
    assert refused.status_code == 429
    assert (refused.headers["retry-after"], refused.headers["x-rate-limit-reset"]) == ("0.5", "2")
    start(client, example("DW Container Job"))


def test_status_fault_applies_to_its_endpoint_the_given_number_of_times(
    sim: AlloySimulator, client: httpx.Client
) -> None:
    sim.inject(Fault("status", endpoint="task", status=503, times=2))
    task_id = start(client, example("Gully Inspections"))
    assert [client.get(f"/api/task/{task_id}").status_code for _ in range(3)] == [503, 503, 200]


def test_any_endpoint_fault_hits_the_next_request(sim: AlloySimulator, client: httpx.Client) -> None:
    sim.inject(Fault("status", status=502))
    assert client.get("/api/task/x").status_code == 502
    assert client.get("/api/task/x").status_code == 404


def test_disconnect_closes_without_a_response(sim: AlloySimulator, client: httpx.Client) -> None:
    task_id = completed(client, example("Gully Inspections"))
    sim.inject(Fault("disconnect", endpoint="file"))
    file_id = client.get(f"/api/export/{task_id}/file").json()["fileItemId"]
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/api/file/{file_id}")
    assert zipfile.is_zipfile(io.BytesIO(client.get(f"/api/file/{file_id}").content))


@pytest.mark.parametrize(("kind", "status"), [("failed_task", "Failed"), ("deleted_task", "Deleted")])
def test_task_fault_ends_the_next_task(sim: AlloySimulator, client: httpx.Client, kind: str, status: str) -> None:
    sim.inject(Fault(kind, message="Export timed out"))  # type: ignore[arg-type]
    task_id = start(client, example("Gully Inspections"))
    task = finish(client, task_id)
    assert (task["status"], task["error"]) == (status, "Export timed out")
    assert client.get(f"/api/export/{task_id}/file").status_code == 409
    completed(client, example("Gully Inspections"))


def test_corrupt_zip_fault_serves_a_truncated_archive(sim: AlloySimulator, client: httpx.Client) -> None:
    sim.inject(Fault("corrupt_zip"))
    broken = download(client, completed(client, example("DW Container Job")))
    assert broken and not zipfile.is_zipfile(io.BytesIO(broken))
    assert zipfile.is_zipfile(io.BytesIO(download(client, completed(client, example("DW Container Job")))))


def test_reply_fault_serves_its_body_with_status_200(sim: AlloySimulator, client: httpx.Client) -> None:
    sim.inject(Fault("reply", endpoint="task", body="<html>Down for maintenance</html>", content_type="text/html"))
    task_id = start(client, example("Gully Inspections"))
    page = client.get(f"/api/task/{task_id}")
    assert (page.status_code, page.headers["content-type"], page.text) == (
        200,
        "text/html",
        "<html>Down for maintenance</html>",
    )
    assert finish(client, task_id)["status"] == "Complete"


def test_file_endpoint_resumes_from_a_range(sim: AlloySimulator, client: httpx.Client) -> None:
    task_id = completed(client, example("Gully Inspections"))
    whole = download(client, task_id)
    file_id = client.get(f"/api/export/{task_id}/file").json()["fileItemId"]
    rest = client.get(f"/api/file/{file_id}", headers={"Range": "bytes=100-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert rest.content == whole[100:]
    beyond = client.get(f"/api/file/{file_id}", headers={"Range": f"bytes={len(whole)}-"})
    assert (beyond.status_code, beyond.content) == (200, whole)


@pytest.mark.parametrize(
    ("kind", "error"),
    [("truncated_download", httpx.RemoteProtocolError), ("reset_download", httpx.ReadError)],
)
def test_download_faults_cut_the_file_halfway(
    sim: AlloySimulator, client: httpx.Client, kind: str, error: type[httpx.TransportError]
) -> None:
    task_id = completed(client, example("DW Container Job"))
    whole = download(client, task_id)
    file_id = client.get(f"/api/export/{task_id}/file").json()["fileItemId"]
    sim.inject(Fault(kind))  # type: ignore[arg-type]
    received = bytearray()
    with pytest.raises(error), client.stream("GET", f"/api/file/{file_id}") as response:
        assert int(response.headers["content-length"]) == len(whole)
        for chunk in response.iter_bytes():
            received += chunk
    assert len(received) <= len(whole) // 2 and whole.startswith(bytes(received))
    assert download(client, task_id) == whole


def test_zip_bomb_fault_serves_a_small_zip_that_expands_a_thousandfold(
    sim: AlloySimulator, client: httpx.Client
) -> None:
    sim.inject(Fault("zip_bomb"))
    bomb = zipfile.ZipFile(io.BytesIO(download(client, completed(client, example("Gully Inspections")))))
    [member] = bomb.infolist()
    assert member.filename == "Gully Inspections/Gully Inspections.csv"
    assert member.file_size > 64 * 1024**2 > 500 * member.compress_size


def test_slow_task_reports_progress_then_completes(sim: AlloySimulator, client: httpx.Client) -> None:
    sim.inject(Fault("slow_task", seconds=0.6))
    task_id = start(client, example("Gully Inspections"))
    early = client.get(f"/api/task/{task_id}").json()["task"]
    assert early["status"] in ("Queued", "Running") and early["processState"]["processed"] < 100
    assert client.get(f"/api/export/{task_id}/file").status_code == 409
    time.sleep(0.3)
    assert client.get(f"/api/task/{task_id}").json()["task"]["status"] == "Running"
    time.sleep(0.35)
    done = client.get(f"/api/task/{task_id}").json()["task"]
    assert done == {"id": task_id, "status": "Complete", "processState": {"processed": 100, "total": 100}}
    download(client, task_id)


def test_a_build_that_breaks_fails_the_task(
    sim: AlloySimulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("alloy_pipeline.alloy.simulator.server.write_export", disk_full)
    task_id = start(client, example("Gully Inspections"))
    task = finish(client, task_id)
    assert task["status"] == "Failed" and "No space left on device" in task["error"]
    assert client.get(f"/api/export/{task_id}/file").status_code == 409


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError):
        Fault("status", status=200)
    with pytest.raises(ValueError):
        Fault("slow_task", seconds=0)
    with pytest.raises(ValueError):
        Fault("disconnect", times=0)


# --- data and mutations -----------------------------------------------------------------------


def test_demo_dataset_is_deterministic() -> None:
    first, second, other = demo_dataset(), demo_dataset(), demo_dataset(seed=8)
    ids = first.ids(JOBS)
    assert len(ids) == 200 and ids == second.ids(JOBS) and ids != other.ids(JOBS)
    assert [first.item(i) for i in ids] == [second.item(i) for i in ids]
    assert {first.item(i).last_edit_date.year for i in ids} == {2023}
    assert {first.count(code) for code in first.designs} == {60, 120, 200, 150, 100}


def test_clearing_a_link_removes_the_joined_rows(sim: AlloySimulator, client: httpx.Client) -> None:
    job = next(i for i in sim.dataset.ids(JOBS) if sim.dataset.linked_ids(i, CONTAINER_LINK))
    sim.dataset.relink(job, CONTAINER_LINK, [])
    archive = export(client, example("DW Container Job"))
    main = {record[0]: record for record in main_rows(archive)[1:]}
    assert main[job][-3:] == ["", "", ""]
    assert job not in {row[6] for row in rows(archive, "JoinedDesign_Waste Container_1.csv")[1:]}
    assert sim.dataset.item(job).last_edit_date.year >= 2024


def test_relink_points_at_new_items_and_checks_them(sim: AlloySimulator) -> None:
    job, *_ = sim.dataset.ids(JOBS)
    containers = sim.dataset.ids("designs_wasteContainer")[:2]
    sim.dataset.relink(job, CONTAINER_LINK, containers)
    assert sim.dataset.linked_ids(job, CONTAINER_LINK) == tuple(containers)
    with pytest.raises(KeyError):
        sim.dataset.relink(job, CONTAINER_LINK, [job])


def test_insert_and_delete(sim: AlloySimulator, client: httpx.Client) -> None:
    inserted = sim.dataset.insert(JOBS, 2)
    deleted = sim.dataset.delete(JOBS, 3)
    by_id = sim.dataset.delete(JOBS, [sim.dataset.ids(JOBS)[0]])
    exported = {record[0] for record in main_rows(export(client, example("DW Container Job")))[1:]}
    assert set(inserted) <= exported
    assert not exported & set(deleted + by_id)
    assert len(exported) == 200 + 2 - 3 - 1
    with pytest.raises(KeyError):
        sim.dataset.delete(JOBS, by_id)


def test_deleting_a_linked_item_unlinks_it_everywhere(sim: AlloySimulator) -> None:
    dataset = sim.dataset
    job = next(i for i in dataset.ids(JOBS) if dataset.linked_ids(i, CONTAINER_LINK))
    container = dataset.linked_ids(job, CONTAINER_LINK)[0]
    dataset.delete("designs_wasteContainer", [container])
    assert dataset.find(container) is None
    assert container not in dataset.linked_ids(job, CONTAINER_LINK)
    assert dataset.item(job).last_edit_date.year >= 2024


def test_simulate_day_is_deterministic_and_seen_by_an_incremental_export(
    client: httpx.Client, sim: AlloySimulator
) -> None:
    changes = sim.dataset.simulate_day(seed=1)
    assert changes == demo_dataset().simulate_day(seed=1)
    assert changes.edited and changes.inserted and changes.deleted
    assert len(changes.unlinked) == 2  # one on jobs, one on graffiti reports; gullies have no links
    jobs = set(sim.dataset.ids(JOBS))
    touched = (set(changes.edited) | set(changes.inserted) | set(changes.unlinked)) & jobs
    exported = {
        record[0] for record in main_rows(export(client, with_filter(example("DW Container Job"), SINCE_2024)))[1:]
    }
    assert exported == touched
    assert not exported & set(changes.deleted)
