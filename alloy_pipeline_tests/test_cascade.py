"""Re-running an old day: every later snapshot is flagged, then rebuilt once, in order, by the cascade sensor."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.cascade import CASCADE_TAG, CAUSE_TAG, SENSOR_NAME, build_cascade_sensor
from alloy_pipeline.check_targets import latest_materialization
from alloy_pipeline.definitions import build_definitions
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.lake import RAW, REFINED, LakeResource, Layer, RawManifest, SnapshotManifest
from alloy_pipeline.lineage import Lineage, PartitionVersion
from alloy_pipeline.naming import raw_key, snapshot_key
from alloy_pipeline.partitions import DAYS_TAG, Day
from alloy_pipeline.snapshot_plan import out_of_date, plan_snapshot
from alloy_pipeline.zone import Zone
from alloy_pipeline_tests.harness import API_KEY, Pipeline, failure_text

QUERY = "dw_container_job"
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]
NEXT_NIGHT = "2024-03-04"
CHECK = "built_on_current_inputs"
START, END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture(scope="module")
def jobs(engine: EngineSettings, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Three days of one query, Alloy changing between them, then raw day 2 re-extracted with other data.

    Built once for the module, whose tests continue one history in file order: the first needs it as
    built, and each later one starts from whatever the tests before it left out of date (something
    always is), so it passes alone too.
    """
    with (
        AlloySimulator(dataset=demo_dataset(), api_key=API_KEY) as simulator,
        dg.instance_for_test() as instance,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("ALLOY_API_URL", simulator.url)
        pipeline = Pipeline.create(
            simulator, engine.url, spark, instance, tmp_path_factory.mktemp("cascade"), ["DW Container Job"]
        ).keep_joins("DW Container Job", "root.attributes_jobAssignedContainer.")
        for number, day in enumerate(DAYS):
            if number:
                pipeline.simulator.dataset.simulate_day(seed=number)
            pipeline.run(day, group="alloy_raw")
        pipeline.rebuild(DAYS[0], DAYS[-1])
        pipeline.simulator.dataset.simulate_day(seed=99)
        pipeline.run(DAYS[1], group="alloy_raw")
        yield pipeline


def evaluate(
    jobs: Pipeline,
    caplog: pytest.LogCaptureFixture,
    *,
    enabled: bool = True,
    cursor: str | None = None,
    lake: LakeResource | None = None,
) -> dg.SensorResult:
    """One tick of the sensor, as the daemon would run it, its log captured by `caplog`."""
    resources = {"lake": lake or jobs.lake}
    context = dg.build_sensor_context(instance=jobs.instance, resources=resources, cursor=cursor)
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

    cascade = jobs.launch(request)
    rebuilt = [event.partition for event in cascade.get_asset_materialization_events()]
    assert rebuilt == DAYS[1:], "each later day once, in date order"
    evaluations = [e for e in cascade.get_asset_check_evaluations() if e.check_name == CHECK]
    assert len(evaluations) == len(DAYS[1:]) and all(evaluation.passed for evaluation in evaluations)

    assert set(check_status(jobs).values()) == {"SUCCEEDED"}

    caplog.clear()
    after = evaluate(jobs, caplog, cursor=result.cursor)
    assert not after.run_requests and not flags(after), "nothing is out of date any more"
    assert tick_log(caplog) == [
        f"{QUERY}: 2 days (2024-03-02..2024-03-03) checked "
        "(nothing before 2024-03-02 materialised since the last check), none out of date"
    ]
    rebuilt_on = jobs.snapshot_manifest(QUERY, DAYS[1]).inputs.raws
    assert [(raw.day.isoformat(), raw.version) for raw in rebuilt_on] == [
        (DAYS[1], jobs.raw_manifest(QUERY, DAYS[1]).version)
    ], "day 2 is built on the re-extracted raw day 2 (a ranged run equals day-by-day runs: test_ranged_rebuild)"


def main_table_mapping(jobs: Pipeline) -> Path:
    """The mapping file of the query's main table, in the pipeline's mapping folder."""
    folder = Path(jobs.mapping_location)
    folder.mkdir(exist_ok=True)
    return folder / f"{QUERY}_{QUERY}.json"


def test_a_snapshot_day_rerun_after_a_mapping_fix_flags_the_later_days_and_requests_their_rebuild(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    before = evaluate(jobs, caplog)
    main_table_mapping(jobs).write_text(json.dumps({"title": "job_title"}))
    replaced = jobs.snapshot_manifest(QUERY, DAYS[1])
    jobs.run(DAYS[1], group="alloy_snapshot")
    rerun = jobs.snapshot_manifest(QUERY, DAYS[1])
    assert replaced and rerun and rerun.tables[rerun.main_table].renames == {"title": "job_title"}, "the fix is applied"
    caplog.clear()

    result = evaluate(jobs, caplog, cursor=before.cursor)
    cause = f"base snapshot {DAYS[1]} ({replaced.version}) is now {DAYS[1]} ({rerun.version})"
    assert {day: flag.metadata["changes"].value for day, flag in flags(result).items()} == {DAYS[2]: [cause]}
    [request] = result.run_requests
    assert (
        request.tags[DAYS_TAG] == f"{DAYS[2]}..{DAYS[2]} (1 day)" and request.tags[CAUSE_TAG] == f"{DAYS[2]}: {cause}"
    )
    [line] = tick_log(caplog)
    assert line.endswith(f"Requested the rebuild {DAYS[2]}..{DAYS[2]} (1 day) (run key {request.run_key})")


def test_a_rebuild_that_failed_is_not_requested_again_until_its_cause_changes(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    first = evaluate(jobs, caplog)
    [request] = first.run_requests
    day = request.tags[START]
    mapping = main_table_mapping(jobs)
    fixed = mapping.read_text() if mapping.exists() else "{}"
    mapping.write_text('{"title": ')
    failed = jobs.launch(request, raise_on_error=False)
    assert not failed.success and f"partition {day}: the run over {day}.." in failure_text(failed)

    jobs.run(NEXT_NIGHT, group="alloy_raw")
    caplog.clear()
    again = evaluate(jobs, caplog, cursor=first.cursor)
    assert not again.run_requests and not flags(again), "the next night's extract changes nothing before the day"
    [line] = tick_log(caplog)
    assert line.endswith(
        f"The rebuild from {day} failed for this cause (run {failed.run_id}): none requested until the cause changes"
    )

    mapping.write_text(fixed)
    jobs.run(day, group="alloy_raw")
    retried = evaluate(jobs, caplog, cursor=again.cursor)
    [retry] = retried.run_requests
    assert retry.tags[START] == day and retry.run_key != request.run_key, "a re-extract of the day is a new cause"
    assert f"raw partition {day} (" in retry.tags[CAUSE_TAG] and "was replaced by" in retry.tags[CAUSE_TAG]


def test_alloy_cascade_is_read_from_the_environment_as_the_code_location_loads(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("ALLOY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ALLOY_AQS_DIR", str(jobs.aqs_dir))
    monkeypatch.setenv("ALLOY_RAW_ZONE", jobs.lake.raw_zone)
    monkeypatch.setenv("ALLOY_REFINED_ZONE", jobs.lake.refined_zone)

    def tick() -> dg.SensorResult:
        definitions = build_definitions()
        context = dg.build_sensor_context(instance=jobs.instance, resources={"lake": definitions.resources["lake"]})
        context.log.addHandler(caplog.handler)
        result = definitions.resolve_sensor_def(SENSOR_NAME)(context)
        assert isinstance(result, dg.SensorResult)
        return result

    assert tick().run_requests, "on unless set"
    caplog.clear()
    monkeypatch.setenv("ALLOY_CASCADE", "off")
    switched_off = tick()
    assert flags(switched_off) and not switched_off.run_requests
    [line] = tick_log(caplog)
    assert line.endswith("Flagged only: rebuilds are switched off (ALLOY_CASCADE=off)")
    monkeypatch.setenv("ALLOY_CASCADE", "sometimes")
    with pytest.raises(ValueError, match=r"^ALLOY_CASCADE must be on or off, not 'sometimes'$"):
        build_definitions()


def rerun(jobs: Pipeline, layer: Layer, day: str) -> None:
    """Day `day` of `layer` committed again, as far as the sensor can tell: a new version in its
    manifest (its tables where they were, so later runs still read them) and a materialization; a
    snapshot records the inputs it is built on now, as a re-run does."""
    partition, rerun_id = Day.from_key(day), uuid.uuid4().hex
    update: dict[str, object] = {"run_id": rerun_id, "version": f"v_rerun_{rerun_id[:12]}"}
    manifest = jobs.raw_manifest(QUERY, day) if layer is RAW else jobs.snapshot_manifest(QUERY, day)
    assert manifest is not None
    if layer is REFINED:
        snapshots, raws = jobs.lake.snapshot_manifests(QUERY), jobs.lake.raw_manifests(QUERY)
        update["inputs"] = plan_snapshot(QUERY, partition, snapshots, raws).lineage
    text = manifest.model_copy(update=update).model_dump_json()
    jobs.lake.zone(layer).write_text(layer.manifest_path(QUERY, partition), text)
    asset = raw_key(QUERY) if layer is RAW else snapshot_key(QUERY)
    jobs.instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=day))


def test_a_check_after_a_rerun_finds_what_checking_every_day_finds_and_requests_the_same_rebuild(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    def check(cursor: str | None) -> tuple[dg.SensorResult, dict[str, list[str]], list[str]]:
        """A tick after `cursor`, against a first tick's and `out_of_date` over every manifest."""
        result = evaluate(jobs, caplog, cursor=cursor)
        lines = tick_log(caplog)
        full = evaluate(jobs, caplog)
        caplog.clear()
        stale = {
            day.isoformat(): changes
            for day, changes in out_of_date(
                QUERY, jobs.lake.snapshot_manifests(QUERY), jobs.lake.raw_manifests(QUERY)
            ).items()
        }
        assert json.loads(result.cursor or "{}")["flagged"][QUERY] == stale, "the days out of date, as a full check"
        assert result.run_requests == full.run_requests, "and the same rebuild"
        for day, flag in flags(result).items():
            latest = latest_materialization(jobs.instance, snapshot_key(QUERY), day)
            assert latest and flag.target_materialization_data == latest, "each judges its day's latest"
        return result, stale, lines

    rerun(jobs, RAW, DAYS[1])
    first, _, _ = check(None)

    rerun(jobs, RAW, DAYS[2])
    later, stale, [line] = check(first.cursor)
    assert line.startswith(f"{QUERY}: 1 day ({DAYS[2]}..{DAYS[2]}) checked (nothing before {DAYS[2]} materialised")
    assert sorted(flags(later)) == [DAYS[2]], "only the day whose findings changed is flagged again"
    assert any(change.startswith(f"raw partition {DAYS[2]} (") for change in stale[DAYS[2]])
    assert stale[DAYS[2]][-1] == f"base snapshot {DAYS[1]} is itself out of date", "found through its base"
    [request] = later.run_requests
    assert request.tags[START] == DAYS[1], "the rebuild starts at the earliest day out of date, not at the change"

    rerun(jobs, REFINED, DAYS[2])
    rerun(jobs, RAW, DAYS[0])
    old, stale, _ = check(later.cursor)
    assert sorted(flags(old)) == DAYS, "the old day, and the later ones whose findings changed with it"
    assert stale[DAYS[2]] == [f"base snapshot {DAYS[1]} is itself out of date"], "day 3 re-run, on a stale base"
    [request] = old.run_requests
    assert (request.tags[START], request.tags[END]) == (DAYS[0], DAYS[-1])


@dataclass(frozen=True)
class ReadNotingZone(Zone):
    """A zone that notes each file it reads; in the class, as the sensor is handed a copy of its lake."""

    read: ClassVar[list[str]] = []

    def read_text(self, relative: str) -> str:
        self.read.append(relative)
        return super().read_text(relative)


class ReadNotingLake(LakeResource):
    """The lake, its zones noting what they read."""

    @cached_property
    def raw(self) -> Zone:
        return ReadNotingZone.parse(self.raw_zone)

    @cached_property
    def refined(self) -> Zone:
        return ReadNotingZone.parse(self.refined_zone)


def test_a_check_after_a_change_to_the_latest_day_reads_only_the_manifests_it_needs(
    jobs: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    lake = ReadNotingLake(raw_zone=jobs.lake.raw_zone, refined_zone=jobs.lake.refined_zone)
    ReadNotingZone.read.clear()
    first = evaluate(jobs, caplog, lake=lake)
    every = [RAW.manifest_path(QUERY, Day(raw.day)) for raw in jobs.lake.raw_manifests(QUERY)]
    every += [REFINED.manifest_path(QUERY, Day(snapshot.day)) for snapshot in jobs.lake.snapshot_manifests(QUERY)]
    assert sorted(ReadNotingZone.read) == sorted(every), "a first check reads every manifest"

    ReadNotingZone.read.clear()
    rerun(jobs, RAW, DAYS[2])
    after = evaluate(jobs, caplog, lake=lake, cursor=first.cursor)
    assert sorted(ReadNotingZone.read) == sorted(
        [
            RAW.manifest_path(QUERY, Day.from_key(DAYS[2])),
            REFINED.manifest_path(QUERY, Day.from_key(DAYS[1])),
            REFINED.manifest_path(QUERY, Day.from_key(DAYS[2])),
        ]
    ), "the day, and the base snapshot it is planned on"
    assert DAYS[2] in flags(after)

    ReadNotingZone.read.clear()
    caplog.clear()
    jobs.instance.report_runless_asset_event(dg.AssetMaterialization(raw_key(QUERY), partition=NEXT_NIGHT))
    evaluate(jobs, caplog, lake=lake, cursor=after.cursor)
    assert not ReadNotingZone.read, "a raw day after the last snapshot changes no snapshot: nothing to read"
    [line] = tick_log(caplog)
    assert line.startswith(f"{QUERY}: no snapshot day from {NEXT_NIGHT} on to check")


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


def commit_two_days(lake: LakeResource, query: str, *, raw_day_2_rerun: bool) -> None:
    """Raw and snapshot days 1 and 2 of `query`, written as manifests only (the sensor reads nothing else);
    with `raw_day_2_rerun`, raw day 2 committed again after snapshot day 2 was built on it."""
    snapshot: SnapshotManifest | None = None
    for number, day in enumerate([dt.date(2024, 3, 1), dt.date(2024, 3, 2)], start=1):
        raw = RawManifest(
            query=query,
            day=day,
            version=f"v_{number}",
            kind="full" if number == 1 else "incremental",
            watermark=None,
            requested_at=dt.datetime.combine(day, dt.time(2), tzinfo=dt.UTC),
            task_id=f"task-{number}",
            run_id=f"run-{number}",
            main_table=query,
            tables={},
        )
        snapshot = SnapshotManifest(
            query=query,
            day=day,
            version=f"v_{number}",
            run_id=f"run-{number}",
            main_table=query,
            base_day=snapshot.day if snapshot else None,
            raw_days=(day,),
            inserted=0,
            replaced=0,
            carried_forward=0,
            removed=0,
            tables={},
            inputs=Lineage(base=PartitionVersion.of(snapshot) if snapshot else None, raws=(PartitionVersion.of(raw),)),
        )
        if number == 2 and raw_day_2_rerun:
            raw = raw.model_copy(update={"version": "v_rerun", "run_id": "run-rerun"})
        lake.raw.write_text(RAW.manifest_path(query, Day(day)), raw.model_dump_json())
        lake.refined.write_text(REFINED.manifest_path(query, Day(day)), snapshot.model_dump_json())


def test_a_tick_out_of_time_leaves_the_queries_it_did_not_reach_to_the_next_tick(
    instance: dg.DagsterInstance, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    lake = LakeResource(raw_zone=f"s3a://{bucket}/raw", refined_zone=f"s3a://{bucket}/refined")
    commit_two_days(lake, "graffiti_reports", raw_day_2_rerun=False)
    commit_two_days(lake, QUERY, raw_day_2_rerun=True)
    sensor = build_cascade_sensor(["graffiti_reports", QUERY], enabled=True, budget_seconds=0)

    def tick(cursor: str | None) -> tuple[dg.SensorResult, list[str]]:
        context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, cursor=cursor)
        context.log.addHandler(caplog.handler)
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        lines = [record.getMessage() for record in caplog.records]
        caplog.clear()
        return result, lines

    first, lines = tick(None)
    assert "graffiti_reports: 2 days (2024-03-01..2024-03-02) checked, none out of date" in lines
    [left] = [line for line in lines if line.startswith(f"{QUERY}: ")]
    assert left.startswith(f"{QUERY}: left for the next tick, ") and left.endswith(" s into this one")
    assert not first.run_requests and not flags(first), "the query not reached is not checked"

    second, lines = tick(first.cursor)
    assert "graffiti_reports: nothing materialised since its last check" in lines
    assert sorted(flags(second)) == ["2024-03-02"], "the next tick checks it, and finds the re-run day"
    [request] = second.run_requests
    assert request.tags[CASCADE_TAG] == QUERY and request.tags[DAYS_TAG] == "2024-03-02..2024-03-02 (1 day)"
