"""Per-query settings (the AQS folder's pipeline.toml): owners, tags and freshness where the UI shows them."""

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest

from alloy_pipeline.aqs import load_queries
from alloy_pipeline.definitions import build_definitions
from alloy_pipeline.naming import raw_key, snapshot_key
from alloy_pipeline.query_settings import SETTINGS_FILE, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KINDS = {"dagster/kind/spark", "dagster/kind/parquet"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The example queries without their settings file."""
    copy = tmp_path / "aqs"
    copy.mkdir()
    for path in (REPO / "aqs_queries").glob("*.json"):
        shutil.copy(path, copy / path.name)
    return copy


def settings_of(folder: Path, text: str) -> dict:
    (folder / SETTINGS_FILE).write_text(text)
    return load_settings(folder, load_queries(folder))


def test_without_a_settings_file_nothing_is_owned_and_snapshots_are_due_by_seven(folder: Path) -> None:
    settings = load_settings(folder, load_queries(folder))
    assert {(s.owners, tuple(s.tags), s.fresh_by) for s in settings.values()} == {((), (), dt.time(7, 0))}


def test_a_query_section_replaces_owners_adds_tags_and_moves_its_deadline(folder: Path) -> None:
    settings = settings_of(
        folder,
        """
[defaults]
owners = ["team:data"]
tags = { council = "demo" }
[queries."Gully Inspections.json"]
owners = ["gullies@council.example"]
tags = { service = "highways" }
fresh_by = "09:30"
""",
    )
    gully, graffiti = settings["gully_inspections"], settings["graffiti_reports"]
    assert (gully.owners, gully.tags, gully.fresh_by) == (
        ("gullies@council.example",),
        {"council": "demo", "service": "highways"},
        dt.time(9, 30),
    )
    assert (graffiti.owners, graffiti.tags, graffiti.fresh_by) == (("team:data",), {"council": "demo"}, dt.time(7))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[queries."Gully.json"]\nowners = ["team:x"]', ["pipeline.toml", "'Gully.json'", "Gully Inspections.json"]),
        ('[queries."Gully Inspections.json"]\nowners = ["bob"]', ["Gully Inspections.json", "Invalid owner 'bob'"]),
        ('[queries."Gully Inspections.json"]\ntags = { "a b" = "x" }', ["Gully Inspections.json", "tag keys"]),
        ('[defaults]\nfresh_by = "02:00"', ["pipeline.toml", "after the daily run at 03:00"]),
        ("[defaults]\nowner = []", ["pipeline.toml", "owner"]),
        ("[defaults", ["pipeline.toml"]),
    ],
)
def test_a_bad_settings_file_stops_the_code_location_naming_the_file_and_query(
    folder: Path, text: str, names: list[str]
) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_of(folder, text)
    assert all(name in str(raised.value) for name in names), str(raised.value)


def test_the_assets_carry_owners_tags_table_names_and_the_snapshot_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    monkeypatch.setenv("ALLOY_REFINED_DATABASE", "council_refined")
    definitions = build_definitions()
    snapshot = next(iter(definitions.resolve_assets_def(snapshot_key("gully_inspections")).specs))
    raw = next(iter(definitions.resolve_assets_def(raw_key("gully_inspections")).specs))
    for spec in (raw, snapshot):
        assert spec.owners == ["team:data-engineering"], "the example folder's default owner"
        assert {name: value for name, value in spec.tags.items() if name not in DEFAULT_KINDS} == {
            "service": "highways"
        }
    assert snapshot.metadata["dagster/table_name"] == "council_refined.gully_inspections_gully_inspections"
    assert raw.metadata["dagster/table_name"] == "alloy_raw.gully_inspections_gully_inspections"
    policy = snapshot.freshness_policy
    assert isinstance(policy, dg.FreshnessPolicy)
    assert (policy.deadline_cron, policy.timezone) == ("30 9 * * *", "Europe/London")
    assert policy.lower_bound_delta == dt.timedelta(hours=6, minutes=30), "built since the 03:00 run"
    assert "09:30 London time" in (snapshot.description or "")


@pytest.mark.parametrize(("setting", "status"), [(None, "STOPPED"), ("on", "RUNNING"), ("off", "STOPPED")])
def test_schedules_say_when_they_run_and_start_as_alloy_schedules_says(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, status: str
) -> None:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    if setting:
        monkeypatch.setenv("ALLOY_SCHEDULES", setting)
    definitions = build_definitions()
    for name in ("alloy_daily_schedule", "alloy_weekly_full_refresh_schedule"):
        schedule = definitions.resolve_schedule_def(name)
        assert schedule.default_status.value == status
        assert "03:00 London time" in (schedule.description or "")
        assert ("ALLOY_SCHEDULES=on" in (schedule.description or "")) == (status == "STOPPED")


def test_alloy_schedules_takes_only_on_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    monkeypatch.setenv("ALLOY_SCHEDULES", "yes")
    with pytest.raises(ValueError, match="ALLOY_SCHEDULES must be on or off, not 'yes'"):
        build_definitions()
