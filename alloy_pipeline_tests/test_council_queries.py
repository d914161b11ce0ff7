"""A council's own query end to end: real AQS (forward, reverse, chained and reverse-then-forward
joins, Code headers, a list-valued filter, sortInfo), a design the simulator has never seen, and
the old jobs' mapping files under their own names, moving `item_id` off the key as most of them do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from alloy_pipeline.alloy.simulator import AlloySimulator, dataset_for_queries
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.naming import snapshot_key
from alloy_pipeline_tests.harness import API_KEY, Pipeline, rows_of

STEM = "Street Enforcement & Litter Inspection"
QUERY = "street_enforcement_litter_inspection"
DESIGN = "designs_streetEnforcementInspection_6a1f0b9e7d9e3001c5a7b210"
OUTCOME = "attributes_streetEnforcementInspectionOutcome_6a1f0c2b7d9e3001c5a7b351"
PREMISES = "root^attributes_tasksAssignableTasks<designs_nlpgPremises>"
REQUEST = {
    "aqs": {
        "type": "Join",
        "properties": {
            "dodiCode": DESIGN,
            "collectionCode": ["Live"],
            "attributes": [
                "attributes_itemsTitle",
                "attributes_itemsSubtitle",
                OUTCOME,
                "attributes_streetEnforcementInspectionNotes_6a1f0d417d9e3001c5a7b3c9",
                "attributes_tasksStatus",
                "attributes_tasksTeam",
                "attributes_tasksRaisedTime",
                "attributes_itemsGeometry",
            ],
            "joinAttributes": [
                "root.attributes_tasksStatus.attributes_taskStatusesStatus",
                "root.attributes_tasksTeam.attributes_teamsTeamName",
                f"{PREMISES}.attributes_nlpgPremisesUprn",
                f"{PREMISES}.attributes_itemsGeometry",
                f"{PREMISES}^attributes_assetGroupsAssets<designs_wasteGroups>.attributes_wasteGroupsStreet_6a1f0e8c7d9e3001c5a7b402",
                f"{PREMISES}.attributes_nlpgPremisesWard.attributes_wardName",
            ],
            "sortInfo": {"attributeCode": "attributes_tasksRaisedTime", "sortOrder": "Descending"},
        },
        "children": [
            {
                "type": "Equals",
                "children": [
                    {"type": "Attribute", "properties": {"attributeCode": OUTCOME}},
                    {"type": "String", "properties": {"value": ["Warning Issued", "Fixed Penalty", "No Action"]}},
                ],
            }
        ],
    },
    "parameterValues": [],
    "fileName": f"{STEM}.csv",
    "exportHeaderType": "Code",
    "discriminator": "CsvExportWebRequestModel",
}
DAYS = ("2024-05-01", "2024-05-02", "2024-05-03")
SNAPSHOT_COLUMNS = ("snapshot_year", "snapshot_month", "snapshot_day", "snapshot_date")


@pytest.fixture
def council(
    engine: EngineSettings,
    spark: SparkSession,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Pipeline]:
    with AlloySimulator(dataset=dataset_for_queries([REQUEST]), api_key=API_KEY) as simulator:
        monkeypatch.setenv("ALLOY_API_URL", simulator.url)
        pipeline = Pipeline(simulator, engine.url, spark, instance, tmp_path, str(tmp_path / "mapping-files"))
        pipeline.aqs_dir.mkdir()
        (pipeline.aqs_dir / f"{STEM}.json").write_text(json.dumps(REQUEST, indent=4))
        yield pipeline


def _old_name(table: str) -> str:
    """The name the old Glue jobs gave a table's mapping file: the AQS file's stem, lower-cased, as it is."""
    return f"{STEM.lower()}_{table}.json"


def _data(frame: DataFrame) -> list[tuple]:
    return rows_of(frame, SNAPSHOT_COLUMNS)


def _snapshot_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [materialization] = [
        event.materialization
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key == snapshot_key(QUERY)
    ]
    return {key: value.value for key, value in materialization.metadata.items()}


def test_a_council_query_with_old_mapping_files_over_a_full_an_incremental_and_a_full_refresh(
    council: Pipeline,
) -> None:
    premises = "nlpg_premises_3"
    mapping_files = Path(council.mapping_location)
    mapping_files.mkdir()
    (mapping_files / _old_name(QUERY)).write_text(
        json.dumps({"item_id": "inspection_id", "attributes_itemstitle": "title", "refined_date": "x"})
    )
    (mapping_files / _old_name(premises)).write_text(
        json.dumps({"item_id": "premises_id", "predecessor_item": "item_id", "import_date": "import_date"})
    )
    first = council.run(DAYS[0])
    raw = council.raw_manifest(QUERY, DAYS[0])
    assert raw is not None and raw.main_table == QUERY
    joined = sorted(set(raw.tables) - {QUERY}, key=lambda table: int(table.rsplit("_", 1)[1]))
    assert [table.rsplit("_", 1)[1] for table in joined] == ["1", "2", "3", "4", "5"], "one file per join node"
    assert premises in joined, "a reverse join's table is named after the design it names"
    main_columns = raw.tables[QUERY].columns
    status = next(column for column in main_columns if column.startswith("root_attributes_tasksstatus_designs_"))
    assert status.endswith("_attributes_taskstatusesstatus")
    assert "root_attributes_tasksassignabletasks_designs_nlpgpremises_attributes_nlpgpremisesuprn" in main_columns
    assert "root_attributes_tasksassignabletasks_designs_nlpgpremises_item_ids" in main_columns
    assert any(
        column.startswith("root_attributes_tasksassignabletasks_attributes_assetgroupsassets_designs_wastegroups_")
        for column in main_columns
    ), "a chained reverse join is headed by its links and its last design"
    assert set(raw.tables[premises].columns) >= {
        "item_id",
        "aqs_path",
        "predecessor_file",
        "predecessor_item",
        "predecessor_attributes_itemstitle",
        "predecessor_attributes_itemssubtitle",
        "primary_item",
    }

    applied = _snapshot_metadata(first)["mappings"]
    assert applied[QUERY].endswith(_old_name(QUERY)) and applied[premises].endswith(_old_name(premises))

    def snapshot(table: str, day: str) -> DataFrame:
        return council.snapshot_table(QUERY, table, day)

    main = snapshot(QUERY, DAYS[0])
    assert {"inspection_id", "title"} <= set(main.columns) and "item_id" not in main.columns
    premises_day_one = snapshot(premises, DAYS[0])
    assert {"premises_id", "item_id"} <= set(premises_day_one.columns)
    assert premises_day_one.where(F.col("item_id") != F.col("primary_item")).count() == 0, (
        "predecessor_item renamed to item_id: a first-level join hangs from the root item"
    )

    day_one_ids = {row.inspection_id for row in main.select("inspection_id").collect()}
    changes = council.simulator.dataset.simulate_day(seed=21)
    assert changes.edited
    deleted = set(council.simulator.dataset.delete(DESIGN, sorted(day_one_ids - set(changes.deleted))[:3]))
    second = council.run(DAYS[1])
    increment = council.raw_manifest(QUERY, DAYS[1])
    assert increment is not None and increment.kind == "incremental"
    changed = {row.item_id for row in council.raw_table(QUERY, QUERY, DAYS[1]).select("item_id").collect()}
    assert changed, "the day's edits reached the incremental extract"
    raw_premises = council.raw_table(QUERY, premises, DAYS[1]).withColumnsRenamed(
        {"item_id": "premises_id", "predecessor_item": "item_id"}
    )
    kept = premises_day_one.drop(*SNAPSHOT_COLUMNS).where(~F.col("primary_item").isin(*changed))
    expected = _data(kept.unionByName(raw_premises.select(*kept.columns)))
    assert _data(snapshot(premises, DAYS[1])) == expected, "a changed root item's joined rows are replaced"
    main_two = snapshot(QUERY, DAYS[1])
    day_two_ids = {row.inspection_id for row in main_two.select("inspection_id").collect()}
    assert day_two_ids == day_one_ids | changed
    assert deleted <= day_two_ids, "an incremental export cannot see deletions"

    council.simulator.dataset.simulate_day(seed=22)
    third = council.run(DAYS[2], full_refresh=True)
    refreshed = council.raw_manifest(QUERY, DAYS[2])
    assert refreshed is not None and refreshed.kind == "full"
    live = {row.item_id for row in council.raw_table(QUERY, QUERY, DAYS[2]).select("item_id").collect()}
    day_three_ids = {row.inspection_id for row in snapshot(QUERY, DAYS[2]).select("inspection_id").collect()}
    assert day_three_ids == live and not deleted & live, "a full refresh drops the items deleted upstream"
    assert _snapshot_metadata(third)["removed"] == len(day_two_ids - live) >= len(deleted)

    for result in (first, second, third):
        failed = [check for check in result.get_asset_check_evaluations() if not check.passed]
        assert not failed, f"checks failed: {[(check.check_name, check.metadata) for check in failed]}"

    by_day = council.stored_snapshots(QUERY)
    council.rebuild(DAYS[0], DAYS[-1])
    assert council.stored_snapshots(QUERY) == by_day, "a rebuild gives the day-by-day result"
