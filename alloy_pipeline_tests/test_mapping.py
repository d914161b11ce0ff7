"""Mapping files as parsed and validated, without Spark: the checks that run before anything is written."""

import json
from pathlib import Path

import pytest

from alloy_pipeline.mapping import Mapping, MappingError, MappingResource

SOURCE = "s3://lake/mapping-files/dw_container_job_dw_container_job.json"
COLUMNS = ["item_id", "title", "status", "notes", "import_date", "snapshot_date"]


def parsed(renames: dict[str, str]) -> Mapping:
    return Mapping.parse(SOURCE, json.dumps(renames).encode())


@pytest.mark.parametrize(
    "renames",
    [
        {"title": "status", "status": "title"},
        {"title": "status", "status": "notes", "notes": "comments"},
        {"title": "Title", "notes": "NOTES"},
    ],
)
def test_swaps_chains_and_case_changes_of_one_column_are_valid(renames: dict[str, str]) -> None:
    assert parsed(renames).for_columns(COLUMNS) == renames


@pytest.mark.parametrize(
    ("renames", "named"),
    [
        ({"title": "Status"}, "'title' renamed to 'Status' and 'status' (not renamed)"),
        ({"title": "Job", "notes": "JOB"}, "'title' renamed to 'Job' and 'notes' renamed to 'JOB'"),
        ({"title": "status"}, "'title' renamed to 'status' and 'status' (not renamed)"),
        ({"notes": "Snapshot_Date"}, "'notes' renamed to 'Snapshot_Date' and 'snapshot_date' (not renamed)"),
    ],
)
def test_two_columns_whose_names_differ_only_in_case_are_refused(renames: dict[str, str], named: str) -> None:
    with pytest.raises(MappingError) as raised:
        parsed(renames).for_columns(COLUMNS)
    message = str(raised.value)
    assert message.startswith(f"mapping file {SOURCE}: would give two columns") and named in message


def test_a_key_given_twice_is_refused_with_its_name() -> None:
    with pytest.raises(MappingError, match=rf"^mapping file {SOURCE}: the key 'title' appears more than once"):
        Mapping.parse(SOURCE, b'{"title": "job_title", "notes": "job_notes", "title": "name"}')


@pytest.mark.parametrize("text", [b'\xef\xbb\xbf{"title": "job_title"}', '\ufeff{"title": "job_title"}'])
def test_a_utf8_bom_is_accepted(text: bytes | str) -> None:
    assert Mapping.parse(SOURCE, text).renames == {"title": "job_title"}


def test_a_local_mapping_file_saved_with_a_bom_is_read(tmp_path: Path) -> None:
    (tmp_path / "q_t.json").write_text('{"title": "job_title"}', encoding="utf-8-sig")
    mapping = MappingResource(location=str(tmp_path)).load("q_t")
    assert mapping is not None and mapping.renames == {"title": "job_title"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"[1, 2]", "must be a JSON object of strings (Input should be a valid dictionary)"),
        (b'{"title": 3}', "must be a JSON object of strings (title: Input should be a valid string)"),
        (b'{"title": ', "must be a JSON object of strings (invalid JSON at line 1 column 11"),
        (b'{"title": "caf\xe9"}', "is not UTF-8 text"),
        (b'{"title": " "}', "empty new name for title"),
    ],
)
def test_a_malformed_file_is_refused_with_its_name(text: bytes, problem: str) -> None:
    with pytest.raises(MappingError) as raised:
        Mapping.parse(SOURCE, text)
    assert str(raised.value).startswith(f"mapping file {SOURCE}: {problem}")
