from pathlib import Path

import dagster as dg
import pytest
import yaml

from alloy_pipeline.aqs import AqsError, load_queries
from alloy_pipeline.definitions import build_definitions
from alloy_pipeline.naming import raw_key, snapshot_key

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def definitions(monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    monkeypatch.setenv("ALLOY_API_KEY", "test-key")
    return build_definitions()


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


def test_schedule_asks_for_the_day_just_ended(definitions: dg.Definitions) -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    weekly = definitions.resolve_schedule_def("alloy_weekly_full_refresh_schedule")
    sunday = dt.datetime(2024, 3, 31, 3, 0, tzinfo=ZoneInfo("Europe/London"))
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=sunday, repository_def=definitions.get_repository_def()
        )
        [request] = weekly.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-03-30"


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
    """`make dev` and production use deploy/dagster.yaml; a second run of a partition must queue."""
    overrides = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    with dg.instance_for_test(overrides=overrides) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    per_value = {"applyLimitPerUniqueValue": True}
    assert {"key": "dagster/partition", "value": per_value, "limit": 1} in limits
    assert {"key": "dagster/asset_partition_range_start", "value": per_value, "limit": 1} in limits
