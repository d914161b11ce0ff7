"""A backfill's ranged run of the snapshot assets: the partitions of day-by-day runs, committed a day at a time."""

import json
from pathlib import Path

import dagster as dg
import pytest

from alloy_pipeline.definitions import build_definitions
from alloy_pipeline.naming import snapshot_key
from alloy_pipeline_tests.harness import REPO, Pipeline, failure_text

QUERY = "dw_container_job"
JOINED = "waste_container_1"
KEY = snapshot_key(QUERY)
CHECKS = ("unique_item_id", "row_count_reconciles", "schema_drift", "built_on_current_inputs")
EXPORTED = ["2024-03-01", "2024-03-02", "2024-03-03"]
FULL_REFRESH = EXPORTED[2]
DAYS = [*EXPORTED, "2024-03-04"]
"""The last day has no export, so a range covers a snapshot carried forward as well as rebuilt from scratch."""

Evaluations = dict[tuple[str | None, str], tuple[bool, dict]]


@pytest.fixture
def jobs(pipeline: Pipeline) -> Pipeline:
    """One query and one join, with a mapping file: each query's days are built by a step of their own, and
    each table by the same code, so one shows it all."""
    pipeline.keep_only("DW Container Job").keep_joins("DW Container Job", "root.attributes_jobAssignedContainer.")
    mappings = Path(pipeline.mapping_location)
    mappings.mkdir()
    (mappings / f"{QUERY}_{JOINED}.json").write_text(json.dumps({"title": "container_title"}))
    return pipeline


def export_days(jobs: Pipeline) -> Evaluations:
    """The exported days as the schedules run them, Alloy changing in between; their snapshot checks."""
    evaluations: Evaluations = {}
    for number, day in enumerate(EXPORTED):
        if number:
            jobs.simulator.dataset.simulate_day(seed=number)
        evaluations |= evaluations_of(jobs.run(day, full_refresh=day == FULL_REFRESH))
    return evaluations


def committed_by(jobs: Pipeline, run_id: str) -> list[str]:
    return [manifest.day.isoformat() for manifest in jobs.lake.snapshot_manifests(QUERY) if manifest.run_id == run_id]


def materialized_by(jobs: Pipeline, run_id: str) -> list[str]:
    """The days Dagster recorded as materialized by `run_id`, repeats kept."""
    records = jobs.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=KEY), limit=100).records
    return sorted(record.partition_key for record in records if record.run_id == run_id)


def evaluations_of(result: dg.ExecuteInProcessResult) -> Evaluations:
    """Each check's outcome per day; the lineage check's metadata names versions, which differ per run."""
    return {
        (evaluation.partition, evaluation.check_name): (
            evaluation.passed,
            {} if evaluation.check_name == "built_on_current_inputs" else dict(evaluation.metadata),
        )
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.asset_key == KEY
    }


def check_statuses(jobs: Pipeline, run_id: str) -> dict[tuple[str | None, str], str]:
    """Each check's status per day in `run_id`, as the UI shows it (PLANNED: not evaluated)."""
    return {
        (record.partition, name): record.status.value
        for name in CHECKS
        for record in jobs.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(KEY, name), limit=100
        )
        if record.run_id == run_id
    }


def shown_by_day(jobs: Pipeline) -> dict[tuple[str, str], str]:
    """Every check's status per day as the UI's partition views show it."""
    return {(day, name): status for name in CHECKS for day, status in jobs.check_status_by_day(KEY, name).items()}


def as_statuses(evaluations: Evaluations) -> dict[tuple[str | None, str], str]:
    return {key: "SUCCEEDED" if passed else "FAILED" for key, (passed, _) in evaluations.items()}


def test_a_ranged_run_rebuilds_the_day_by_day_partitions_and_a_failure_keeps_every_day(jobs: Pipeline) -> None:
    by_day = export_days(jobs) | evaluations_of(jobs.run(DAYS[-1], group="alloy_snapshot"))
    assert shown_by_day(jobs) == as_statuses(by_day), "single-day runs: each day's checks shown on that day"
    before = jobs.stored_snapshots(QUERY)
    assert list(before) == DAYS
    assert len({len(tables[QUERY]) for _, tables in before.values()}) > 1, "the days differ"

    result = jobs.rebuild(DAYS[0], DAYS[-1])
    assert jobs.stored_snapshots(QUERY) == before
    assert committed_by(jobs, result.run_id) == DAYS
    assert materialized_by(jobs, result.run_id) == DAYS
    ranged = evaluations_of(result)
    assert set(ranged) == {(day, name) for day in DAYS for name in CHECKS}
    assert ranged == by_day
    assert check_statuses(jobs, result.run_id) == as_statuses(ranged)
    assert shown_by_day(jobs) == as_statuses(ranged), "the ranged run's evaluations are each day's status"

    # A failure on day k keeps the days before it and the versions of the days from k on.
    first = result.run_id
    failing = DAYS[2]
    raw = jobs.raw_manifest(QUERY, failing).tables[QUERY].path
    jobs.spark.read.parquet(raw).limit(1).write.mode("append").parquet(raw)

    result = jobs.rebuild(DAYS[0], DAYS[-1], raise_on_error=False)
    assert not result.success
    message = failure_text(result, "snapshot")
    assert f"query {QUERY}, partition {failing}: the run over {DAYS[0]}..{DAYS[-1]} stopped" in message
    assert f"the days up to {DAYS[1]} are committed" in message and "unique_item_id" in message

    assert committed_by(jobs, result.run_id) == DAYS[:2]
    assert committed_by(jobs, first) == DAYS[2:]
    assert jobs.stored_snapshots(QUERY) == before, "each day reads as before: rebuilt, or its previous version"
    assert materialized_by(jobs, result.run_id) == DAYS[:2]
    statuses = check_statuses(jobs, result.run_id)
    assert {key for key, status in statuses.items() if status == "SUCCEEDED"} == {
        (day, name) for day in DAYS[:2] for name in CHECKS
    }
    assert statuses[(failing, "unique_item_id")] == "FAILED"
    assert {statuses[(day, name)] for day in DAYS[2:] for name in CHECKS} == {"FAILED", "PLANNED"}
    assert shown_by_day(jobs) == {
        (day, name): "SUCCEEDED"
        if day in DAYS[:2]
        else "FAILED"
        if (day, name) == (failing, "unique_item_id")
        # Dagster's word for a check whose run ended before evaluating it; the days keep their versions.
        else "EXECUTION_FAILED"
        for day in DAYS
        for name in CHECKS
    }


@pytest.mark.parametrize(("setting", "days_per_run"), [(None, 31), ("7", 7)])
def test_a_backfill_run_covers_up_to_the_configured_days(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, days_per_run: int
) -> None:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    if setting is not None:
        monkeypatch.setenv("ALLOY_SNAPSHOT_DAYS_PER_RUN", setting)
    snapshot = build_definitions().resolve_assets_def(KEY)
    assert snapshot.backfill_policy == dg.BackfillPolicy.multi_run(days_per_run)


def test_a_run_of_no_days_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    monkeypatch.setenv("ALLOY_SNAPSHOT_DAYS_PER_RUN", "0")
    with pytest.raises(ValueError, match="ALLOY_SNAPSHOT_DAYS_PER_RUN"):
        build_definitions()
