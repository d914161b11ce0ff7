"""The code location: assets built from every AQS file, plus the resources they share."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg

from alloy_pipeline.alloy.client import KEY_VARIABLE, AlloyResource
from alloy_pipeline.aqs import AqsQuery, load_queries
from alloy_pipeline.assets.raw import EXPORT_TAG, build_raw_asset
from alloy_pipeline.assets.snapshot import SNAPSHOT_TAG, build_snapshot_asset
from alloy_pipeline.cascade import build_cascade_sensor
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.lake import ALLOY_PREFIX, LakeResource
from alloy_pipeline.mapping import MappingResource
from alloy_pipeline.partitions import daily_partitions
from alloy_pipeline.query_settings import QuerySettings, load_settings
from alloy_pipeline.schedules import build_schedules
from alloy_pipeline.spark import SparkResource

DEFAULT_PARTITIONS_START = "2024-01-01"
DEFAULT_MAX_CONCURRENT_EXPORTS = "4"
DEFAULT_SNAPSHOT_DAYS_PER_RUN = "31"


def _set_in_environment(fields: Mapping[str, str]) -> dict[str, dg.EnvVar]:
    """`field: EnvVar(variable)` for each variable the environment sets: Dagster resolves it per run and
    shows it by name. A field whose variable is unset keeps the default of its `Field`."""
    return {field: dg.EnvVar(variable) for field, variable in fields.items() if variable in os.environ}


def _read_from_environment(fields: Mapping[str, str]) -> dict[str, str]:
    """`field: value` for each variable the environment sets, read now: for settings the code
    location reads itself (the CLI names the catalog's databases), which an `EnvVar` would not be
    yet. A field whose variable is unset keeps the default of its `Field`."""
    return {field: os.environ[variable] for field, variable in fields.items() if variable in os.environ}


def build_query_definitions(
    query: AqsQuery,
    partitions: dg.PartitionsDefinition,
    *,
    days_per_run: int = int(DEFAULT_SNAPSHOT_DAYS_PER_RUN),
    siblings: Sequence[AqsQuery] = (),
    settings: QuerySettings | None = None,
    catalog: CatalogResource | None = None,
) -> dg.Definitions:
    """Everything one AQS file contributes to the code location (`siblings`: the other files;
    `settings`: its section of the folder's pipeline.toml; `catalog`: where its tables are registered)."""
    return dg.Definitions(
        assets=[
            build_raw_asset(query, partitions, settings=settings, catalog=catalog),
            build_snapshot_asset(
                query, partitions, days_per_run=days_per_run, siblings=siblings, settings=settings, catalog=catalog
            ),
        ]
    )


def build_executor(max_exports: int) -> dg.ExecutorDefinition:
    """Steps of a run in parallel processes: up to `max_exports` Alloy exports in flight, beside up
    to `engine_steps` snapshot steps, however many cores the machine has.

    A raw step holds its process for its whole export, and most of that is waiting for Alloy.
    Dagster's default, as many processes as cores, let waiting exports fill every slot: on two
    cores only two exports were in flight where Alloy allows `max_exports` (its rate limit is per
    API key), and snapshots queued behind them. So the run has `max_exports + engine_steps`
    processes, and tag limits split them: export steps (`EXPORT_TAG`) take at most `max_exports`,
    snapshot steps (`SNAPSHOT_TAG`) at most `engine_steps`, so waiting exports
    never starve the snapshots, and the engine is never handed more snapshots than it can take.
    The Spark work of a finished export runs in its raw step's slot.

    Both are the executor's run config (`execution: config:`), `max_exports` by default
    `ALLOY_MAX_CONCURRENT_EXPORTS` and `engine_steps` the CPU count of the machine the run's process
    runs on: read when the run starts (it launches the steps), not where the code location loads, so
    the code location's surface is the same on every machine. An engine on loopback works those
    cores; give a cluster's engine more. Every step process is a thin Spark Connect client of about
    250 MB RSS (docs/benchmarks.md, "A night"), so a run's steps hold at most `max_exports +
    engine_steps` of them: 1.5 GB with 4 exports on two cores.

    A run of one step (one asset and its checks, as a user's materialisation of one asset from the
    UI or the CLI) runs it in the run's own process: a step process would import Dagster and
    pyspark and load the code location a second time, about 2.5 s of CPU for nothing to run beside.
    """
    if max_exports < 1:
        raise ValueError(f"ALLOY_MAX_CONCURRENT_EXPORTS must be at least 1, not {max_exports}")

    @dg.executor(
        name="multiprocess",
        config_schema={
            "max_exports": dg.Field(int, default_value=max_exports, description="Alloy exports in flight at once."),
            "engine_steps": dg.Field(
                dg.Noneable(int),
                default_value=None,
                description="Snapshot steps at once; none: the CPU count of the machine the run runs on.",
            ),
        },
        requirements=dg.multiple_process_executor_requirements(),
    )
    def alloy_multiprocess(context: dg.InitExecutorContext) -> dg.Executor:
        exports = context.executor_config["max_exports"]
        engine_steps = context.executor_config["engine_steps"] or os.cpu_count() or 1
        if exports < 1 or engine_steps < 1:
            raise ValueError(f"max_exports and engine_steps must be at least 1, not {exports} and {engine_steps}")
        if len(context.job.get_definition().nodes_in_topological_order) == 1:
            return dg.in_process_executor.executor_creation_fn(
                dg.InitExecutorContext(
                    job=context.job,
                    executor_def=dg.in_process_executor,
                    executor_config={"retries": {"enabled": {}}},
                    instance=context.instance,
                )
            )
        limits = [{"key": EXPORT_TAG, "limit": exports}, {"key": SNAPSHOT_TAG, "limit": engine_steps}]
        config = {
            "max_concurrent": exports + engine_steps,
            "tag_concurrency_limits": limits,
            "retries": {"enabled": {}},
        }
        return dg.multiprocess_executor.executor_creation_fn(
            dg.InitExecutorContext(
                job=context.job,
                executor_def=dg.multiprocess_executor,
                executor_config=config,
                instance=context.instance,
            )
        )

    return alloy_multiprocess


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment (the README's "Configuration"), each with a local default."""
    lake = LakeResource(**_set_in_environment(LakeResource.ENVIRONMENT))
    raw_zone = os.environ.get("ALLOY_RAW_ZONE") or lake.raw_zone
    mappings = _set_in_environment({"location": "ALLOY_MAPPING_LOCATION"}) or {
        "location": f"{raw_zone.rstrip('/')}/{ALLOY_PREFIX}/mapping-files/"
    }
    return {
        "alloy": AlloyResource(
            **_set_in_environment(AlloyResource.ENVIRONMENT),
            api_key=dg.EnvVar(KEY_VARIABLE) if AlloyResource.key_from_environment() else None,
        ),
        "lake": lake,
        "catalog": CatalogResource(**_read_from_environment(CatalogResource.ENVIRONMENT)),
        "mappings": MappingResource(**mappings),
        "pyspark": SparkResource(**_set_in_environment(SparkResource.ENVIRONMENT)),
    }


def cascade_enabled() -> bool:
    """`ALLOY_CASCADE`: `on` (the default) rebuilds out-of-date snapshots; `off` only flags them."""
    value = os.environ.get("ALLOY_CASCADE", "on").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"ALLOY_CASCADE must be on or off, not {value!r}")
    return value == "on"


def schedules_running() -> bool:
    """`ALLOY_SCHEDULES`: `on` starts the daily and weekly schedules running; `off` (the default) leaves
    them for someone to turn on in the UI, so a new deployment requests nothing from Alloy by itself."""
    value = os.environ.get("ALLOY_SCHEDULES", "off").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"ALLOY_SCHEDULES must be on or off, not {value!r}")
    return value == "on"


def aqs_folder() -> Path:
    """`ALLOY_AQS_DIR`: the folder of AQS files the code location builds its assets from."""
    return Path(os.environ.get("ALLOY_AQS_DIR", "aqs_queries"))


def build_definitions() -> dg.Definitions:
    """The whole code location, from the environment as it is now."""
    queries = load_queries(aqs_folder())
    settings = load_settings(aqs_folder(), queries)
    partitions = daily_partitions(os.environ.get("ALLOY_PARTITIONS_START", DEFAULT_PARTITIONS_START))
    days_per_run = int(os.environ.get("ALLOY_SNAPSHOT_DAYS_PER_RUN", DEFAULT_SNAPSHOT_DAYS_PER_RUN))
    resources = build_resources()
    return dg.Definitions.merge(
        *(
            build_query_definitions(
                query,
                partitions,
                days_per_run=days_per_run,
                siblings=queries,
                settings=settings[query.slug],
                catalog=resources["catalog"],
            )
            for query in queries
        ),
        build_schedules([query.slug for query in queries], partitions, running=schedules_running()),
        dg.Definitions(sensors=[build_cascade_sensor([query.slug for query in queries], enabled=cascade_enabled())]),
        dg.Definitions(
            resources=resources,
            executor=build_executor(
                int(os.environ.get("ALLOY_MAX_CONCURRENT_EXPORTS", DEFAULT_MAX_CONCURRENT_EXPORTS))
            ),
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
