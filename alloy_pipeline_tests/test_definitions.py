import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml

from alloy_pipeline.aqs import AqsError, load_queries
from alloy_pipeline.definitions import build_definitions
from alloy_pipeline.naming import raw_key, snapshot_key

REPO = Path(__file__).resolve().parents[1]
LONDON = ZoneInfo("Europe/London")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    monkeypatch.setenv("ALLOY_API_KEY", "test-key")
    return monkeypatch


@pytest.fixture
def definitions(environment: pytest.MonkeyPatch) -> dg.Definitions:
    return build_definitions()


def tick(definitions: dg.Definitions, schedule: str, at: dt.datetime) -> tuple[list[dg.RunRequest], str | None]:
    """The runs `schedule` asks for when the daemon ticks it at `at`, and why it skips if it does."""
    context = dg.build_schedule_context(scheduled_execution_time=at, repository_def=definitions.get_repository_def())
    evaluated = definitions.resolve_schedule_def(schedule).evaluate_tick(context)
    return list(evaluated.run_requests or []), evaluated.skip_message


def test_asset_keys_match_the_aqs_files(definitions: dg.Definitions) -> None:
    slugs = [query.slug for query in load_queries(REPO / "aqs_queries")]
    expected = {raw_key(slug) for slug in slugs} | {snapshot_key(slug) for slug in slugs}
    assert set(definitions.resolve_all_asset_keys()) == expected


def test_assets_are_daily_partitioned_in_london(definitions: dg.Definitions) -> None:
    for key in definitions.resolve_all_asset_keys():
        partitions = definitions.resolve_assets_def(key).partitions_def
        assert isinstance(partitions, dg.DailyPartitionsDefinition)
        assert partitions.timezone == "Europe/London"
        assert partitions.start.strftime("%Y-%m-%d") == "2024-01-01"


def test_snapshot_depends_on_raw_and_its_previous_day(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    for slug in (query.slug for query in load_queries(REPO / "aqs_queries")):
        node = graph.get(snapshot_key(slug))
        assert node.parent_keys == {raw_key(slug), snapshot_key(slug)}
        mapping = graph.get_partition_mapping(snapshot_key(slug), snapshot_key(slug))
        assert isinstance(mapping, dg.TimeWindowPartitionMapping)
        assert (mapping.start_offset, mapping.end_offset) == (-1, -1)


def test_schedules_run_at_three_in_london(definitions: dg.Definitions) -> None:
    daily = definitions.resolve_schedule_def("alloy_daily_schedule")
    weekly = definitions.resolve_schedule_def("alloy_weekly_full_refresh_schedule")
    assert (daily.cron_schedule, daily.execution_timezone) == ("0 3 * * 1-6", "Europe/London")
    assert (weekly.cron_schedule, weekly.execution_timezone) == ("0 3 * * 0", "Europe/London")


@pytest.mark.parametrize(
    ("schedule", "at", "day"),
    [
        ("alloy_daily_schedule", dt.datetime(2024, 4, 1, 3, tzinfo=LONDON), "2024-03-31"),
        ("alloy_daily_schedule", dt.datetime(2024, 10, 28, 3, tzinfo=LONDON), "2024-10-27"),
        ("alloy_weekly_full_refresh_schedule", dt.datetime(2024, 3, 31, 3, tzinfo=LONDON), "2024-03-30"),
    ],
    ids=["monday-after-a-23-hour-day", "monday-after-a-25-hour-day", "sunday"],
)
def test_schedule_asks_for_the_day_just_ended(
    definitions: dg.Definitions, schedule: str, at: dt.datetime, day: str
) -> None:
    """A London day, whatever its length; one run per day and schedule, however often the tick is retried."""
    [request], _ = tick(definitions, schedule, at)
    assert (request.partition_key, request.run_key) == (day, f"{schedule}:{day}")


def test_no_run_is_asked_for_a_day_before_the_calendar_starts(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("ALLOY_PARTITIONS_START", "2024-04-01")
    definitions = build_definitions()
    assert tick(definitions, "alloy_daily_schedule", dt.datetime(2024, 4, 1, 3, tzinfo=LONDON)) == (
        [],
        "no complete day since ALLOY_PARTITIONS_START yet",
    )
    [request], _ = tick(definitions, "alloy_daily_schedule", dt.datetime(2024, 4, 2, 3, tzinfo=LONDON))
    assert request.partition_key == "2024-04-01"


def test_weekly_job_asks_every_raw_asset_for_a_full_refresh(definitions: dg.Definitions) -> None:
    job = definitions.resolve_job_def("alloy_weekly_full_refresh")
    ops = job.get_run_config_for_partition_key("2024-03-30")["ops"]
    raw_assets = [key for key in definitions.resolve_all_asset_keys() if key.path[1] == "raw"]
    assert raw_assets and all(ops[key.to_python_identifier()]["config"]["full_refresh"] is True for key in raw_assets)


def test_a_bad_aqs_file_stops_the_code_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "Broken.json").write_text("{}")
    monkeypatch.setenv("ALLOY_AQS_DIR", str(tmp_path))
    with pytest.raises(AqsError, match="Broken.json"):
        build_definitions()


def test_the_instance_configuration_allows_one_run_per_partition() -> None:
    """`make dev` and production use deploy/dagster.yaml; a second run of a partition must queue (the
    daemon queueing runs by it: test_system_queue.py)."""
    overrides = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    with dg.instance_for_test(overrides=overrides) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    per_value = {"applyLimitPerUniqueValue": True}
    assert {"key": "dagster/partition", "value": per_value, "limit": 1} in limits
    assert {"key": "dagster/asset_partition_range_start", "value": per_value, "limit": 1} in limits
