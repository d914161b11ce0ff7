"""The Alloy simulator, exercised over real HTTP the way the pipeline's client uses it."""

from __future__ import annotations

import copy
import csv
import email.utils
import io
import json
import math
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from alloy_pipeline.alloy.simulator import (
    SYNTHETIC_ROOT,
    AlloySimulator,
    Fault,
    dataset_for_queries,
    demo_dataset,
    synthetic_dataset,
    synthetic_request,
)

API_KEY = "test-key"
AQS_DIR = Path(__file__).resolve().parents[1] / "aqs_queries"
JOBS = "designs_wasteContainerJob"
CONTAINER_LINK = "attributes_jobAssignedContainer"
PREMISES = "designs_premises"
PREMISES_LINK = "attributes_premisesContainerJobs"
ROUNDS = "designs_collectionRound"
ROUND_LINK = "attributes_collectionRoundPremises"
GRAFFITI = "designs_graffitiReport"
GULLIES = "designs_gullyInspection"
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


def poll(
    client: httpx.Client, task_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """Poll the task until `until` holds of it or `timeout` runs out; its last state."""
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = client.get(f"/api/task/{task_id}").json()["task"]
        if until(task) or time.monotonic() > deadline:
            return task
        time.sleep(0.01)


def finish(client: httpx.Client, task_id: str) -> dict[str, Any]:
    """Poll the task until it ends, as a client does (exports are built in the background)."""
    return poll(client, task_id, lambda task: task["status"] in ("Complete", "Failed", "Deleted"))


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


def header_index(header: list[str]) -> dict[str, int]:
    return {name: position for position, name in enumerate(header)}


def test_join_export_has_alloy_zip_layout_and_name_headers(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("DW Container Job"))
    assert archive.namelist() == [
        "DW Container Job/DW Container Job.csv",
        "JoinedDesign_Waste Container_1.csv",
        "JoinedDesign_Premises_2.csv",
        "JoinedDesign_Collection Round_3.csv",
    ]

    header, *records = rows(archive, "DW Container Job/DW Container Job.csv")
    container, premises = "root.Assigned Container.Waste Container", "root.Container Jobs.Premises"
    rounds = "root.Container Jobs.Premises.Collection Round"
    assert header == [
        "Item ID",
        "Title",
        "Status",
        "Job Type",
        "Priority",
        "Raised Date",
        "Notes",
        f"{container}.Title",
        f"{container}.Container Type",
        f"{container}.Item IDs",
        f"{premises}.Title",
        f"{premises}.Subtitle",
        f"{premises}.UPRN",
        f"{premises}.Item IDs",
        f"{rounds}.Title",
        f"{rounds}.Collection Day",
        f"{rounds}.Item IDs",
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
        "Predecessor Title",
        "Primary Item",
    ]
    expected = [(linked, job) for job in dataset.ids(JOBS) for linked in dataset.linked_ids(job, CONTAINER_LINK)]
    assert [(row[0], row[7]) for row in joined] == expected
    assert any(len(dataset.linked_ids(job, CONTAINER_LINK)) > 1 for job in dataset.ids(JOBS))
    assert any(not dataset.linked_ids(job, CONTAINER_LINK) for job in dataset.ids(JOBS))
    for row in joined:
        assert row[3:6] == [f"root.{CONTAINER_LINK}", "DW Container Job.csv", row[7]]
        assert row[6] == dataset.value(row[7], "attributes_itemsTitle")


def test_a_reverse_join_reaches_the_items_that_point_at_the_root(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("DW Container Job"))
    dataset = sim.dataset
    pointing = {
        job: [p for p in dataset.ids(PREMISES) if job in dataset.linked_ids(p, PREMISES_LINK)]
        for job in dataset.ids(JOBS)
    }
    assert any(not found for found in pointing.values()) and any(found for found in pointing.values())

    header, *records = main_rows(archive)
    columns = header_index(header)
    for record in records:
        found = pointing[record[0]]
        assert record[columns["root.Container Jobs.Premises.Item IDs"]] == ", ".join(found)
        uprns = [dataset.value(p, "attributes_premisesUprn") or "" for p in found]
        assert record[columns["root.Container Jobs.Premises.UPRN"]] == ", ".join(uprns)

    joined_header, *joined = rows(archive, "JoinedDesign_Premises_2.csv")
    assert joined_header == [
        "Item ID",
        "Title",
        "Subtitle",
        "UPRN",
        "AQS Path",
        "Predecessor File",
        "Predecessor Item",
        "Predecessor Title",
        "Primary Item",
    ]
    assert [(row[0], row[8]) for row in joined] == [(p, job) for job, found in pointing.items() for p in found]
    for row in joined:
        assert row[4:7] == [f"root^{PREMISES_LINK}<{PREMISES}>", "DW Container Job.csv", row[8]]
        assert row[1:4] == [
            dataset.value(row[0], code)
            for code in ("attributes_itemsTitle", "attributes_itemsSubtitle", "attributes_premisesUprn")
        ]


def test_a_chained_reverse_join_hangs_each_row_from_its_predecessor(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("DW Container Job"))
    dataset = sim.dataset
    rounds_of = {
        p: [r for r in dataset.ids(ROUNDS) if p in dataset.linked_ids(r, ROUND_LINK)] for p in dataset.ids(PREMISES)
    }
    chain = [
        (r, p, job)
        for job in dataset.ids(JOBS)
        for p in dataset.ids(PREMISES)
        if job in dataset.linked_ids(p, PREMISES_LINK)
        for r in rounds_of[p]
    ]
    assert chain, "some jobs are on a collection round"

    joined_header, *joined = rows(archive, "JoinedDesign_Collection Round_3.csv")
    assert joined_header == [
        "Item ID",
        "Title",
        "Collection Day",
        "AQS Path",
        "Predecessor File",
        "Predecessor Item",
        "Predecessor Title",
        "Predecessor Subtitle",
        "Primary Item",
    ]
    assert [(row[0], row[5], row[8]) for row in joined] == chain
    path = f"root^{PREMISES_LINK}<{PREMISES}>^{ROUND_LINK}<{ROUNDS}>"
    for row in joined:
        assert row[3:5] == [path, "JoinedDesign_Premises_2.csv"]
        assert row[6:8] == [
            dataset.value(row[5], "attributes_itemsTitle"),
            dataset.value(row[5], "attributes_itemsSubtitle"),
        ]

    header, *records = main_rows(archive)
    column = header_index(header)["root.Container Jobs.Premises.Collection Round.Item IDs"]
    by_job = {record[0]: record[column] for record in records}
    for job in dataset.ids(JOBS):
        assert by_job[job] == ", ".join(dict.fromkeys(r for r, _, j in chain if j == job))


FOUR_FORMS = [
    f"root^{PREMISES_LINK}<{PREMISES}>^{ROUND_LINK}<{ROUNDS}>.attributes_itemsTitle",
    f"root.{CONTAINER_LINK}.attributes_itemsTitle",
    f"root^{PREMISES_LINK}<{PREMISES}>.attributes_premisesUprn",
    f"root^{PREMISES_LINK}<{PREMISES}>.attributes_premisesStreet.attributes_itemsTitle",
]
"""A chained reverse join first, then a forward one, a reverse one, and a reverse-then-forward one."""


def four_forms(header_type: str) -> dict[str, Any]:
    body = example("DW Container Job")
    body["exportHeaderType"] = header_type
    body["aqs"]["properties"]["attributes"] = ["attributes_jobStatus"]
    body["aqs"]["properties"]["joinAttributes"] = FOUR_FORMS
    return body


def test_join_nodes_are_numbered_parents_first_in_order_of_first_use(client: httpx.Client) -> None:
    archive = export(client, four_forms("Code"))
    assert archive.namelist() == [
        "DW Container Job/DW Container Job.csv",
        "JoinedDesign_Premises_1.csv",
        "JoinedDesign_Collection Round_2.csv",
        "JoinedDesign_Waste Container_3.csv",
        "JoinedDesign_Street_4.csv",
    ]
    premises = f"root.{PREMISES_LINK}.{PREMISES}"
    assert main_rows(archive)[0] == [
        "Item ID",
        "attributes_jobStatus",
        f"{premises}.attributes_premisesUprn",
        f"{premises}.Item IDs",
        f"root.{PREMISES_LINK}.{ROUND_LINK}.{ROUNDS}.attributes_itemsTitle",
        f"root.{PREMISES_LINK}.{ROUND_LINK}.{ROUNDS}.Item IDs",
        f"root.{CONTAINER_LINK}.designs_wasteContainer.attributes_itemsTitle",
        f"root.{CONTAINER_LINK}.designs_wasteContainer.Item IDs",
        f"root.{PREMISES_LINK}.attributes_premisesStreet.designs_street.attributes_itemsTitle",
        f"root.{PREMISES_LINK}.attributes_premisesStreet.designs_street.Item IDs",
    ]
    trails = {
        name: {tuple(row[2:4]) for row in rows(archive, name)[1:]}
        for name in archive.namelist()
        if name.startswith("JoinedDesign_")
    }
    reverse = f"root^{PREMISES_LINK}<{PREMISES}>"
    assert trails == {
        "JoinedDesign_Premises_1.csv": {(reverse, "DW Container Job.csv")},
        "JoinedDesign_Collection Round_2.csv": {(f"{reverse}^{ROUND_LINK}<{ROUNDS}>", "JoinedDesign_Premises_1.csv")},
        "JoinedDesign_Waste Container_3.csv": {(f"root.{CONTAINER_LINK}", "DW Container Job.csv")},
        "JoinedDesign_Street_4.csv": {(f"{reverse}.attributes_premisesStreet", "JoinedDesign_Premises_1.csv")},
    }
    assert rows(archive, "JoinedDesign_Waste Container_3.csv")[0][-3:] == [
        "Predecessor File",
        "Predecessor Item",
        "Primary Item",
    ]
    assert rows(archive, "JoinedDesign_Street_4.csv")[0] == [
        "Item ID",
        "attributes_itemsTitle",
        "AQS Path",
        "Predecessor File",
        "Predecessor Item",
        "Primary Item",
    ]


def test_name_headers_write_display_names_along_the_path(client: httpx.Client) -> None:
    header = main_rows(export(client, four_forms("Name")))[0]
    assert header[2:] == [
        "root.Container Jobs.Premises.UPRN",
        "root.Container Jobs.Premises.Item IDs",
        "root.Container Jobs.Premises.Collection Round.Title",
        "root.Container Jobs.Premises.Collection Round.Item IDs",
        "root.Assigned Container.Waste Container.Title",
        "root.Assigned Container.Waste Container.Item IDs",
        "root.Container Jobs.Street.Street.Title",
        "root.Container Jobs.Street.Street.Item IDs",
    ]


def test_reverse_then_forward_reads_what_the_reverse_items_link_to(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, four_forms("Code"))
    dataset = sim.dataset
    expected = [
        (street, p, job)
        for job in dataset.ids(JOBS)
        for p in dataset.ids(PREMISES)
        if job in dataset.linked_ids(p, PREMISES_LINK)
        for street in dataset.linked_ids(p, "attributes_premisesStreet")
    ]
    assert expected
    assert [(row[0], row[4], row[5]) for row in rows(archive, "JoinedDesign_Street_4.csv")[1:]] == expected


def test_code_headers_sort_info_and_a_list_valued_filter(sim: AlloySimulator, client: httpx.Client) -> None:
    archive = export(client, example("Graffiti Reports"))
    assert archive.namelist() == ["Graffiti Reports/Graffiti Reports.csv", "JoinedDesign_Street_1.csv"]
    header, *records = main_rows(archive)
    prefix = "root.attributes_graffitiStreet.designs_street"
    assert header[:3] == ["Item ID", "attributes_itemsTitle", "attributes_graffitiStatus"]
    assert header[-4:] == [
        "attributes_graffitiStreet",
        f"{prefix}.attributes_itemsTitle",
        f"{prefix}.attributes_streetUsrn",
        f"{prefix}.Item IDs",
    ]
    dataset = sim.dataset
    reports = dataset.ids(GRAFFITI)
    wanted = [i for i in reports if dataset.value(i, "attributes_graffitiStatus") in ("Open", "In Progress")]
    assert {dataset.value(i, "attributes_graffitiStatus") for i in wanted} == {"Open", "In Progress"}
    assert len(wanted) < len(reports)
    newest_first = sorted(wanted, key=lambda i: dataset.value(i, "attributes_graffitiReportedDate") or "", reverse=True)
    assert [record[0] for record in records] == newest_first
    street = header.index("attributes_graffitiStreet")
    assert all(
        record[street] == ", ".join(dataset.linked_ids(record[0], "attributes_graffitiStreet")) for record in records
    )
    assert rows(archive, "JoinedDesign_Street_1.csv")[0] == [
        "Item ID",
        "attributes_itemsTitle",
        "attributes_streetUsrn",
        "AQS Path",
        "Predecessor File",
        "Predecessor Item",
        "Predecessor attributes_itemsTitle",
        "Primary Item",
    ]
    joined = rows(archive, "JoinedDesign_Street_1.csv")[1:]
    assert [row[-1] for row in joined] == [
        job for job in newest_first for _ in dataset.linked_ids(job, "attributes_graffitiStreet")
    ]


@pytest.mark.parametrize(
    ("sort_info", "key", "descending"),
    [
        ({"attributeCode": "attributes_gullyCondition", "sortOrder": "Ascending"}, "attributes_gullyCondition", False),
        ({"attributeCode": "attributes_gullySiltDepth"}, "attributes_gullySiltDepth", False),
        ({"itemProperty": "itemId", "sortOrder": "Descending"}, None, True),
    ],
    ids=["attribute", "default-ascending-empty-last", "item-id-descending"],
)
def test_sort_info_orders_the_root_rows(
    sim: AlloySimulator, client: httpx.Client, sort_info: dict[str, str], key: str | None, descending: bool
) -> None:
    body = example("Gully Inspections")
    body["aqs"]["properties"]["sortInfo"] = sort_info
    exported = [record[0] for record in main_rows(export(client, body))[1:]]
    gullies = sim.dataset.ids(GULLIES)
    if key is None:
        assert exported == sorted(gullies, reverse=descending)
        return
    valued = [i for i in gullies if sim.dataset.value(i, key) is not None]
    empty = [i for i in gullies if sim.dataset.value(i, key) is None]
    assert exported == sorted(valued, key=lambda i: sim.dataset.value(i, key) or "") + empty


def test_fields_alloy_does_not_use_are_ignored_at_every_level(client: httpx.Client) -> None:
    plain = example("Graffiti Reports")
    decorated = copy.deepcopy(plain)
    decorated["exportTimeZone"] = "Europe/London"
    decorated["aqs"]["version"] = 2
    decorated["aqs"]["properties"]["__dataExplorerColumns"] = ["attributes_itemsTitle"]
    decorated["aqs"]["properties"]["sortInfo"]["nullsLast"] = True
    decorated["aqs"]["children"][0]["properties"] = {"__dataExplorerFilter": "attributes_graffitiStatus"}
    decorated["aqs"]["children"][0]["children"][0]["properties"]["label"] = "Status"
    decorated["aqs"]["children"][0]["children"][1]["note"] = "open or in progress"
    assert main_rows(export(client, decorated)) == main_rows(export(client, plain))
    without_children = copy.deepcopy(plain)
    del without_children["aqs"]["children"]
    assert len(main_rows(export(client, without_children))) == 1 + 150


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
    """The build stops a fifth of the way through until the simulator stops: the POST cannot have
    waited for it, and the task reports its rows so far."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the simulator keeps its zips
    bench = AlloySimulator(dataset=synthetic_dataset(1_000), api_key=API_KEY).start()
    bench.inject(Fault("held_task", rows=200, release=threading.Event()))
    try:
        with connect(bench) as http:
            task_id = start(http, synthetic_request())
            held = poll(http, task_id, lambda task: task["processState"]["processed"] == 200)
            assert held == {"id": task_id, "status": "Running", "processState": {"processed": 200, "total": 1_000}}
            assert http.get(f"/api/export/{task_id}/file").status_code == 409
    finally:
        began = time.monotonic()
        bench.stop()
    assert time.monotonic() - began < 2, "stop() cancels a build rather than waiting for it"
    assert not export_threads()
    assert not list(tmp_path.iterdir()), "the zip and the work folder are gone"


def test_an_export_holds_the_data_as_it_was_when_requested() -> None:
    """The data changes while the build is held before its first row."""
    dataset = synthetic_dataset(500)
    before = dataset.ids(SYNTHETIC_ROOT)
    first, title = before[0], "attributes_itemsTitle"
    old_title = dataset.value(first, title) or ""
    release = threading.Event()
    with AlloySimulator(dataset=dataset, api_key=API_KEY) as bench, connect(bench) as http:
        bench.inject(Fault("held_task", release=release))
        task_id = start(http, synthetic_request())
        dataset.set_value(first, title, "changed after the request")
        dataset.delete(SYNTHETIC_ROOT, 50)
        dataset.insert(SYNTHETIC_ROOT, 20)
        release.set()
        assert finish(http, task_id)["status"] == "Complete"
        archive = zipfile.ZipFile(io.BytesIO(download(http, task_id)))
    header, *records = main_rows(archive)
    assert [record[0] for record in records] == before
    assert records[0][header.index("Title")] == old_title
    assert len(dataset.ids(SYNTHETIC_ROOT)) == 500 - 50 + 20


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
    reopened, closed = sim.dataset.ids(GRAFFITI)[:2]
    sim.dataset.set_value(reopened, "attributes_graffitiStatus", "Open")
    sim.dataset.set_value(closed, "attributes_graffitiStatus", "Closed")
    both = {"type": "And", "children": [body["aqs"]["children"][0], SINCE_2024]}
    records = main_rows(export(client, with_filter(body, both)))[1:]
    assert [record[0] for record in records] == [reopened]


def attribute(code: str, path: str | None = None) -> dict[str, Any]:
    return {"type": "Attribute", "properties": {"attributeCode": code, **({"path": path} if path else {})}}


def strings(*values: str) -> dict[str, Any]:
    return {"type": "String", "properties": {"value": list(values)}}


def node(kind: str, *children: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": kind, "children": list(children), **({"properties": properties} if properties else {})}


FILTERS: list[Any] = [
    pytest.param(
        node(
            "Or",
            node("Equals", attribute("attributes_jobStatus"), strings("Closed")),
            node("Equals", attribute("attributes_jobPriority"), strings("Urgent")),
        ),
        lambda d: (
            lambda j: d.value(j, "attributes_jobStatus") == "Closed" or d.value(j, "attributes_jobPriority") == "Urgent"
        ),
        id="or",
    ),
    pytest.param(
        node("NotEquals", attribute("attributes_jobStatus"), strings("Closed", "Open")),
        lambda d: lambda j: d.value(j, "attributes_jobStatus") not in ("Closed", "Open"),
        id="not-equals-list",
    ),
    pytest.param(
        node("Equals", attribute("attributes_jobStatus"), strings("Closed"), linkNegated=True),
        lambda d: lambda j: d.value(j, "attributes_jobStatus") != "Closed",
        id="link-negated",
    ),
    pytest.param(
        node("StartsWith", attribute("attributes_jobType"), strings("Bin R", "Lid")),
        lambda d: lambda j: (d.value(j, "attributes_jobType") or "").startswith(("Bin R", "Lid")),
        id="starts-with",
    ),
    pytest.param(
        node("Exists", attribute("attributes_jobNotes")),
        lambda d: lambda j: bool(d.value(j, "attributes_jobNotes")),
        id="exists",
    ),
    pytest.param(
        node("Exists", attribute(CONTAINER_LINK)),
        lambda d: lambda j: bool(d.linked_ids(j, CONTAINER_LINK)),
        id="exists-link",
    ),
    pytest.param(
        node(
            "LessThan",
            attribute("attributes_jobRaisedDate"),
            {"type": "DateTime", "properties": {"value": ["2023-07-01T00:00:00.000Z"]}},
        ),
        lambda d: lambda j: (d.value(j, "attributes_jobRaisedDate") or "9") < "2023-07-01T00:00:00.000Z",
        id="less-than-datetime-attribute",
    ),
    pytest.param(
        node(
            "GreaterThan",
            attribute("attributes_jobRaisedDate"),
            {"type": "Date", "properties": {"value": ["2023-10-01"]}},
            inclusive=True,
        ),
        lambda d: lambda j: (d.value(j, "attributes_jobRaisedDate") or "") >= "2023-10-01",
        id="greater-than-or-equal-date",
    ),
    pytest.param(
        node(
            "Equals",
            attribute("attributes_premisesPropertyType", f"root^{PREMISES_LINK}<{PREMISES}>"),
            strings("Shop", "Office"),
        ),
        lambda d: (
            lambda j: any(
                j in d.linked_ids(p, PREMISES_LINK)
                and d.value(p, "attributes_premisesPropertyType") in ("Shop", "Office")
                for p in d.ids(PREMISES)
            )
        ),
        id="path-through-a-reverse-join",
    ),
    pytest.param(
        node(
            "Equals",
            {"type": "ItemProperty", "properties": {"itemPropertyName": "itemId"}},
            {"type": "AlloyId", "properties": {"value": ["ids"]}},
        ),
        None,
        id="item-ids",
    ),
]


@pytest.mark.parametrize(("condition", "expected"), FILTERS)
def test_filter_nodes_keep_the_items_alloy_would(
    sim: AlloySimulator, client: httpx.Client, condition: dict[str, Any], expected: Any
) -> None:
    jobs = sim.dataset.ids(JOBS)
    if expected is None:
        condition["children"][1]["properties"]["value"] = jobs[3:6]
        wanted = jobs[3:6]
    else:
        wanted = [job for job in jobs if expected(sim.dataset)(job)]
    assert 0 < len(wanted) < len(jobs), "the filter keeps some jobs, not all"
    records = main_rows(export(client, with_filter(example("DW Container Job"), condition)))[1:]
    assert [record[0] for record in records] == wanted


def _since(value: str) -> dict[str, Any]:
    node = copy.deepcopy(SINCE_2024)
    node["children"][1]["properties"]["value"] = [value]
    return node


DROP = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("discriminator", "JsonExportWebRequestModel", id="discriminator"),
        pytest.param("exportHeaderType", DROP, id="no-header-type"),
        pytest.param("fileName", "../escape.csv", id="file-name-with-path"),
        pytest.param("aqs.type", "Aggregate", id="root-type"),
        pytest.param("aqs.properties.dodiCode", "designs_nothing", id="unknown-design"),
        pytest.param("aqs.properties.attributes", ["attributes_nothing"], id="unknown-attribute"),
        pytest.param("aqs.properties.collectionCode", ["Deleted"], id="unknown-collection"),
        pytest.param("aqs.properties.sortInfo", {"attributeCode": "attributes_nothing"}, id="sort-on-nothing"),
        pytest.param("aqs.properties.sortInfo", {"sortOrder": "Ascending"}, id="sort-on-no-key"),
        pytest.param("aqs.children", [SINCE_2024, SINCE_2024], id="two-root-children"),
        pytest.param("aqs.children", [{"type": "Like", "children": []}], id="unsupported-node"),
        pytest.param("aqs.children", [{"type": "And", "children": []}], id="empty-and"),
        pytest.param(
            "aqs.children", [node("Equals", attribute("attributes_nothing"), strings("x"))], id="filter-on-nothing"
        ),
        pytest.param(
            "aqs.children",
            [node("Exists", attribute("attributes_itemsTitle", "root^attributes_nothing<designs_premises>"))],
            id="filter-path-unservable",
        ),
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


UNSERVABLE = [
    pytest.param("attributes_itemsTitle", id="no-root"),
    pytest.param("root.attributes_itemsTitle", id="no-step"),
    pytest.param("root.attributes_jobAssignedContainer..attributes_itemsTitle", id="empty-step"),
    pytest.param("root^attributes_premisesContainerJobs<designs_premises>", id="ends-in-a-reverse-step"),
    pytest.param("root.attributes_nothing.attributes_itemsTitle", id="unknown-link"),
    pytest.param(
        "root.attributes_jobAssignedContainer<designs_street>.attributes_itemsTitle", id="link-to-another-design"
    ),
    pytest.param("root.attributes_jobAssignedContainer.attributes_nothing", id="unknown-attribute"),
    pytest.param("root^attributes_premisesContainerJobs<designs_nothing>.attributes_itemsTitle", id="unknown-design"),
    pytest.param("root^attributes_premisesStreet<designs_premises>.attributes_itemsTitle", id="reverse-link-elsewhere"),
    pytest.param("root^attributes_nothing.attributes_itemsTitle", id="reverse-link-nowhere"),
    pytest.param(
        f"root^{PREMISES_LINK}<{PREMISES}>^{ROUND_LINK}<{ROUNDS}>.attributes_premisesUprn", id="attribute-of-the-parent"
    ),
]


@pytest.mark.parametrize("path", UNSERVABLE)
def test_a_join_path_alloy_cannot_serve_is_400_naming_it(client: httpx.Client, path: str) -> None:
    body = example("DW Container Job")
    body["aqs"]["properties"]["joinAttributes"].append(path)
    response = client.post("/api/export", json=body)
    assert response.status_code == 400, response.text
    assert path in response.json()["message"]


def test_reverse_steps_may_leave_the_design_out_when_one_design_links_back(
    sim: AlloySimulator, client: httpx.Client
) -> None:
    body = four_forms("Code")
    body["aqs"]["properties"]["joinAttributes"] = [f"root^{PREMISES_LINK}.attributes_premisesUprn"]
    archive = export(client, body)
    assert archive.namelist()[1:] == ["JoinedDesign_Premises_1.csv"]
    assert rows(archive, "JoinedDesign_Premises_1.csv")[1][2] == f"root^{PREMISES_LINK}"


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


def test_a_status_fault_may_write_its_waits_as_moments(sim: AlloySimulator, client: httpx.Client) -> None:
    for form in ("http_date", "epoch", "iso"):
        sim.inject(Fault("status", endpoint="task", status=429, retry_after=60, rate_limit_reset=60, wait_form=form))
    earliest = time.time() + 60
    replies = [client.get("/api/task/x").headers for _ in range(3)]
    latest = time.time() + 60
    http_date = email.utils.parsedate_to_datetime(replies[0]["retry-after"]).timestamp()
    epoch = float(replies[1]["x-rate-limit-reset"])
    iso = datetime.strptime(replies[2]["x-rate-limit-reset"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert earliest - 1 < http_date <= latest, "an HTTP date has whole seconds"
    assert earliest - 0.001 < epoch < latest + 0.001 and earliest - 0.001 < iso.timestamp() < latest + 0.001


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


def test_a_failed_tasks_message_may_echo_the_request_header(sim: AlloySimulator, client: httpx.Client) -> None:
    """As a proxy in front of Alloy might: the client must redact it."""
    sim.inject(Fault("failed_task", message="proxy saw {authorization}"))
    assert finish(client, start(client, example("Gully Inspections")))["error"] == f"proxy saw Bearer {API_KEY}"


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
    for start in (len(whole), len(whole) + 10):  # as real servers answer a range from the end or past it
        beyond = client.get(f"/api/file/{file_id}", headers={"Range": f"bytes={start}-"})
        assert (beyond.status_code, beyond.headers["content-range"]) == (416, f"bytes */{len(whole)}")


def file_of(client: httpx.Client, task_id: str) -> str:
    return str(client.get(f"/api/export/{task_id}/file").json()["fileItemId"])


def test_range_faults_answer_a_resume_with_the_whole_file(sim: AlloySimulator, client: httpx.Client) -> None:
    task_id = completed(client, example("Gully Inspections"))
    whole = download(client, task_id)
    sim.inject(Fault("range_ignored"))
    sim.inject(Fault("wrong_content_range"))
    path, resume = f"/api/file/{file_of(client, task_id)}", {"Range": "bytes=100-"}
    assert download(client, task_id) == whole, "a download from the start leaves the faults queued"
    ignored, misranged, honoured = (client.get(path, headers=resume) for _ in range(3))
    assert (ignored.status_code, ignored.content, "content-range" in ignored.headers) == (200, whole, False)
    assert (misranged.status_code, misranged.content) == (206, whole)
    assert misranged.headers["content-range"] == f"bytes 0-{len(whole) - 1}/{len(whole)}"
    assert (honoured.status_code, honoured.content) == (206, whole[100:])


def test_dropped_after_last_byte_sends_every_byte_then_breaks_the_body(
    sim: AlloySimulator, client: httpx.Client
) -> None:
    task_id = completed(client, example("Gully Inspections"))
    whole = download(client, task_id)
    sim.inject(Fault("dropped_after_last_byte"))
    received = bytearray()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", f"/api/file/{file_of(client, task_id)}") as response,
    ):
        for chunk in response.iter_bytes():
            received += chunk
    assert bytes(received) == whole
    resumed = client.get(f"/api/file/{file_of(client, task_id)}", headers={"Range": f"bytes={len(whole)}-"})
    assert resumed.status_code == 416
    assert download(client, task_id) == whole


def test_slow_download_trickles_the_file_in_small_pieces(sim: AlloySimulator, client: httpx.Client) -> None:
    task_id = completed(client, example("Gully Inspections"))
    whole = download(client, task_id)
    sim.inject(Fault("slow_download", seconds=0.05))
    started = time.monotonic()
    with client.stream("GET", f"/api/file/{file_of(client, task_id)}") as response:
        pieces = list(response.iter_raw())
    pauses = math.ceil(len(whole) / 1024) - 1
    assert pauses >= 3 and time.monotonic() - started >= pauses * 0.05
    assert b"".join(pieces) == whole and max(map(len, pieces)) <= 1024
    assert download(client, task_id) == whole


def test_endless_download_streams_zeros_after_the_file_until_the_client_hangs_up(
    sim: AlloySimulator, client: httpx.Client
) -> None:
    task_id = completed(client, example("Gully Inspections"))
    whole = download(client, task_id)
    sim.inject(Fault("endless_download"))
    received = bytearray()
    with client.stream("GET", f"/api/file/{file_of(client, task_id)}") as response:
        assert "content-length" not in response.headers
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > 4 * len(whole):
                break
    assert received.startswith(whole) and not any(received[len(whole) :])
    assert download(client, task_id) == whole


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
    requested = time.monotonic()
    task_id = start(client, example("Gully Inspections"))
    assert client.get(f"/api/export/{task_id}/file").status_code == 409
    seen: list[dict[str, Any]] = []

    def complete(task: dict[str, Any]) -> bool:
        seen.append(task)
        return task["status"] == "Complete"

    done = poll(client, task_id, complete)
    assert time.monotonic() - requested >= 0.6
    assert done == {"id": task_id, "status": "Complete", "processState": {"processed": 100, "total": 100}}
    order = ["Queued", "Running", "Complete"]
    statuses = [task["status"] for task in seen]
    assert "Running" in statuses and statuses == sorted(statuses, key=order.index), "Queued, Running, then Complete"
    processed = [task["processState"]["processed"] for task in seen]
    assert processed == sorted(processed) and len(set(processed)) > 2, "the count grows as the task runs"
    download(client, task_id)


@pytest.mark.parametrize("miscount", [2, -1])
def test_miscounted_task_reports_other_than_the_rows_its_zip_holds(
    sim: AlloySimulator, client: httpx.Client, miscount: int
) -> None:
    sim.inject(Fault("miscounted_task", miscount=miscount))
    task_id = start(client, example("Gully Inspections"))
    counted = finish(client, task_id)
    rows = len(main_rows(zipfile.ZipFile(io.BytesIO(download(client, task_id))))) - 1
    assert rows == sim.dataset.count(GULLIES)
    assert counted["processState"] == {"processed": rows + miscount, "total": rows + miscount}
    assert finish(client, start(client, example("Gully Inspections")))["processState"]["processed"] == rows


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
    with pytest.raises(ValueError, match="release event"):
        Fault("held_task")
    with pytest.raises(ValueError):
        Fault("status", status=200)
    with pytest.raises(ValueError):
        Fault("slow_task", seconds=0)
    with pytest.raises(ValueError, match="slow_download"):
        Fault("slow_download", seconds=-1)
    with pytest.raises(ValueError, match="miscounted_task"):
        Fault("miscounted_task", miscount=0)
    with pytest.raises(ValueError):
        Fault("disconnect", times=0)


# --- data and mutations -----------------------------------------------------------------------


def test_demo_dataset_is_deterministic() -> None:
    first, second, other = demo_dataset(), demo_dataset(), demo_dataset(seed=8)
    ids = first.ids(JOBS)
    assert len(ids) == 200 and ids == second.ids(JOBS) and ids != other.ids(JOBS)
    assert [first.item(i) for i in ids] == [second.item(i) for i in ids]
    assert {first.item(i).last_edit_date.year for i in ids} == {2023}
    assert [first.count(code) for code in first.designs] == [60, 120, 200, 150, 100, 150, 12]
    assert first.roots == (JOBS, GRAFFITI, GULLIES)


def test_clearing_a_link_removes_the_joined_rows(sim: AlloySimulator, client: httpx.Client) -> None:
    job = next(i for i in sim.dataset.ids(JOBS) if sim.dataset.linked_ids(i, CONTAINER_LINK))
    sim.dataset.relink(job, CONTAINER_LINK, [])
    archive = export(client, example("DW Container Job"))
    main = {record[0]: record for record in main_rows(archive)[1:]}
    assert main[job][7:10] == ["", "", ""]
    assert job not in {row[-1] for row in rows(archive, "JoinedDesign_Waste Container_1.csv")[1:]}
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


# --- designs synthesized from a council's AQS file ----------------------------------------------

HEX = "64b0c1d2e3f4a5b6c7d8e9f0"
STREET_CLEANSING = "designs_streetCleansingJob_" + HEX
WARD_LINK = "attributes_streetCleansingJobWardName_64b0c1d2e3f4a5b6c7d8e9f2"
COUNCIL_PREMISES = "designs_nlpgPremises"
ASSIGNABLE = "attributes_tasksAssignableTasks"
ASSETS = "attributes_assetGroupsAssets"
WASTE_GROUPS = "designs_wasteGroups"
BY_PREMISES = f"root^{ASSIGNABLE}<{COUNCIL_PREMISES}>"
COUNCIL_FILE: dict[str, Any] = {
    "aqs": {
        "type": "Join",
        "properties": {
            "dodiCode": STREET_CLEANSING,
            "collectionCode": ["Live", "Archive"],
            "attributes": [
                "attributes_itemsTitle",
                "attributes_itemsSubtitle",
                "attributes_streetCleansingJobBagsCollected_64b0c1d2e3f4a5b6c7d8e9f1",
                "attributes_tasksStatus",
                "attributes_tasksRaisedTime",
                "attributes_itemsGeometry",
                WARD_LINK,
            ],
            "joinAttributes": [
                "root.attributes_tasksStatus.attributes_taskStatusesStatus",
                f"root.{WARD_LINK}.attributes_wardWard_5f69d91b8163400065ea0682",
                f"{BY_PREMISES}.attributes_nlpgPremisesUprn",
                f"{BY_PREMISES}.attributes_itemsTitle",
                f"{BY_PREMISES}^{ASSETS}<{WASTE_GROUPS}>.attributes_wasteGroupsStreet_5f89babde27d980067890023",
                f"{BY_PREMISES}.attributes_nlpgPremisesServiceType_5f9beae0a198dd0064e02c1a"
                ".attributes_dWServiceTypeServiceType_5f9bea46bb524b006572f728",
            ],
            "sortInfo": {"attributeCode": "attributes_tasksRaisedTime", "sortOrder": "Descending"},
        },
        "children": [
            {
                "type": "And",
                "children": [
                    {
                        "type": "Equals",
                        "children": [
                            {
                                "type": "Attribute",
                                "properties": {"attributeCode": "attributes_premisesBlpuClass", "path": BY_PREMISES},
                            },
                            {"type": "String", "properties": {"value": ["R", "RD", "RD04"]}},
                        ],
                    }
                ],
            }
        ],
    },
    "parameterValues": [],
    "fileName": "Street Cleansing.csv",
    "exportHeaderType": "Name",
    "discriminator": "CsvExportWebRequestModel",
}
"""Shaped like a council's file: hex-suffixed codes, interface attributes, reverse and chained
joins, a forward join behind a reverse one, a filter through a path; none of it in the demo."""


@pytest.fixture
def council(tmp_path: Path) -> Iterator[AlloySimulator]:
    aqs_file = tmp_path / "Street Cleansing.json"
    aqs_file.write_text(json.dumps(COUNCIL_FILE, indent=2), encoding="utf-8")
    dataset = dataset_for_queries([json.loads(aqs_file.read_text(encoding="utf-8"))], base=demo_dataset())
    with AlloySimulator(dataset=dataset, api_key=API_KEY) as simulator:
        yield simulator


def test_a_synthesized_dataset_serves_an_aqs_file_the_simulator_has_never_seen(council: AlloySimulator) -> None:
    with connect(council) as http:
        archive = export(http, COUNCIL_FILE)
    assert archive.namelist() == [
        "Street Cleansing/Street Cleansing.csv",
        "JoinedDesign_Task Statuses_1.csv",
        "JoinedDesign_Ward_2.csv",
        "JoinedDesign_Nlpg Premises_3.csv",
        "JoinedDesign_Waste Groups_4.csv",
        "JoinedDesign_DW Service Type_5.csv",
    ]
    header, *records = main_rows(archive)
    assert header == [
        "Item ID",
        "Title",
        "Subtitle",
        "Bags Collected",
        "Status",
        "Raised Time",
        "Geometry",
        "Ward Name",
        "root.Status.Task Statuses.Status",
        "root.Status.Task Statuses.Item IDs",
        "root.Ward Name.Ward.Ward",
        "root.Ward Name.Ward.Item IDs",
        "root.Assignable Tasks.Nlpg Premises.Uprn",
        "root.Assignable Tasks.Nlpg Premises.Title",
        "root.Assignable Tasks.Nlpg Premises.Item IDs",
        "root.Assignable Tasks.Groups Assets.Waste Groups.Street",
        "root.Assignable Tasks.Groups Assets.Waste Groups.Item IDs",
        "root.Assignable Tasks.Service Type.DW Service Type.Service Type",
        "root.Assignable Tasks.Service Type.DW Service Type.Item IDs",
    ]
    dataset = council.dataset
    roots = dataset.ids(STREET_CLEANSING)
    assert len(roots) == 300 and dataset.count(COUNCIL_PREMISES) < len(roots)
    classes = {p: dataset.value(p, "attributes_premisesBlpuClass") for p in dataset.ids(COUNCIL_PREMISES)}
    kept = {
        root
        for root in roots
        if any(root in dataset.linked_ids(p, ASSIGNABLE) and blpu in ("R", "RD", "RD04") for p, blpu in classes.items())
    }
    assert 0 < len(kept) < len(roots)
    assert {record[0] for record in records} == kept
    raised = [record[header.index("Raised Time")] for record in records]
    assert [value for value in raised if value] == sorted(filter(None, raised), reverse=True)
    status = header.index("Status")
    assert all(
        record[status] == ", ".join(dataset.linked_ids(record[0], "attributes_tasksStatus")) for record in records
    )
    geometry = json.loads(next(record[6] for record in records if record[6]))
    assert geometry["type"] == "Point"

    groups_header, *groups = rows(archive, "JoinedDesign_Waste Groups_4.csv")
    assert groups_header == [
        "Item ID",
        "Street",
        "AQS Path",
        "Predecessor File",
        "Predecessor Item",
        "Predecessor Title",
        "Primary Item",
    ]
    assert groups and {row[3] for row in groups} == {"JoinedDesign_Nlpg Premises_3.csv"}
    assert all(row[4] in dataset.linked_ids(row[0], ASSETS) for row in groups)
    statuses_header = rows(archive, "JoinedDesign_Task Statuses_1.csv")[0]
    assert statuses_header[-3:] == ["Predecessor Title", "Predecessor Subtitle", "Primary Item"]


def test_synthesized_names_come_from_the_codes(council: AlloySimulator) -> None:
    designs = council.dataset.designs
    job = designs[STREET_CLEANSING]
    assert job.name == "Street Cleansing Job"
    assert [attribute.name for attribute in job.attributes][:3] == ["Title", "Subtitle", "Bags Collected"]
    assert [(link.code, link.name, link.targets) for link in job.links] == [
        ("attributes_tasksStatus", "Status", ("designs_taskStatuses",)),
        (WARD_LINK, "Ward Name", ("designs_ward",)),
    ]
    assert [(link.code, link.targets) for link in designs[COUNCIL_PREMISES].links] == [
        (ASSIGNABLE, (STREET_CLEANSING,)),
        ("attributes_nlpgPremisesServiceType_5f9beae0a198dd0064e02c1a", ("designs_dWServiceType",)),
    ]
    assert designs[WASTE_GROUPS].links[0].targets == (COUNCIL_PREMISES,)
    assert council.dataset.roots[-1] == STREET_CLEANSING


def test_synthesis_is_deterministic_and_shares_designs_between_files() -> None:
    other = copy.deepcopy(COUNCIL_FILE)
    other["aqs"]["properties"]["dodiCode"] = "designs_gullyCleanse_" + HEX
    other["aqs"]["properties"]["attributes"] = ["attributes_itemsTitle", "attributes_tasksStatus"]
    other["aqs"]["properties"]["joinAttributes"] = [
        "root.attributes_tasksStatus.attributes_itemsTitle",
        f"root^{ASSIGNABLE}<{COUNCIL_PREMISES}>.attributes_premisesPostcode",
    ]
    first = dataset_for_queries([COUNCIL_FILE, other["aqs"]])
    again = dataset_for_queries([COUNCIL_FILE, other["aqs"]])
    assert first.designs.keys() == again.designs.keys()
    assert [first.item(i) for i in first.ids(STREET_CLEANSING)] == [again.item(i) for i in again.ids(STREET_CLEANSING)]
    assert dataset_for_queries([COUNCIL_FILE], seed=12).ids(STREET_CLEANSING) != first.ids(STREET_CLEANSING)
    assert first.roots == (STREET_CLEANSING, "designs_gullyCleanse_" + HEX)
    statuses = first.designs["designs_taskStatuses"]
    assert [attribute.code for attribute in statuses.attributes] == [
        "attributes_itemsTitle",
        "attributes_taskStatusesStatus",
    ]
    premises = first.designs[COUNCIL_PREMISES]
    assert "attributes_premisesPostcode" in [attribute.code for attribute in premises.attributes]
    assert premises.links[0].targets == (STREET_CLEANSING, "designs_gullyCleanse_" + HEX)
    assert (
        dataset_for_queries([example("DW Container Job")], base=demo_dataset()).designs.keys()
        == demo_dataset().designs.keys()
    )


def test_simulate_day_changes_the_synthesized_roots(council: AlloySimulator) -> None:
    dataset = council.dataset
    before = set(dataset.ids(STREET_CLEANSING))
    premises = {p: dataset.item(p) for p in dataset.ids(COUNCIL_PREMISES)}
    changes = dataset.simulate_day(seed=3)
    after = set(dataset.ids(STREET_CLEANSING))
    assert set(changes.inserted) & after and set(changes.deleted) & before and not set(changes.deleted) & after
    touched = (set(changes.edited) | set(changes.inserted) | set(changes.unlinked)) & after
    assert touched and len(touched) < len(after)
    unfiltered = copy.deepcopy(COUNCIL_FILE)
    del unfiltered["aqs"]["children"]
    with connect(council) as http:
        records = main_rows(export(http, with_filter(unfiltered, SINCE_2024)))[1:]
    assert {record[0] for record in records} == touched
    gone = set(changes.deleted)
    assert all(dataset.item(p) == item for p, item in premises.items() if not gone & set(item.links[0])), (
        "premises change only where a deleted root drops out of their links"
    )
