"""The code location's public surface, compared with the committed `surface.json`.

Asset keys, checks, jobs, schedules, sensors, resources and run config are the contract that
runs, backfills, the UI and the operators' configuration rely on. Written out as sorted JSON,
a change to any of them shows up in review as a diff of `surface.json`, not only as code.

After reviewing a change, regenerate the snapshot with
`ALLOY_UPDATE_SURFACE=1 python -m pytest alloy_pipeline_tests/test_surface.py`.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from alloy_pipeline.definitions import build_definitions

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("surface.json")
UPDATE_VARIABLE = "ALLOY_UPDATE_SURFACE"
UPDATE = os.environ.get(UPDATE_VARIABLE) == "1"
"""Read at import: the fixture clears every ALLOY_ variable before the test runs."""

Json = dict[str, Any]


@pytest.fixture
def definitions(monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """The code location under its defaults, whatever the shell running the tests exports.

    Only the AQS folder and a key are set: a snapshot taken with, say, ALLOY_CATALOG=glue in the
    environment would record that machine's deployment, not the code's contract.
    """
    for name in list(os.environ):
        if name.startswith("ALLOY_") or name == "SPARK_REMOTE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    monkeypatch.setenv("ALLOY_API_KEY", "test-key")
    return build_definitions()


def type_name(config_type: Any) -> str:
    """A config type as Dagster prints it, e.g. `(String | { env: String })?` for an optional StringSource."""
    if isinstance(config_type, dg.Noneable):
        return f"{type_name(config_type.inner_type)}?"
    if isinstance(config_type, dg.Array):
        return f"[{type_name(config_type.inner_type)}]"
    if isinstance(config_type, dg.ScalarUnion):
        return f"({type_name(config_type.scalar_type)} | {type_name(config_type.non_scalar_type)})"
    if isinstance(config_type, dg.Map):
        return f"{{ [{type_name(config_type.key_type)}]: {type_name(config_type.inner_type)} }}"
    if hasattr(config_type, "fields"):
        fields = (
            f"{name}{'' if field.is_required else '?'}: {type_name(field.config_type)}"
            for name, field in sorted(config_type.fields.items())
        )
        return "{ " + " ".join(fields) + " }"
    return config_type.given_name


def config_fields(schema: Any) -> Json | None:
    """Each field of a config schema: its type, whether it is required, and its default; None if no config."""
    if not hasattr(schema.config_type, "fields"):
        return None
    described: Json = {}
    for name, field in schema.config_type.fields.items():
        described[name] = {"type": type_name(field.config_type), "required": field.is_required}
        if field.default_provided:
            described[name]["default"] = field.default_value
    return described


def plain(value: Any) -> Any:
    """A configured value; an `EnvVar` by its name, as Dagster shows it, never by its value."""
    return {"env": value.env_var_name} if isinstance(value, dg.EnvVar) else value


def describe_resource(resource: dg.ConfigurableResource) -> Json:
    """The resource's config schema, and the value the code location sets where it is not the default."""
    fields = config_fields(resource.to_config_schema()) or {}
    for name, field in fields.items():
        value = plain(getattr(resource, name))
        if "default" not in field or value != field["default"]:
            field["value"] = value
    return fields


def describe_partitions(partitions: dg.PartitionsDefinition | None) -> Json | None:
    if partitions is None:
        return None
    described: Json = {"type": type(partitions).__name__}
    if isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        described |= {
            "start": partitions.start.isoformat(),
            "timezone": partitions.timezone,
            "cron_schedule": partitions.cron_schedule,
            "end_offset": partitions.end_offset,
        }
    return described


def describe_mapping(mapping: dg.PartitionMapping | None) -> Json | None:
    if mapping is None:
        return None
    described: Json = {"type": type(mapping).__name__}
    if isinstance(mapping, dg.TimeWindowPartitionMapping):
        described |= {
            "start_offset": mapping.start_offset,
            "end_offset": mapping.end_offset,
            "allow_nonexistent_upstream_partitions": mapping.allow_nonexistent_upstream_partitions,
        }
    return described


def check_specs(defs: dg.Definitions) -> list[dg.AssetCheckSpec]:
    """The checks defined with their assets, and any standalone `@asset_check`."""
    definitions = [*map(defs.resolve_assets_def, defs.resolve_all_asset_keys()), *(defs.asset_checks or [])]
    return [spec for definition in definitions for spec in definition.check_specs]


def describe_asset(defs: dg.Definitions, spec: dg.AssetSpec, checks: list[dg.AssetCheckSpec]) -> Json:
    assets_def = defs.resolve_assets_def(spec.key)
    policy = assets_def.backfill_policy
    return {
        "group": spec.group_name,
        "kinds": sorted(spec.kinds),
        "partitions": describe_partitions(spec.partitions_def),
        "backfill_policy": {"type": policy.policy_type.value, "max_partitions_per_run": policy.max_partitions_per_run}
        if policy
        else None,
        "deps": {
            dep.asset_key.to_user_string(): {"partition_mapping": describe_mapping(dep.partition_mapping)}
            for dep in spec.deps
        },
        "checks": {
            check.name: {"blocking": check.blocking, "partitioned": check.partitions_def is not None}
            for check in checks
            if check.asset_key == spec.key
        },
        "config": config_fields(assets_def.op.config_schema),
        "resources": sorted(assets_def.required_resource_keys),
        "pool": assets_def.op.pool,
        "op_tags": dict(assets_def.op.tags),
    }


def describe_job(defs: dg.Definitions, job: Any, graph: Any) -> Json:
    """An asset job: what it selects, the run config it brings, and how it executes."""
    resolved = defs.resolve_job_def(job.name)
    partitions = resolved.partitions_def
    return {
        "assets": sorted(key.to_user_string() for key in job.selection.resolve(graph)),
        "run_config": resolved.get_run_config_for_partition_key(partitions.get_first_partition_key())
        if partitions
        else resolved.run_config,
        "execution": dg.validate_run_config(resolved)["execution"],
    }


def describe(defs: dg.Definitions) -> Json:
    """The public surface of `defs` as plain data (the file sorts keys; lists are sorted here)."""
    graph = defs.resolve_asset_graph()
    checks = check_specs(defs)
    return {
        "assets": {
            spec.key.to_user_string(): describe_asset(defs, spec, checks) for spec in defs.resolve_all_asset_specs()
        },
        "jobs": {job.name: describe_job(defs, job, graph) for job in defs.jobs or []},
        "schedules": {
            schedule.name: {
                "cron": schedule.cron_schedule,
                "timezone": schedule.execution_timezone,
                "job": schedule.job_name,
                "default_status": schedule.default_status.value,
            }
            for schedule in defs.schedules or []
        },
        "sensors": {
            sensor.name: {
                "default_status": sensor.default_status.value,
                "minimum_interval_seconds": sensor.minimum_interval_seconds,
                "assets": sorted(key.to_user_string() for key in sensor.asset_selection.resolve(graph))
                if sensor.asset_selection
                else [],
                "resources": sorted(sensor.required_resource_keys),
            }
            for sensor in defs.sensors or []
        },
        "resources": {key: describe_resource(resource) for key, resource in (defs.resources or {}).items()},
    }


def test_public_surface_matches_the_snapshot(definitions: dg.Definitions) -> None:
    built = json.dumps(describe(definitions), indent=2, sort_keys=True) + "\n"
    if UPDATE:
        SNAPSHOT.write_text(built)
        return
    committed = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if built != committed:
        diff = difflib.unified_diff(
            committed.splitlines(), built.splitlines(), "surface.json (committed)", "surface (built)", lineterm=""
        )
        pytest.fail(
            "\n".join(diff)
            + f"\n\nThe code location's public surface changed. If that is intended, regenerate the snapshot with "
            f"`{UPDATE_VARIABLE}=1 python -m pytest alloy_pipeline_tests/test_surface.py` and commit it.",
            pytrace=False,
        )
