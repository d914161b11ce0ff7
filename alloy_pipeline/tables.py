"""Spark I/O of a partition's tables: reading committed ones by their manifest entry, and
writing (or registering) a day's tables together.

Spark infers a parquet folder's schema with a job that reads a file footer, and it infers it
again each time a plan holding the read is analysed or run. A snapshot day reads six tables and
runs several plans over them, so on a small day those jobs cost more than the day's own work.
The manifest already records every column and its type, as the table was written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyspark.sql import DataFrame, SparkSession

from alloy_pipeline.lake import TableOutput


def ddl_schema(column_types: tuple[tuple[str, str], ...]) -> str:
    """The columns as a Spark DDL schema (`DataFrame.dtypes` names each type as DDL spells it)."""
    return ", ".join("`" + name.replace("`", "``") + "` " + kind for name, kind in column_types)


def read_table(spark: SparkSession, entry: TableOutput) -> DataFrame:
    """The table `entry` describes, read without inferring its schema."""
    return spark.read.schema(ddl_schema(entry.column_types)).parquet(entry.path)


T = TypeVar("T")


def run_together(operations: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Run each table's operation at once (a day's writes, or its registrations), and return each
    one's result once all have ended.

    A table's write is often a single task (a small day, one large file, a CSV whose cells hold
    newlines), which keeps one core of the engine busy, and a registration is a few round trips
    to the catalog; a day's tables are independent, so running them together keeps every core
    busy (Spark runs jobs from several threads of one session side by side). The first failure
    is raised only after every operation has ended, so nothing is still writing when the caller
    removes what was staged.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(operations)), thread_name_prefix="per-table") as pool:
        futures = {table: pool.submit(operation) for table, operation in operations.items()}
    return {table: future.result() for table, future in futures.items()}
