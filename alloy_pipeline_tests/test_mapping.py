"""Mapping files: parsed and validated before anything is written, found under the slug name or the
old Glue jobs' name, in a folder and on moto's S3, and matched against the tables queries produce.
Only the round trip of renames that move the key uses Spark."""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.aqs import load_query
from alloy_pipeline.frames import rename_columns
from alloy_pipeline.lake import SnapshotTable
from alloy_pipeline.mapping import (
    Mapping,
    MappingError,
    MappingNames,
    MappingResource,
    applicable,
    stale_files,
    unmatched_files,
)
from alloy_pipeline.snapshot_merge import read_snapshot_table
from alloy_pipeline_tests.harness import REPO

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
    mapping = MappingResource(location=str(tmp_path)).load(MappingNames(slug="q", stem="q"), "t")
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


DW_CONTAINER_JOB = MappingNames(slug="dw_container_job", stem="dw container job")
SLUG_NAME = "dw_container_job_dw_container_job.json"
OLD_NAME = "dw container job_dw_container_job.json"


def names_of(tmp_path: Path, aqs_file: str) -> MappingNames:
    """The names of a real AQS file saved as `aqs_file`, as the code location loads it."""
    shutil.copy(REPO / "aqs_queries" / "DW Container Job.json", tmp_path / aqs_file)
    return MappingNames.of(load_query(tmp_path / aqs_file))


@pytest.mark.parametrize(
    ("aqs_file", "table", "expected"),
    [
        ("DW Container Job.json", "dw_container_job", (SLUG_NAME, OLD_NAME)),
        (
            "DW Education&Compliance Inspection.json",
            "teams_2",
            ("dw_education_compliance_inspection_teams_2.json", "dw education&compliance inspection_teams_2.json"),
        ),
        ("NI195 Monitoring.json", "x", ("ni195_monitoring_x.json", "ni195 monitoring_x.json")),
        ("graffiti.json", "graffiti", ("graffiti_graffiti.json",)),
    ],
)
def test_a_table_is_looked_for_under_the_slug_name_then_the_old_jobs_name(
    tmp_path: Path, aqs_file: str, table: str, expected: tuple[str, ...]
) -> None:
    assert names_of(tmp_path, aqs_file).file_names(table) == expected


def mapping(name: str, renames: dict[str, str]) -> Mapping:
    return Mapping(source=f"s3://lake/mapping-files/{name}", renames=renames)


def test_the_first_file_found_applies_and_another_with_the_same_renames_is_fine() -> None:
    slug, old = mapping(SLUG_NAME, {"title": "job", "notes": "n"}), mapping(OLD_NAME, {"notes": "n", "title": "job"})
    assert applicable([]) is None
    assert applicable([old]) == old
    assert applicable([slug, old]) == slug


def test_two_files_for_one_table_that_rename_differently_are_refused_naming_both() -> None:
    with pytest.raises(MappingError) as raised:
        applicable([mapping(SLUG_NAME, {"title": "job"}), mapping(OLD_NAME, {"title": "job_title"})])
    message = str(raised.value)
    assert f"s3://lake/mapping-files/{SLUG_NAME} and s3://lake/mapping-files/{OLD_NAME}" in message
    assert "rename it differently" in message


def test_a_file_is_matched_by_its_whole_name_even_when_two_queries_prefixes_begin_it() -> None:
    gully = MappingNames(slug="gully", stem="gully")
    cleanse = MappingNames(slug="gully_cleanse", stem="gully cleanse")
    files = ["gully_gully.json", "gully_cleanse_gullies_5.json", "gully cleanse_gully_cleanse.json", "gully_old.json"]
    tables = [(gully, "gully"), (cleanse, "gully_cleanse"), (cleanse, "gullies_5")]
    assert unmatched_files(files, tables) == ("gully_old.json",)


def test_stale_files_are_the_querys_own_that_name_none_of_its_tables() -> None:
    files = [
        SLUG_NAME,
        "dw container job_waste_container_1.json",
        "dw container job_teams_7.json",
        "dw_container_job_removed_3.json",
        "graffiti_graffiti.json",
        "notes.json",
    ]
    stale = stale_files(files, DW_CONTAINER_JOB, ["dw_container_job", "waste_container_1"])
    assert stale == ("dw container job_teams_7.json", "dw_container_job_removed_3.json")


def test_another_querys_files_are_not_this_querys_stale_ones() -> None:
    gully = MappingNames(slug="gully", stem="gully")
    cleanse = MappingNames(slug="gully_cleanse", stem="gully cleanse")
    files = ["gully_gully.json", "gully_cleanse_gullies_5.json", "gully_cleanse_gone_2.json", "gully_gone_1.json"]
    assert stale_files(files, gully, ["gully"]) == (
        "gully_cleanse_gone_2.json",
        "gully_cleanse_gullies_5.json",
        "gully_gone_1.json",
    )
    assert stale_files(files, gully, ["gully"], [gully, cleanse]) == ("gully_gone_1.json",)
    assert stale_files(files, cleanse, ["gully_cleanse", "gullies_5"], [gully]) == ("gully_cleanse_gone_2.json",)


@dataclass(frozen=True)
class Location:
    """A mapping location and a way to put a file there, as a council would."""

    resource: MappingResource
    put: Callable[[str, bytes], object]
    source_prefix: str


@pytest.fixture(params=["folder", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "folder":
        folder = tmp_path / "mapping-files"
        folder.mkdir()
        return Location(
            MappingResource(location=str(folder)), lambda name, body: (folder / name).write_bytes(body), f"{folder}/"
        )
    bucket = request.getfixturevalue("bucket")
    client = boto3.client("s3")
    return Location(
        MappingResource(location=f"s3://{bucket}/mapping-files/"),
        lambda name, body: client.put_object(Bucket=bucket, Key=f"mapping-files/{name}", Body=body),
        f"s3://{bucket}/mapping-files/",
    )


def put(location: Location, name: str, renames: dict[str, str]) -> None:
    location.put(name, json.dumps(renames).encode())


def test_the_old_jobs_name_applies_when_there_is_no_slug_named_file(location: Location) -> None:
    put(location, OLD_NAME, {"title": "job_title"})
    found = location.resource.load(DW_CONTAINER_JOB, "dw_container_job")
    assert found == Mapping(source=f"{location.source_prefix}{OLD_NAME}", renames={"title": "job_title"})
    assert location.resource.load(DW_CONTAINER_JOB, "waste_container_1") is None


def test_the_slug_name_applies_alone_and_when_both_say_the_same(location: Location) -> None:
    put(location, SLUG_NAME, {"title": "job_title"})
    assert location.resource.load(DW_CONTAINER_JOB, "dw_container_job").source == f"{location.source_prefix}{SLUG_NAME}"
    put(location, OLD_NAME, {"title": "job_title"})
    assert location.resource.load(DW_CONTAINER_JOB, "dw_container_job").source == f"{location.source_prefix}{SLUG_NAME}"


def test_both_names_renaming_differently_fail_the_load_naming_both(location: Location) -> None:
    put(location, SLUG_NAME, {"title": "job_title"})
    put(location, OLD_NAME, {"title": "job_name"})
    with pytest.raises(MappingError) as raised:
        location.resource.load(DW_CONTAINER_JOB, "dw_container_job")
    assert f"{location.source_prefix}{SLUG_NAME} and {location.source_prefix}{OLD_NAME}" in str(raised.value)


def test_the_json_files_directly_at_the_location_are_listed(location: Location) -> None:
    assert location.resource.list_files() == ()
    for name in (OLD_NAME, SLUG_NAME, "notes.txt", "dw container job_teams_7.json"):
        location.put(name, b"{}")
    assert location.resource.list_files() == (
        "dw container job_dw_container_job.json",
        "dw container job_teams_7.json",
        SLUG_NAME,
    )


def test_a_nested_file_or_one_outside_the_prefix_is_not_listed(bucket: str) -> None:
    client = boto3.client("s3")
    for key in ("mapping-files/q_t.json", "mapping-files/archive/q_old.json", "mapping-files-old/q_x.json", "q_y.json"):
        client.put_object(Bucket=bucket, Key=key, Body=b"{}")
    assert MappingResource(location=f"s3a://{bucket}/mapping-files").list_files() == ("q_t.json",)


def test_a_mapping_file_s3_refuses_to_serve_is_an_error_naming_it_not_no_mapping(bucket: str) -> None:
    """A bucket policy denies s3:GetObject on one file, which moto enforces as S3 does (403); its
    table must not be snapshotted unrenamed as if the file were not there."""
    client = boto3.client("s3")
    refused = f"mapping-files/{SLUG_NAME}"
    client.put_object(Bucket=bucket, Key=refused, Body=b'{"title": "job_title"}')
    denied = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/{refused}",
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [denied]}))
    mappings = MappingResource(location=f"s3://{bucket}/mapping-files/")

    with pytest.raises(MappingError) as raised:
        mappings.load(DW_CONTAINER_JOB, "dw_container_job")
    assert str(raised.value).startswith(
        f"mapping file s3://{bucket}/{refused}: cannot be read (reading needs s3:GetObject on it"
    )
    assert mappings.load(DW_CONTAINER_JOB, "waste_container_1") is None, "a file that is not there is still none"


def test_a_missing_folder_lists_nothing_and_maps_nothing(tmp_path: Path) -> None:
    missing = MappingResource(location=str(tmp_path / "absent"))
    assert missing.list_files() == ()
    assert missing.load(DW_CONTAINER_JOB, "dw_container_job") is None


JOINED_COLUMNS = [
    "item_id",
    "attributes_taskstatusesstatus",
    "aqs_path",
    "predecessor_file",
    "predecessor_item",
    "primary_item",
    "import_date",
    "snapshot_date",
]


@pytest.mark.parametrize(
    "renames",
    [
        {  # a joined table's file of the old jobs: the key becomes status_id, the predecessor the item_id
            "item_id": "status_id",
            "predecessor_item": "item_id",
            "predecessor_file": "item_file",
            "attributes_taskstatusesstatus": "status",
            "primary_item": "primary_item",
            "import_date": "import_date",
            "refined_date": "refined_date",
        },
        {"item_id": "item_id", "attributes_taskstatusesstatus": "status"},  # a main table's
        {"snapshot_date": "refined_date", "aqs_path": "snapshot_date"},  # a snapshot column's name given away
    ],
)
def test_renames_that_move_the_key_round_trip(spark: SparkSession, tmp_path: Path, renames: dict[str, str]) -> None:
    """Snapshots are stored renamed, and the next day's merge reads them back under the raw names."""
    frame = spark.createDataFrame(
        [tuple(f"{column}-{row}" for column in JOINED_COLUMNS) for row in (1, 2)], JOINED_COLUMNS
    )
    applied = Mapping.parse(SOURCE, json.dumps(renames)).for_columns(JOINED_COLUMNS)
    stored = rename_columns(frame, applied)
    assert stored.columns == [renames.get(column, column) for column in JOINED_COLUMNS]
    stored.write.parquet(str(tmp_path / "stored"))
    entry = SnapshotTable(path=str(tmp_path / "stored"), rows=2, column_types=tuple(stored.dtypes), renames=applied)
    back = read_snapshot_table(spark, entry)
    kept = [column for column in JOINED_COLUMNS if column != "snapshot_date"]
    assert back.columns == kept
    assert sorted(map(tuple, back.collect())) == sorted(map(tuple, frame.select(*kept).collect()))
