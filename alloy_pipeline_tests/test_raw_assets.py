"""Raw-extract assets end to end: simulator over HTTP, real Spark, a lake in a temporary folder."""

import csv
import datetime as dt
import json
import re
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alloy_pipeline.alloy.client import Export
from alloy_pipeline.alloy.simulator import AlloySimulator, Fault, demo_dataset
from alloy_pipeline.assets.raw import (
    ROW_COUNT_CHECK,
    UNIQUE_ITEM_ID_CHECK,
    convert_tables,
    import_stamp,
    row_count_check,
    unique_item_id_check,
)
from alloy_pipeline.lake import LakeResource, TableOutput
from alloy_pipeline.naming import raw_key
from alloy_pipeline.partitions import Day
from alloy_pipeline.schedules import build_schedules
from alloy_pipeline_tests.harness import API_KEY, PARTITIONS, RUN_TIME_COLUMNS, Pipeline, failure_text, rows_of

GRAFFITI = "designs_graffitiReport"
STATUS = "attributes_graffitiStatus"
RAW_CHECKS = (ROW_COUNT_CHECK, UNIQUE_ITEM_ID_CHECK)


def exports_sent(simulator: AlloySimulator) -> list[dict]:
    return [seen.body for seen in simulator.requests if seen.method == "POST" and seen.path == "/api/export"]


def open_graffiti(simulator: AlloySimulator) -> set[str]:
    dataset = simulator.dataset
    return {item.id for item in dataset.items(GRAFFITI) if dataset.value(item.id, STATUS) in ("Open", "In Progress")}


def test_full_then_incremental_keeping_the_query_filter(pipeline: Pipeline) -> None:
    simulator = pipeline.simulator
    first = pipeline.run("2024-03-01", group="alloy_raw")
    day1 = pipeline.raw_manifest("graffiti_reports", "2024-03-01")
    assert day1 is not None and day1.kind == "full" and day1.watermark is None
    main = pipeline.raw_table("graffiti_reports", "graffiti_reports", "2024-03-01")
    assert {row.item_id for row in main.select("item_id").collect()} == open_graffiti(simulator)
    [full_body] = [body for body in exports_sent(simulator) if body["fileName"] == "Graffiti Reports.csv"]
    assert full_body["aqs"]["children"][0]["type"] == "Equals"

    edited = sorted(open_graffiti(simulator))[:2]
    for item_id in edited:
        simulator.dataset.set_value(item_id, "attributes_graffitiDescription", "Repainted, then tagged again")
    pipeline.run("2024-03-02", group="alloy_raw")

    day2 = pipeline.raw_manifest("graffiti_reports", "2024-03-02")
    assert day2 is not None and day2.kind == "incremental"
    assert day2.watermark == day1.requested_at - dt.timedelta(hours=1)
    incremental_body = [body for body in exports_sent(simulator) if body["fileName"] == "Graffiti Reports.csv"][-1]
    [combined] = incremental_body["aqs"]["children"]
    assert combined["type"] == "And"
    assert combined["children"][0] == full_body["aqs"]["children"][0], "the query's own filter is kept"
    assert combined["children"][1]["type"] == "GreaterThan"
    [sent] = combined["children"][1]["children"][1]["properties"]["value"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", sent), "the one form Alloy's DateTime takes"
    sent_at = dt.datetime.strptime(sent, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert dt.timedelta(0) <= day2.watermark - sent_at < dt.timedelta(milliseconds=1), "the watermark, to the ms"
    changed = pipeline.raw_table("graffiti_reports", "graffiti_reports", "2024-03-02")
    assert sorted(row.item_id for row in changed.select("item_id").collect()) == edited
    assert {row.import_date for row in changed.select("import_date").collect()} == {"20240302"}
    assert set(changed.columns) >= {"import_year", "import_month", "import_day", "import_datetime", "import_timestamp"}

    materialization = first.asset_materializations_for_node(raw_key("graffiti_reports").to_python_identifier())[0]
    assert materialization.metadata["dagster/row_count"].value == day1.tables["graffiti_reports"].rows
    counted = next(
        evaluation
        for evaluation in first.get_asset_check_evaluations()
        if evaluation.asset_key == raw_key("graffiti_reports") and evaluation.check_name == ROW_COUNT_CHECK
    )
    assert counted.passed and counted.partition == "2024-03-01"
    assert counted.metadata["rows"].value == counted.metadata["alloy_processed"].value == len(open_graffiti(simulator))
    for query in ("dw_container_job", "graffiti_reports", "gully_inspections"):
        for check in RAW_CHECKS:
            assert pipeline.check_status_by_day(raw_key(query), check) == {
                "2024-03-01": "SUCCEEDED",
                "2024-03-02": "SUCCEEDED",
            }, (query, check)
    assert materialization.metadata["extract_kind"].value == "full"
    assert materialization.metadata["task_id"].value == day1.task_id
    for body in exports_sent(simulator):
        assert API_KEY not in str(body)


def test_csv_landed_as_received_and_parquet_matches_it(engine, spark, instance, tmp_path: Path, monkeypatch) -> None:
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, bom=True) as simulator:
        monkeypatch.setenv("ALLOY_API_URL", simulator.url)
        pipeline = Pipeline.create(
            simulator, engine.url, spark, instance, tmp_path, ["Gully Inspections", "DW Container Job"]
        )
        pipeline.run("2024-03-01", group="alloy_raw")
    landing = tmp_path / "raw-zone/env-services/alloy/alloy_api_downloads/dw_container_job"
    day = landing / "import_year=2024/import_month=03/import_day=01/import_date=20240301"
    version = pipeline.raw_manifest("dw_container_job", "2024-03-01").version
    assert [path.name for path in day.iterdir()] == [version], "one version of the day, the committed one"
    landed = day / version
    assert sorted(path.name for path in landed.iterdir()) == [
        "DW Container Job.csv",
        "JoinedDesign_Collection Round_3.csv",
        "JoinedDesign_Premises_2.csv",
        "JoinedDesign_Waste Container_1.csv",
    ]
    assert (landed / "DW Container Job.csv").read_bytes().startswith(b"\xef\xbb\xbf"), "kept as received"
    with (landed / "DW Container Job.csv").open(newline="", encoding="utf-8-sig") as handle:
        header, *records = list(csv.reader(handle))
    expected = sorted(tuple("<null>" if cell == "" else cell for cell in record) for record in records)
    frame = pipeline.raw_table("dw_container_job", "dw_container_job", "2024-03-01")
    assert frame.columns[:2] == ["item_id", "title"]
    assert rows_of(frame.select(*frame.columns[: len(header)])) == expected
    cells = [cell for record in records for cell in record]
    for special in ("\n", '"', ","):
        assert any(special in cell for cell in cells), f"the demo data has cells with {special!r}"

    gully = pipeline.raw_table("gully_inspections", "gully_inspections", "2024-03-01")
    assert gully.columns[:9] == [
        "item_id",
        "title",
        "inspection_date",
        "street",
        "condition",
        "depth_mm",
        "cleansed",
        "notes7",
        "notes8",
    ]
    assert dict(gully.dtypes)["import_datetime"] == "timestamp"
    assert all(dtype == "string" for name, dtype in gully.dtypes if name != "import_datetime")


def test_rematerialising_a_day_replaces_it_with_identical_data(pipeline: Pipeline) -> None:
    pipeline.keep_only("DW Container Job")
    pipeline.run("2024-03-01", group="alloy_raw")
    before = rows_of(pipeline.raw_table("dw_container_job", "waste_container_1", "2024-03-01"), RUN_TIME_COLUMNS)
    first_task = pipeline.raw_manifest("dw_container_job", "2024-03-01").task_id
    pipeline.run("2024-03-01", group="alloy_raw")
    again = pipeline.raw_manifest("dw_container_job", "2024-03-01")
    assert again.task_id != first_task and again.kind == "full"
    assert (
        rows_of(pipeline.raw_table("dw_container_job", "waste_container_1", "2024-03-01"), RUN_TIME_COLUMNS) == before
    )
    table_root = pipeline.root / "raw-zone/env-services/alloy/parquet_files/dw_container_job/waste_container_1"
    assert [path.relative_to(table_root).as_posix() for path in table_root.glob("*/*/*/*/*")] == [
        f"import_year=2024/import_month=03/import_day=01/import_date=20240301/{again.version}"
    ], "the replaced version is gone"
    for leftover in ("_staging", "_pending"):
        assert not list((pipeline.root / "raw-zone/env-services/alloy" / leftover).rglob("*.*"))

    by_path = pipeline.spark.read.option("basePath", str(table_root)).parquet(str(table_root))
    assert by_path.columns == pipeline.raw_table("dw_container_job", "waste_container_1", "2024-03-01").columns, (
        "a reader of the table root infers the Hive keys and nothing from the version folders"
    )
    assert rows_of(by_path, RUN_TIME_COLUMNS) == before


def test_failed_task_leaves_no_partition_and_keeps_the_previous_version(pipeline: Pipeline) -> None:
    pipeline.keep_only("Gully Inspections")
    pipeline.run("2024-03-01", group="alloy_raw")
    kept = pipeline.raw_manifest("gully_inspections", "2024-03-01")
    pipeline.simulator.inject(Fault(kind="failed_task", message="Query timed out in Alloy", times=10))

    result = pipeline.run("2024-03-02", group="alloy_raw", raise_on_error=False)
    assert not result.success
    failure = failure_text(result)
    assert "Query timed out in Alloy" in failure and "ended Failed" in failure
    assert pipeline.raw_manifest("gully_inspections", "2024-03-02") is None
    assert not list((pipeline.root / "raw-zone").rglob("import_date=20240302"))

    assert not pipeline.run("2024-03-01", group="alloy_raw", raise_on_error=False).success
    assert pipeline.raw_manifest("gully_inspections", "2024-03-01") == kept
    assert (
        pipeline.raw_table("gully_inspections", "gully_inspections", "2024-03-01").count()
        == kept.tables["gully_inspections"].rows
    )


def edited_after(body: dict) -> dt.datetime | None:
    """Where an export request's edited-since filter (lastEditDate GreaterThan) starts, read as Alloy
    reads it; None for a request of every item."""
    nodes = list(body["aqs"].get("children", ()))
    while nodes:
        node = nodes.pop()
        if node["type"] == "GreaterThan" and node["children"][0]["properties"]["itemPropertyName"] == "lastEditDate":
            [value] = node["children"][1]["properties"]["value"]
            return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
        nodes.extend(node.get("children", ()))
    return None


def test_the_weekly_job_exports_every_item_and_the_next_day_asks_from_it_less_the_overlap(pipeline: Pipeline) -> None:
    """Sunday's alloy_weekly_full_refresh, the job its schedule launches, asks for a full export though
    an incremental was due (its raw step only: its snapshot step is the daily job's); Monday's run,
    with overlap_minutes 15, for the edits since Sunday's request less 15 minutes."""
    pipeline.keep_only("Gully Inspections")
    query = "gully_inspections"
    pipeline.run("2024-03-01", group="alloy_raw")
    code_location = dg.Definitions.merge(
        dg.Definitions(assets=pipeline.assets(), resources=pipeline.resources()),
        build_schedules([query], PARTITIONS),
    )
    weekly = code_location.resolve_job_def("alloy_weekly_full_refresh")
    assert weekly.execute_in_process(
        partition_key="2024-03-02", instance=pipeline.instance, asset_selection=[raw_key(query)]
    ).success
    sunday = pipeline.raw_manifest(query, "2024-03-02")
    assert sunday is not None and sunday.kind == "full" and sunday.watermark is None
    assert sunday.tables[query].rows == pipeline.simulator.dataset.count("designs_gullyInspection")
    first, full = exports_sent(pipeline.simulator)
    assert edited_after(first) is None and full == first, "the query as written, without an edited-since filter"

    overlap = {"ops": {raw_key(query).to_python_identifier(): {"config": {"overlap_minutes": 15}}}}
    dg.materialize(
        pipeline.assets(),
        selection=dg.AssetSelection.groups("alloy_raw"),
        resources=pipeline.resources(),
        partition_key="2024-03-03",
        run_config=overlap,
        instance=pipeline.instance,
    )
    monday = pipeline.raw_manifest(query, "2024-03-03")
    assert monday is not None and monday.kind == "incremental"
    since = sunday.requested_at - dt.timedelta(minutes=15)
    sent = edited_after(exports_sent(pipeline.simulator)[-1])
    assert monday.watermark == since and sent is not None
    assert dt.timedelta(0) <= since - sent < dt.timedelta(milliseconds=1), "Alloy reads it to the millisecond"


def test_a_task_that_miscounts_its_items_fails_the_row_count_check_and_keeps_the_day(pipeline: Pipeline) -> None:
    """Alloy said it processed one root item more than its zip holds: the day fails
    row_count_matches_alloy, on its own partition, and stays committed as received (non-blocking)."""
    pipeline.keep_only("Gully Inspections")
    pipeline.simulator.inject(Fault("miscounted_task", miscount=1))
    result = pipeline.run("2024-03-01", group="alloy_raw")

    manifest = pipeline.raw_manifest("gully_inspections", "2024-03-01")
    assert result.success and manifest is not None
    rows = manifest.tables["gully_inspections"].rows
    evaluations = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    miscounted = evaluations[ROW_COUNT_CHECK]
    assert not miscounted.passed and miscounted.severity == dg.AssetCheckSeverity.ERROR
    assert {name: value.value for name, value in miscounted.metadata.items()} == {
        "rows": rows,
        "alloy_processed": rows + 1,
        "alloy_total": rows + 1,
    }
    unique = evaluations[UNIQUE_ITEM_ID_CHECK]
    assert unique.passed and unique.metadata["rows"].value == rows and unique.metadata["duplicated_item_ids"].value == 0
    assert pipeline.check_status_by_day(raw_key("gully_inspections"), ROW_COUNT_CHECK) == {"2024-03-01": "FAILED"}
    assert pipeline.check_status_by_day(raw_key("gully_inspections"), UNIQUE_ITEM_ID_CHECK) == {
        "2024-03-01": "SUCCEEDED"
    }
    latest = pipeline.instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(raw_key("gully_inspections"), ROW_COUNT_CHECK)
    )
    assert latest is not None and (latest.partition, latest.status.value, latest.run_id) == (
        "2024-03-01",
        "FAILED",
        result.run_id,
    )


def test_a_task_without_a_count_passes_the_row_count_check_saying_so() -> None:
    """Alloy's processState may be missing: nothing to compare is not a wrong extract."""
    export = Export("5f0c", dt.datetime(2024, 3, 1, tzinfo=dt.UTC), (), 1, 0.0, 0.0, processed=None, total=None)
    result = row_count_check(12, export)
    assert result.passed and "no processed count for task 5f0c" in (result.description or "")
    assert result.metadata["alloy_processed"] == dg.MetadataValue.null()
    assert not row_count_check(12, Export("5f0c", export.requested_at, (), 1, 0.0, 0.0, processed=11)).passed


def test_repeated_and_missing_item_ids_fail_the_unique_check_naming_a_few(spark, tmp_path: Path) -> None:
    """More repeats than it names: the check counts them all, and the rows without an id."""
    ids = [f"{index:02d}" for index in range(8)]
    (tmp_path / "main").mkdir()
    pq.write_table(pa.table({"item_id": ["solo", *ids, *ids, None]}), tmp_path / "main" / "part-0.parquet")
    main = TableOutput(path=str(tmp_path / "main"), rows=18, column_types=(("item_id", "string"),))
    result = unique_item_id_check(spark, main)
    assert not result.passed
    assert {name: value.value for name, value in result.metadata.items()} == {
        "rows": 18,
        "duplicated_item_ids": 8,
        "examples": ids[:5],
        "rows_without_item_id": 1,
    }


def test_api_key_from_secrets_manager(pipeline: Pipeline, aws: str) -> None:
    """The secret is named per test: moto's server, and so its secrets, last the whole session."""
    pipeline.keep_only("Graffiti Reports")
    secret_id = f"alloy/api-key-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager").create_secret(Name=secret_id, SecretString=API_KEY)
    pipeline.api_key_secret_id = secret_id
    assert pipeline.run("2024-03-01", group="alloy_raw").success
    assert all(seen.headers["authorization"] == f"Bearer {API_KEY}" for seen in pipeline.simulator.requests)
    for written in pipeline.root.rglob("*"):
        if written.is_file():
            assert API_KEY.encode() not in written.read_bytes(), f"the key leaked into {written}"


@pytest.mark.parametrize("row", ["1,first,extra", "1"])
def test_a_row_wider_or_narrower_than_its_header_fails_naming_the_file(spark, tmp_path: Path, row: str) -> None:
    export = tmp_path / "Odd Export.csv"
    export.write_text(f"Item ID,Title\n2,second\n{row}\n")
    lake = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"))
    day = Day.from_key("2024-03-01")
    with pytest.raises(RuntimeError, match="query odd, partition 2024-03-01: converting Odd Export.csv failed"):
        convert_tables(
            spark,
            lake,
            query="odd",
            day=day,
            version="v1",
            tables={"odd_export": export},
            stamp=import_stamp(day, dt.datetime(2024, 3, 1, 6, tzinfo=dt.UTC)),
            staging="staging",
        )


def test_rerunning_an_old_day_asks_only_for_edits_up_to_its_own_extract(pipeline: Pipeline) -> None:
    """A re-run of day 2 once day 3 exists must not bring day-3 (or later) values into day 2."""
    pipeline.keep_only("Gully Inspections")
    dataset, query, design = pipeline.simulator.dataset, "gully_inspections", "designs_gullyInspection"
    again, kept, on_day_three, today = dataset.ids(design)[:4]

    def extracted(day: str) -> set[str]:
        return {row.item_id for row in pipeline.raw_table(query, query, day).select("item_id").collect()}

    pipeline.run("2024-03-01", group="alloy_raw")
    dataset.edit(design, [again, kept])
    pipeline.run("2024-03-02", group="alloy_raw")
    original = pipeline.raw_manifest(query, "2024-03-02")
    assert original is not None and original.extracted_until is None and extracted("2024-03-02") == {again, kept}
    dataset.edit(design, [on_day_three])
    pipeline.run("2024-03-03", group="alloy_raw")
    dataset.edit(design, [again, today])

    for _ in range(2):
        pipeline.run("2024-03-02", group="alloy_raw")
        rerun = pipeline.raw_manifest(query, "2024-03-02")
        assert rerun is not None and rerun.extracted_until == original.requested_at
        assert rerun.watermark == original.watermark
        assert extracted("2024-03-02") == {kept}, "items edited after day 2's extract wait for the days that hold them"
    [bound] = [
        node
        for node in exports_sent(pipeline.simulator)[-1]["aqs"]["children"][0]["children"]
        if node["type"] == "LessThan"
    ]
    [value] = bound["children"][1]["properties"]["value"]
    assert dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z") > original.requested_at
    assert dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z") - original.requested_at <= dt.timedelta(milliseconds=1)

    pipeline.run("2024-03-03", group="alloy_raw")
    latest = pipeline.raw_manifest(query, "2024-03-03")
    assert latest is not None and latest.extracted_until is None, "the latest day asks for everything up to now"
    assert extracted("2024-03-03") == {kept, on_day_three, again, today}, "from day 2's bound, less the overlap"


def test_a_csv_whose_name_holds_glob_characters_is_converted(pipeline: Pipeline) -> None:
    """Spark globs the paths it reads: `[2024]` would match one character of `2024`, and no file."""
    pipeline.keep_only("Gully Inspections")
    aqs_file = pipeline.aqs_dir / "Gully Inspections.json"
    request = json.loads(aqs_file.read_text())
    request["fileName"] = "Gully Inspections [2024] {north}.csv"
    aqs_file.write_text(json.dumps(request))
    pipeline.run("2024-03-01", group="alloy_raw")
    manifest = pipeline.raw_manifest("gully_inspections", "2024-03-01")
    assert manifest is not None
    [(table, entry)] = manifest.tables.items()
    assert entry.source_file == "Gully Inspections [2024] {north}.csv"
    assert entry.rows == pipeline.simulator.dataset.count("designs_gullyInspection") > 0
    assert pipeline.raw_table("gully_inspections", table, "2024-03-01").count() == entry.rows
