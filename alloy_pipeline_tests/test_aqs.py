import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from alloy_pipeline.aqs import AqsError, ExportRequest, format_alloy_datetime, load_queries

REPO_QUERIES = Path(__file__).resolve().parents[1] / "aqs_queries"

JOIN_REQUEST = {
    "aqs": {
        "type": "Join",
        "properties": {
            "dodiCode": "designs_graffiti",
            "collectionCode": ["Live"],
            "attributes": ["attributes_itemsTitle", "attributes_graffitiStatus"],
            "joinAttributes": ["root.attributes_graffitiStreet.attributes_itemsTitle"],
        },
        "children": [
            {
                "type": "Equals",
                "children": [
                    {"type": "Attribute", "properties": {"attributeCode": "attributes_graffitiStatus"}},
                    {"type": "String", "properties": {"value": ["Open"]}},
                ],
            }
        ],
    },
    "fileName": "Graffiti.csv",
    "exportHeaderType": "Code",
    "discriminator": "CsvExportWebRequestModel",
    "parameterValues": [],
}

PROPERTIES = JOIN_REQUEST["aqs"]["properties"]

WATERMARK = datetime(2024, 3, 31, 23, 5, 7, 123456, tzinfo=UTC)


def write(folder: Path, name: str, body: object) -> Path:
    path = folder / name
    path.write_text(json.dumps(body) if not isinstance(body, str) else body)
    return path


def edited_since_node(value: str) -> dict:
    return {
        "type": "GreaterThan",
        "children": [
            {"type": "ItemProperty", "properties": {"itemPropertyName": "lastEditDate"}},
            {"type": "DateTime", "properties": {"value": [value]}},
        ],
    }


def test_repo_example_queries_load_with_unique_slugs() -> None:
    queries = load_queries(REPO_QUERIES)
    assert len(queries) >= 3
    assert {query.request.export_header_type for query in queries} == {"Name", "Code"}
    assert any(query.request.aqs.children for query in queries), "one example keeps its own filter"
    assert any(getattr(query.request.aqs.properties, "join_attributes", None) for query in queries)


def test_slug_follows_design_rule(tmp_path: Path) -> None:
    write(tmp_path, "DW Container Job.json", JOIN_REQUEST)
    [query] = load_queries(tmp_path)
    assert query.slug == "dw_container_job"


def test_round_trip_keeps_the_request_as_written() -> None:
    assert ExportRequest.model_validate(JOIN_REQUEST).to_body() == JOIN_REQUEST


REAL_JOIN_PATHS = [
    "root.attributes_tasksStatus.attributes_taskStatusesStatus",
    "root^attributes_tasksAssignableTasks<designs_nlpgPremises>.attributes_itemsGeometry",
    "root^attributes_tasksAssignableTasks<designs_nlpgPremises>^attributes_assetGroupsAssets<designs_wasteGroups>"
    ".attributes_wasteGroupsStreet_5f89babde27d980067890023",
    "root^attributes_tasksAssignableTasks<designs_nlpgPremises>.attributes_premisesStreet.attributes_itemsTitle",
    "root.attributes_licenceApplicant<designs_contacts>.attributes_contactsEmail",
    "root^attributes_licencesApplication.attributes_itemsTitle",
]


def with_alloy_extras() -> dict:
    """JOIN_REQUEST as a council's file holds it: the four join forms, and fields the pipeline
    does not read at the root, in `aqs`, in `properties` and inside filter nodes (a null too)."""
    request = json.loads(json.dumps(JOIN_REQUEST))
    request["exportSettings"] = {"dateFormat": "ISO", "timeZone": None}
    request["aqs"]["hint"] = "keep me"
    properties = request["aqs"]["properties"]
    properties["joinAttributes"] = REAL_JOIN_PATHS
    properties["sortInfo"] = {"attributeCode": "attributes_itemsTitle", "sortOrder": "Ascending"}
    properties["collectionCode"] = ["Live", "Archive"]
    equals = request["aqs"]["children"][0]
    equals["properties"] = {"caseSensitive": False}
    equals["children"][1]["properties"]["value"] = ["R", "RD", "RF"]
    equals["children"][1]["note"] = None
    return request


def test_fields_the_pipeline_does_not_read_pass_through_at_every_level(tmp_path: Path) -> None:
    written = with_alloy_extras()
    write(tmp_path, "Fix My Street Defect.json", written)
    [query] = load_queries(tmp_path)
    assert query.request.to_body() == written
    narrowed = query.request.edited(after=WATERMARK).to_body()
    [wrapped] = narrowed["aqs"]["children"]
    assert wrapped["children"][0] == written["aqs"]["children"][0]
    assert {key: value for key, value in narrowed.items() if key != "aqs"} == {
        key: value for key, value in written.items() if key != "aqs"
    }
    assert narrowed["aqs"]["properties"] == written["aqs"]["properties"]
    assert narrowed["aqs"]["hint"] == "keep me"


def test_incremental_filter_wraps_own_filter_in_and() -> None:
    body = ExportRequest.model_validate(JOIN_REQUEST).edited(after=WATERMARK).to_body()
    [child] = body["aqs"]["children"]
    assert child["type"] == "And"
    assert child["children"] == [JOIN_REQUEST["aqs"]["children"][0], edited_since_node("2024-03-31T23:05:07.123Z")]
    assert body["aqs"]["properties"] == JOIN_REQUEST["aqs"]["properties"]


def test_incremental_filter_alone_when_query_has_no_filter() -> None:
    request = {**JOIN_REQUEST, "aqs": {**JOIN_REQUEST["aqs"], "children": []}}
    body = ExportRequest.model_validate(request).edited(after=WATERMARK).to_body()
    assert body["aqs"]["children"] == [edited_since_node("2024-03-31T23:05:07.123Z")]


def test_watermark_is_rendered_in_utc() -> None:
    british_summer = timezone(timedelta(hours=1))
    assert format_alloy_datetime(datetime(2024, 6, 1, 1, 30, tzinfo=british_summer)) == "2024-06-01T00:30:00.000Z"
    with pytest.raises(ValueError):
        format_alloy_datetime(datetime(2024, 6, 1))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ({k: v for k, v in JOIN_REQUEST.items() if k != "fileName"}, "fileName"),
        ({**JOIN_REQUEST, "discriminator": "Other"}, "discriminator"),
        (
            {
                **JOIN_REQUEST,
                "aqs": {**JOIN_REQUEST["aqs"], "properties": {**PROPERTIES, "joinAttributes": ["root.a"]}},
            },
            "'root.a' is not a join path",
        ),
        ({**JOIN_REQUEST, "exportHeaderType": "Title"}, "exportHeaderType"),
        ({**JOIN_REQUEST, "aqs": {**JOIN_REQUEST["aqs"], "type": "Union"}}, "aqs"),
        ({**JOIN_REQUEST, "aqs": {"type": "Join", "properties": {"attributes": []}}}, "dodiCode"),
        (
            {**JOIN_REQUEST, "aqs": {"type": "Query", "properties": JOIN_REQUEST["aqs"]["properties"]}},
            "a Query takes no joinAttributes",
        ),
        (
            {
                **JOIN_REQUEST,
                "aqs": {**JOIN_REQUEST["aqs"], "properties": {**PROPERTIES, "joinAttributes": ["street"]}},
            },
            "'street' is not a join path",
        ),
        (
            {**JOIN_REQUEST, "aqs": {**JOIN_REQUEST["aqs"], "children": JOIN_REQUEST["aqs"]["children"] * 2}},
            "at most one child",
        ),
    ],
)
def test_bad_file_stops_loading_with_file_name_and_problem(tmp_path: Path, body: object, problem: str) -> None:
    path = write(tmp_path, "Broken Query.json", body)
    with pytest.raises(AqsError) as raised:
        load_queries(tmp_path)
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_a_file_without_a_discriminator_loads_and_is_sent_without_one(tmp_path: Path) -> None:
    written = {key: value for key, value in JOIN_REQUEST.items() if key != "discriminator"}
    write(tmp_path, "Highways Licences.json", written)
    [query] = load_queries(tmp_path)
    assert query.request.to_body() == written


def test_every_broken_file_is_named_in_one_error(tmp_path: Path) -> None:
    write(tmp_path, "Good Query.json", with_alloy_extras())
    no_design = write(tmp_path, "No Design.json", {**JOIN_REQUEST, "aqs": {"type": "Join", "properties": {}}})
    bad_json = write(tmp_path, "Half Saved.json", '{"aqs": ')
    bad_name = write(tmp_path, "Wrong Name.json", {**JOIN_REQUEST, "fileName": "export.xlsx"})
    with pytest.raises(AqsError) as raised:
        load_queries(tmp_path)
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("3 problems in AQS folder")
    assert [line.split(": ")[0] for line in lines[1:]] == [
        f"- AQS file {path}" for path in (bad_json, no_design, bad_name)
    ]
    assert "aqs.Join.properties.dodiCode" in lines[2] and "aqs.Join.properties.attributes" in lines[2]
    assert "fileName" in lines[3]
    assert "Good Query" not in str(raised.value)


def test_two_files_with_one_slug_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "Graffiti Reports.json", JOIN_REQUEST)
    write(tmp_path, "graffiti-reports.json", JOIN_REQUEST)
    with pytest.raises(AqsError, match="graffiti_reports"):
        load_queries(tmp_path)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AqsError, match="ALLOY_AQS_DIR"):
        load_queries(tmp_path / "nowhere")
    with pytest.raises(AqsError, match="no \\*.json"):
        load_queries(tmp_path)


def test_a_bounded_window_asks_for_edits_up_to_the_bound_beside_the_querys_filter() -> None:
    until = datetime(2024, 4, 2, 3, 0, 0, 250999, tzinfo=UTC)
    body = ExportRequest.model_validate(JOIN_REQUEST).edited(after=WATERMARK, until=until).to_body()
    [child] = body["aqs"]["children"]
    assert child["type"] == "And"
    own, after, before = child["children"]
    assert own == JOIN_REQUEST["aqs"]["children"][0]
    assert after == edited_since_node("2024-03-31T23:05:07.123Z")
    assert before["type"] == "LessThan", "<= until, to the millisecond Alloy stores"
    [bound] = before["children"][1]["properties"]["value"]
    assert datetime.strptime(bound, "%Y-%m-%dT%H:%M:%S.%f%z") - until.replace(microsecond=250000) == timedelta(
        milliseconds=1
    )


def test_a_full_extract_is_the_request_as_written() -> None:
    request = {**JOIN_REQUEST, "aqs": {**JOIN_REQUEST["aqs"], "children": []}}
    assert ExportRequest.model_validate(request).edited().to_body() == request
