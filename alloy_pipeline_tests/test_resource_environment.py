"""Run config that names one of the code location's resources, as a user types it in the launchpad:
Dagster then drops what the environment set on that resource, and the run must stop, not write
the day to the defaults' local folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from alloy_pipeline.alloy.client import AlloyResource
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.definitions import build_resources
from alloy_pipeline.lake import LakeResource
from alloy_pipeline.spark import SparkResource

ENGINE_URL = "sc://localhost:1/;token=never-shown"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The code location's environment, run from an empty working directory: where a lake left
    at its defaults (`data/raw-zone`) would be written."""
    for name, value in {
        "ALLOY_RAW_ZONE": str(tmp_path / "raw"),
        "ALLOY_REFINED_ZONE": str(tmp_path / "refined"),
        "ALLOY_CATALOG": "glue",
        "ALLOY_REFINED_DATABASE": "council_refined",
        "SPARK_REMOTE": ENGINE_URL,
        "ALLOY_API_KEY": "test-key",
    }.items():
        monkeypatch.setenv(name, value)
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    return tmp_path


@dg.asset
def lands_a_file(lake: LakeResource, catalog: CatalogResource) -> str:
    """Writes where a raw step would, and names the catalog database it would register in."""
    landing = Path(lake.raw_zone) / "landed"
    landing.mkdir(parents=True)
    return f"{landing} {catalog.backend}:{catalog.refined_database}"


def materialised(asset: dg.AssetsDefinition, run_config: dict[str, Any]) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], resources=build_resources(), run_config=run_config, raise_on_error=False)


def failure(result: dg.ExecuteInProcessResult) -> str:
    """What the step failed with: its resources' setup, or its own code."""
    kinds = {dg.DagsterEventType.RESOURCE_INIT_FAILURE, dg.DagsterEventType.STEP_FAILURE}
    [event] = [event for event in result.all_events if event.event_type in kinds]
    return str(event.event_specific_data)


def test_run_config_for_the_lake_alone_stops_before_writing_to_the_default_zones(environment: Path) -> None:
    result = materialised(lands_a_file, {"resources": {"lake": {"config": {"cleanup_grace_minutes": 60}}}})
    assert not result.success
    message = failure(result)
    assert "LakeResource: raw_zone (ALLOY_RAW_ZONE), refined_zone (ALLOY_REFINED_ZONE) hold their defaults" in message
    assert "Dagster issue 12898" in message
    assert list((environment / "working").iterdir()) == [], "nothing under the defaults' data/"
    assert not (environment / "raw").exists()


def test_run_config_that_gives_the_environment_fields_too_is_run_as_asked(environment: Path) -> None:
    fields = {"raw_zone": {"env": "ALLOY_RAW_ZONE"}, "refined_zone": str(environment / "elsewhere")}
    result = materialised(lands_a_file, {"resources": {"lake": {"config": {**fields, "cleanup_grace_minutes": 60}}}})
    assert result.success
    assert result.output_for_node("lands_a_file") == f"{environment / 'raw' / 'landed'} glue:council_refined"


def test_without_run_config_the_environment_holds(environment: Path) -> None:
    result = materialised(lands_a_file, {})
    assert result.success and (environment / "raw" / "landed").is_dir()


def test_run_config_for_the_catalog_alone_stops_naming_the_lost_fields_only(environment: Path) -> None:
    """The raw database is not in the environment: its default is what the code location meant."""
    result = materialised(lands_a_file, {"resources": {"catalog": {"config": {"raw_database": "mine"}}}})
    assert not result.success
    assert "CatalogResource: backend (ALLOY_CATALOG), refined_database (ALLOY_REFINED_DATABASE) hold" in failure(result)
    assert not (environment / "raw").exists()


def test_run_config_for_spark_alone_stops_before_starting_local_spark_and_never_shows_the_url(
    environment: Path,
) -> None:
    @dg.asset
    def uses_spark(pyspark: SparkResource) -> None:
        raise AssertionError("never reached")

    result = materialised(uses_spark, {"resources": {"pyspark": {"config": {"spark_config": {}}}}})
    assert not result.success
    message = failure(result)
    assert "SparkResource: remote (SPARK_REMOTE) hold" in message
    assert ENGINE_URL not in message and "never-shown" not in message


@dg.asset
def exports(alloy: AlloyResource) -> None:
    raise AssertionError("never reached")


def test_run_config_for_alloy_alone_names_the_url_and_the_key_it_lost_without_showing_them(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the base_url refusal ("not the Alloy API URL configured"), nor "no Alloy API key
    configured", which would send the user looking in the environment, where both are set."""
    monkeypatch.setenv("ALLOY_API_URL", "http://127.0.0.1:9/")
    result = materialised(exports, {"resources": {"alloy": {"config": {"poll_max_seconds": 5}}}})
    assert not result.success
    message = failure(result)
    assert "AlloyResource: base_url (ALLOY_API_URL), api_key (ALLOY_API_KEY) hold their defaults" in message
    assert "test-key" not in message and "127.0.0.1:9" not in message


def test_a_key_from_secrets_manager_is_not_taken_for_a_lost_api_key(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ALLOY_API_KEY_SECRET_ID set the code location leaves `api_key` unset on purpose."""
    monkeypatch.setenv("ALLOY_API_KEY_SECRET_ID", "council/alloy")
    config = {"api_key_secret_id": {"env": "ALLOY_API_KEY_SECRET_ID"}, "poll_max_seconds": 5}
    result = materialised(exports, {"resources": {"alloy": {"config": config}}})
    assert "never reached" in failure(result), "the resource was set up: the asset ran"
