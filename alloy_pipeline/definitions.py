"""The code location: assets built from every AQS file, plus the resources they share."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource

from alloy_pipeline.alloy.client import AlloyApi
from alloy_pipeline.aqs import AqsQuery, load_queries
from alloy_pipeline.assets.raw import build_raw_asset
from alloy_pipeline.lake import Lake
from alloy_pipeline.spark import spark_config

DEFAULT_API_URL = "https://api.uk.alloyapp.io"
DEFAULT_PARTITIONS_START = "2024-01-01"
LONDON = "Europe/London"


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    """An `EnvVar` when the variable is set (so Dagster resolves it per run), else the default."""
    return dg.EnvVar(name) if name in os.environ else default


def daily_partitions(start: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start, timezone=LONDON)


def build_query_definitions(query: AqsQuery, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    """Everything one AQS file contributes to the code location."""
    return dg.Definitions(assets=[build_raw_asset(query, partitions)])


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment (DESIGN.md "Interfaces"), each with a local default."""
    return {
        "alloy": AlloyApi(base_url=_env_or("ALLOY_API_URL", DEFAULT_API_URL), api_key=dg.EnvVar("ALLOY_API_KEY")),
        "lake": Lake(raw_zone=_env_or("ALLOY_RAW_ZONE", "data/raw-zone"), refined_zone=_env_or("ALLOY_REFINED_ZONE", "data/refined-zone")),
        "pyspark": PySparkResource(spark_config=spark_config(os.environ.get("SPARK_REMOTE"))),
    }


@dg.definitions
def defs() -> dg.Definitions:
    queries = load_queries(Path(os.environ.get("ALLOY_AQS_DIR", "aqs_queries")))
    partitions = daily_partitions(os.environ.get("ALLOY_PARTITIONS_START", DEFAULT_PARTITIONS_START))
    return dg.Definitions.merge(
        *(build_query_definitions(query, partitions) for query in queries),
        dg.Definitions(resources=build_resources()),
    )
