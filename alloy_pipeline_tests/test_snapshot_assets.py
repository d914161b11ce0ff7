"""Snapshot assets end to end: simulator over HTTP, mapping files on moto's S3 server, real Spark."""

import json
from pathlib import Path

import boto3
import pytest

from alloy_pipeline.naming import snapshot_key
from alloy_pipeline_tests.harness import Pipeline, failure_text, rows_of

JOBS = "designs_wasteContainerJob"
CONTAINERS = "designs_wasteContainer"
LINK = "attributes_jobAssignedContainer"
CONTAINER_JOIN = f"root.{LINK}."
QUERY = "dw_container_job"
JOINED = "waste_container_1"
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]


@pytest.fixture
def jobs(simulator, engine, spark, instance, tmp_path: Path, bucket: str) -> Pipeline:
    """DW Container Job with its container join only: these tests follow that link (the reverse
    joins are test_council_queries' and test_raw_assets')."""
    return Pipeline.create(
        simulator,
        engine.url,
        spark,
        instance,
        tmp_path,
        ["DW Container Job"],
        mapping_location=f"s3://{bucket}/mapping-files/",
    ).keep_joins("DW Container Job", CONTAINER_JOIN)


def put_mapping(bucket: str, table: str, body: object) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"mapping-files/{QUERY}_{table}.json", Body=text.encode())


def snapshot_metadata(result, query: str = QUERY) -> dict:
    [materialization] = result.asset_materializations_for_node(snapshot_key(query).to_python_identifier())
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result) -> dict[str, bool]:
    return {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}


def truth(pipeline: Pipeline) -> tuple[set[str], set[tuple[str, str]]]:
    """What Alloy holds now: job ids, and (container, job) links."""
    dataset = pipeline.simulator.dataset
    job_ids = set(dataset.ids(JOBS))
    links = {(container, job) for job in job_ids for container in dataset.linked_ids(job, LINK)}
    return job_ids, links


def stored(pipeline: Pipeline, day: str) -> tuple[set[str], set[tuple[str, str]]]:
    main = pipeline.snapshot_table(QUERY, QUERY, day)
    joined = pipeline.snapshot_table(QUERY, JOINED, day)
    ids = [row.item_id for row in main.select("item_id").collect()]
    assert len(ids) == len(set(ids))
    return set(ids), {(row.item_id, row.primary_item) for row in joined.select("item_id", "primary_item").collect()}


def test_full_day_then_edits_inserts_and_link_changes(jobs: Pipeline) -> None:
    first = jobs.run(DAYS[0])
    assert stored(jobs, DAYS[0]) == truth(jobs)
    assert snapshot_metadata(first)["inserted"] == jobs.simulator.dataset.count(JOBS)
    assert all(checks(first).values())

    dataset = jobs.simulator.dataset
    cleared, moved, edited = dataset.ids(JOBS)[:3]
    assert dataset.linked_ids(cleared, LINK), "the job had a container to lose"
    dataset.relink(cleared, LINK, [])
    new_container = next(c for c in dataset.ids(CONTAINERS) if c not in dataset.linked_ids(moved, LINK))
    dataset.relink(moved, LINK, [new_container])
    dataset.set_value(edited, "attributes_jobNotes", 'Bin "B12" moved, lid broken\nreturn Tuesday')
    inserted = dataset.insert(JOBS, 2)

    second = jobs.run(DAYS[1])
    assert stored(jobs, DAYS[1]) == truth(jobs)
    joined = jobs.snapshot_table(QUERY, JOINED, DAYS[1])
    assert joined.where(f"primary_item = '{cleared}'").count() == 0
    assert {row.item_id for row in joined.where(f"primary_item = '{moved}'").collect()} == {new_container}
    notes = jobs.snapshot_table(QUERY, QUERY, DAYS[1]).where(f"item_id = '{edited}'").first().notes
    assert notes == 'Bin "B12" moved, lid broken\nreturn Tuesday'
    metadata = snapshot_metadata(second)
    assert (metadata["inserted"], metadata["replaced"]) == (len(inserted), 3)
    assert metadata["carried_forward"] == dataset.count(JOBS) - len(inserted) - 3
    assert metadata["dagster/row_count"] == dataset.count(JOBS)
    assert metadata["raw_partitions"] == [DAYS[1]] and metadata["base_snapshot"] == DAYS[0]
    assert [column.name for column in metadata["dagster/column_schema"].columns][-4:] == [
        "snapshot_year",
        "snapshot_month",
        "snapshot_day",
        "snapshot_date",
    ]
    assert all(checks(second).values())


def test_empty_extract_and_missing_raw_day_carry_the_snapshot_forward(jobs: Pipeline) -> None:
    jobs.run(DAYS[0])
    result = jobs.run(DAYS[1])
    assert jobs.raw_manifest(QUERY, DAYS[1]).tables[QUERY].rows == 0
    assert snapshot_metadata(result)["inserted"] == 0
    drop = ("snapshot_day", "snapshot_date")
    day1 = rows_of(jobs.snapshot_table(QUERY, QUERY, DAYS[0]), drop)
    assert rows_of(jobs.snapshot_table(QUERY, QUERY, DAYS[1]), drop) == day1

    jobs.run(DAYS[2], group="alloy_snapshot")
    assert jobs.raw_manifest(QUERY, DAYS[2]) is None
    assert rows_of(jobs.snapshot_table(QUERY, QUERY, DAYS[2]), drop) == day1
    assert {row.snapshot_date for row in jobs.snapshot_table(QUERY, QUERY, DAYS[2]).collect()} == {"20240303"}


def test_a_new_column_is_added_and_reported_as_drift(jobs: Pipeline) -> None:
    jobs.run(DAYS[0])
    aqs_file = jobs.aqs_dir / "DW Container Job.json"
    request = json.loads(aqs_file.read_text())
    request["aqs"]["properties"]["joinAttributes"].append(
        "root.attributes_jobAssignedContainer.attributes_wasteContainerSerialNumber"
    )
    aqs_file.write_text(json.dumps(request))
    edited = set(jobs.simulator.dataset.edit(JOBS, 4))

    result = jobs.run(DAYS[1])
    main_column = "root_assigned_container_waste_container_serial_number"
    snapshot = jobs.snapshot_table(QUERY, QUERY, DAYS[1])
    joined = jobs.snapshot_table(QUERY, JOINED, DAYS[1])
    assert snapshot.count() == jobs.simulator.dataset.count(JOBS)
    assert {row.item_id for row in snapshot.where(f"{main_column} is not null").collect()} <= edited
    assert {row.primary_item for row in joined.where("serial_number is not null").collect()} <= edited
    assert joined.where("serial_number is not null").count() > 0
    drift = next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_drift")
    assert not drift.passed and drift.severity.value == "WARN"
    assert drift.metadata["changes"].value == {
        QUERY: {"added": [main_column], "removed": []},
        JOINED: {"added": ["serial_number"], "removed": []},
    }


def test_mapping_from_s3_and_a_mapping_change_between_days(jobs: Pipeline, bucket: str) -> None:
    """The main table's file under the slug name, the joined table's under the old Glue jobs' name
    (`dw container job_…`), and a stale file that names no table of the query."""
    s3, location = boto3.client("s3"), f"s3://{bucket}/mapping-files/"
    old_named, stale = f"dw container job_{JOINED}.json", "dw container job_dropped_table_99.json"
    put_mapping(bucket, QUERY, {"title": "job_title", "not_a_column": "ignored"})
    s3.put_object(Bucket=bucket, Key=f"mapping-files/{old_named}", Body=b'{"title": "container_title"}')
    s3.put_object(Bucket=bucket, Key=f"mapping-files/{stale}", Body=b'{"teamname": "team"}')
    first = jobs.run(DAYS[0])
    day1 = jobs.snapshot_table(QUERY, QUERY, DAYS[0])
    assert "job_title" in day1.columns and "title" not in day1.columns and "ignored" not in day1.columns
    assert "container_title" in jobs.snapshot_table(QUERY, JOINED, DAYS[0]).columns
    metadata = snapshot_metadata(first)
    applied = {QUERY: f"{location}{QUERY}_{QUERY}.json", JOINED: f"{location}{old_named}"}
    assert applied.items() <= metadata["mappings"].items()
    others = {table: note for table, note in metadata["mappings"].items() if table not in applied}
    assert others == {
        table: f"none (looked for {QUERY}_{table}.json, dw container job_{table}.json)" for table in others
    }
    assert metadata["stale_mapping_files"] == [stale] and metadata["mapping_location"] == location
    logs = [record.user_message for record in jobs.instance.all_logs(first.run_id)]
    assert any(f"table {JOINED}, mapping {location}{old_named}" in message for message in logs)
    assert any(message.endswith(f"so they rename nothing: {stale}") for message in logs)

    edited = jobs.simulator.dataset.edit(JOBS, 3)
    put_mapping(bucket, QUERY, {"title": "job_name", "notes": "job_notes"})
    s3.delete_object(Bucket=bucket, Key=f"mapping-files/{old_named}")
    second = jobs.run(DAYS[1])
    looked_for = f"none (looked for {QUERY}_{JOINED}.json, {old_named})"
    assert snapshot_metadata(second)["mappings"][JOINED] == looked_for
    assert "title" in jobs.snapshot_table(QUERY, JOINED, DAYS[1]).columns
    assert any(looked_for in record.user_message for record in jobs.instance.all_logs(second.run_id))
    day2 = jobs.snapshot_table(QUERY, QUERY, DAYS[1])
    assert {"job_name", "job_notes"} <= set(day2.columns)
    assert not {"title", "job_title", "notes"} & set(day2.columns)
    assert day2.count() == jobs.simulator.dataset.count(JOBS)
    assert day2.where("job_name is null").count() == 0, "carried-forward rows were renamed, not unioned apart"
    titles = {row.item_id: row.job_name for row in day2.collect()}
    for item_id in edited:
        assert titles[item_id] == jobs.simulator.dataset.value(item_id, "attributes_itemsTitle")
    assert jobs.snapshot_manifest(QUERY, DAYS[1]).tables[QUERY].renames == {"title": "job_name", "notes": "job_notes"}


def test_a_bad_mapping_file_fails_with_its_name_and_writes_nothing(jobs: Pipeline, bucket: str) -> None:
    """Every way a mapping file can be bad is refused before anything is written (test_mapping has them all)."""
    body, problem = {"title": "status"}, "two columns"
    jobs.run(DAYS[0])
    kept = jobs.snapshot_manifest(QUERY, DAYS[0])
    put_mapping(bucket, QUERY, body)

    for day in DAYS[:2]:
        result = jobs.run(day, raise_on_error=False)
        assert not result.success
        message = failure_text(result, "snapshot")
        assert f"s3://{bucket}/mapping-files/{QUERY}_{QUERY}.json" in message and problem in message
    assert jobs.snapshot_manifest(QUERY, DAYS[0]) == kept
    assert jobs.snapshot_manifest(QUERY, DAYS[1]) is None
    assert not list((jobs.root / "refined-zone").rglob("snapshot_date=20240302"))
    assert jobs.snapshot_table(QUERY, QUERY, DAYS[0]).count() == kept.tables[QUERY].rows
