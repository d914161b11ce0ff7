"""Re-running an old day: every later snapshot is flagged, then rebuilt once, in order, by the cascade sensor."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from alloy_pipeline.cascade import CASCADE_TAG, CAUSE_TAG, build_cascade_sensor
from alloy_pipeline.lake import REFINED, LakeResource
from alloy_pipeline.naming import snapshot_key
from alloy_pipeline.partitions import DAYS_TAG, Day
from alloy_pipeline_tests.harness import Pipeline

QUERY = "dw_container_job"
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]
CHECK = "built_on_current_inputs"
START, END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture
def jobs(simulator, engine, spark, instance, tmp_path: Path) -> Pipeline:
    """Three days of one query, Alloy changing between them, then raw day 2 re-extracted with other data."""
    pipeline = Pipeline.create(simulator, engine.url, spark, instance, tmp_path, ["DW Container Job"]).keep_joins(
        "DW Container Job", "root.attributes_jobAssignedContainer."
    )
    for number, day in enumerate(DAYS):
        if number:
            pipeline.simulator.dataset.simulate_day(seed=number)
        pipeline.run(day, group="alloy_raw")
    pipeline.rebuild(DAYS[0], DAYS[-1])
    pipeline.simulator.dataset.simulate_day(seed=99)
    pipeline.run(DAYS[1], group="alloy_raw")
    return pipeline


def evaluate(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture, *, enabled: bool = True, cursor: str | None = None
) -> dg.SensorResult:
    """One tick of the sensor, as the daemon would run it, its log captured by `caplog`."""
    context = dg.build_sensor_context(instance=jobs.instance, resources={"lake": jobs.lake}, cursor=cursor)
    context.log.addHandler(caplog.handler)
    result = build_cascade_sensor([QUERY], enabled=enabled)(context)
    assert isinstance(result, dg.SensorResult)
    return result


def tick_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines the ticks since the last call logged about the query (the tick's log in the UI)."""
    lines = [record.getMessage() for record in caplog.records if f"{QUERY}: " in record.getMessage()]
    caplog.clear()
    return lines


def flags(result: dg.SensorResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {event.partition: event for event in result.asset_events if isinstance(event, dg.AssetCheckEvaluation)}


def check_status(jobs: Pipeline) -> dict[str, str]:
    """The lineage check's status per day, as its Partitions tab shows it."""
    return jobs.check_status_by_day(snapshot_key(QUERY), CHECK)


def test_a_rerun_raw_day_flags_every_later_snapshot_and_one_ordered_rebuild_fixes_them(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    switched_off = evaluate(jobs, caplog, enabled=False)
    assert sorted(flags(switched_off)) == DAYS[1:], "flagged with the cascade switched off too"
    assert not switched_off.run_requests, "and nothing launched"
    [line] = tick_log(caplog)
    assert line.startswith(f"{QUERY}: 3 days (2024-03-01..2024-03-03) checked, 2 days (2024-03-02..2024-03-03) out")
    assert "(2 newly flagged); first 2024-03-02: raw partition 2024-03-02" in line
    assert line.endswith("Flagged only: rebuilds are switched off (ALLOY_CASCADE=off)")
    again = evaluate(jobs, caplog, enabled=False, cursor=switched_off.cursor)
    assert not flags(again) and not again.run_requests, "nothing new to report on the next tick"
    assert tick_log(caplog) == [f"{QUERY}: nothing materialised since its last check"]

    job = dg.Definitions(assets=jobs.assets(), resources=jobs.resources()).resolve_implicit_global_asset_job_def()
    running = jobs.instance.create_run_for_job(job, tags={CASCADE_TAG: QUERY}, status=dg.DagsterRunStatus.STARTED)
    while_running = evaluate(jobs, caplog)
    assert flags(while_running) and not while_running.run_requests, "no second cascade while one runs"
    [line] = tick_log(caplog)
    assert line.endswith(f"A rebuild of {QUERY} is queued or running: none requested")
    jobs.instance.report_run_canceled(running)

    result = evaluate(jobs, caplog)
    flagged = flags(result)
    assert sorted(flagged) == DAYS[1:], "day 2 was built on the old raw day 2, the days after it on day 2"
    assert all(flag.check_name == CHECK and not flag.passed for flag in flagged.values())
    assert "raw partition 2024-03-02" in " ".join(flagged[DAYS[1]].metadata["changes"].value)
    assert "base snapshot 2024-03-02 is itself out of date" in flagged[DAYS[2]].metadata["changes"].value

    for flag in flagged.values():
        jobs.instance.report_runless_asset_event(flag)
    assert check_status(jobs) == {day: "SUCCEEDED" for day in DAYS[:1]} | {day: "FAILED" for day in DAYS[1:]}

    [request] = result.run_requests
    assert (request.tags[START], request.tags[END]) == (DAYS[1], DAYS[-1])
    assert request.tags[DAYS_TAG] == "2024-03-02..2024-03-03 (2 days)", "the runs list shows the range"
    [line] = tick_log(caplog)
    assert line.endswith(f"Requested the rebuild 2024-03-02..2024-03-03 (2 days) (run key {request.run_key})")
    assert request.tags[CASCADE_TAG] == QUERY and "raw partition 2024-03-02" in request.tags[CAUSE_TAG]
    assert request.asset_selection == [snapshot_key(QUERY)]

    cascade = dg.materialize(
        jobs.assets(),
        selection=request.asset_selection,
        tags=request.tags,
        resources=jobs.resources(),
        instance=jobs.instance,
    )
    rebuilt = [event.partition for event in cascade.get_asset_materialization_events()]
    assert rebuilt == DAYS[1:], "each later day once, in date order"
    evaluations = [e for e in cascade.get_asset_check_evaluations() if e.check_name == CHECK]
    assert len(evaluations) == len(DAYS[1:]) and all(evaluation.passed for evaluation in evaluations)

    assert set(check_status(jobs).values()) == {"SUCCEEDED"}

    caplog.clear()
    after = evaluate(jobs, caplog, cursor=result.cursor)
    assert not after.run_requests and not flags(after), "nothing is out of date any more"
    assert tick_log(caplog) == [f"{QUERY}: 3 days (2024-03-01..2024-03-03) checked, none out of date"]
    rebuilt_on = jobs.snapshot_manifest(QUERY, DAYS[1]).inputs.raws
    assert [(raw.day.isoformat(), raw.version) for raw in rebuilt_on] == [
        (DAYS[1], jobs.raw_manifest(QUERY, DAYS[1]).version)
    ], "day 2 is built on the re-extracted raw day 2 (a ranged run equals day-by-day runs: test_ranged_rebuild)"


def test_a_damaged_manifest_is_reported_on_its_query_and_the_others_go_on(
    instance: dg.DagsterInstance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"))
    damaged = Day.from_key("2024-03-02")
    lake.refined.write_text(REFINED.manifest_path("graffiti_reports", damaged), '{"query": "graffiti_rep')
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake})
    context.log.addHandler(caplog.handler)
    result = build_cascade_sensor(["graffiti_reports", QUERY], enabled=True)(context)
    assert isinstance(result, dg.SensorResult)
    [flag] = result.asset_events
    assert isinstance(flag, dg.AssetCheckEvaluation)
    assert (flag.asset_key, flag.partition, flag.passed) == (snapshot_key("graffiti_reports"), damaged.key, False)
    assert "re-run partition 2024-03-02" in flag.metadata["error"].value
    seen = json.loads(result.cursor or "{}")["seen"]
    assert QUERY in seen and "graffiti_reports" not in seen, "the damaged query is looked at again next tick"
    logged = {record.getMessage(): record.levelname for record in caplog.records}
    assert logged[f"{QUERY}: no snapshot yet"] == "INFO"
    [(damage, level)] = [(line, level) for line, level in logged.items() if line.startswith("graffiti_reports: ")]
    assert level == "ERROR" and "checked again next tick" in damage and "2024-03-02" in damage
