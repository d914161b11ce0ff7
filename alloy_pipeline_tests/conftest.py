"""Shared fixtures: one local SparkSession for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.spark import LOCAL_SPARK_CONFIG


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """The session every Spark test shares; `PySparkResource(spark_config={})` picks it up."""
    builder = SparkSession.builder
    for name, value in {**LOCAL_SPARK_CONFIG, "spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "2"}.items():
        builder = builder.config(name, value)
    session = builder.getOrCreate()
    yield session
    session.stop()
