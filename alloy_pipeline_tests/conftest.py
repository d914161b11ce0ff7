"""Shared fixtures: one local SparkSession for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

from pathlib import Path

import dagster as dg
import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.spark import LOCAL_SPARK_CONFIG
from alloy_pipeline_tests.harness import API_KEY, Pipeline


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """The session every Spark test shares; `PySparkResource(spark_config={})` picks it up."""
    builder = SparkSession.builder
    for name, value in {**LOCAL_SPARK_CONFIG, "spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "2"}.items():
        builder = builder.config(name, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


@pytest.fixture
def simulator() -> Iterator[AlloySimulator]:
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY) as running:
        yield running


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def pipeline(simulator: AlloySimulator, spark: SparkSession, instance: dg.DagsterInstance, tmp_path: Path) -> Pipeline:
    return Pipeline.create(simulator, spark, instance, tmp_path, ["DW Container Job", "Graffiti Reports", "Gully Inspections"])
