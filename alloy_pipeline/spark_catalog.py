"""Registration in Spark's own catalog, and the local Derby metastore that backs it on a laptop.

Derby admits one process at a time, and Dagster runs steps in parallel processes, so the local
metastore is only ever opened by a short-lived worker process (`python -m
alloy_pipeline.spark_catalog`) holding a file lock; no long-lived JVM keeps it booted. This module
imports only pyspark and pydantic, so the worker starts quickly.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from alloy_pipeline.registration import Registration


class MetastoreError(RuntimeError):
    """The local metastore worker failed."""


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_statements(registration: Registration) -> list[str]:
    """DDL that creates the database and table if missing (Spark SQL)."""
    database, table = _quote(registration.database), _quote(registration.table)
    columns = [f"{_quote(name)} {kind}" for name, kind in registration.data_columns]
    columns += [f"{_quote(key)} string" for key in registration.partition_keys]
    keys = ", ".join(_quote(key) for key in registration.partition_keys)
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ({', '.join(columns)}) USING parquet "
        f"PARTITIONED BY ({keys}) LOCATION {_literal(registration.location)}",
    ]


def update_statements(registration: Registration, existing_columns: Sequence[str]) -> list[str]:
    """DDL that adds new columns and the partition (Spark SQL); idempotent."""
    name = f"{_quote(registration.database)}.{_quote(registration.table)}"
    known = {column.lower() for column in existing_columns}
    added = [f"{_quote(column)} {kind}" for column, kind in registration.data_columns if column.lower() not in known]
    spec = ", ".join(
        f"{_quote(key)} = {_literal(value)}"
        for key, value in zip(registration.partition_keys, registration.partition_values, strict=True)
    )
    statements = [f"ALTER TABLE {name} ADD COLUMNS ({', '.join(added)})"] if added else []
    return statements + [
        f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION ({spec}) LOCATION {_literal(registration.partition_location)}"
    ]


def register_in_session(spark: SparkSession, registration: Registration) -> None:
    """Register through a Spark session's own catalog (a cluster's, or the local metastore)."""
    for statement in create_statements(registration):
        spark.sql(statement)
    existing = spark.table(registration.qualified_name).columns
    for statement in update_statements(registration, existing):
        spark.sql(statement)


def local_metastore_session(folder: Path) -> SparkSession:
    """A local Spark session whose catalog is the persistent Derby metastore in `folder`."""
    folder = folder.resolve()
    return (
        SparkSession.builder.master("local[1]")
        .appName("alloy-pipeline-catalog")
        .config("spark.ui.enabled", "false")
        .config("spark.log.level", "ERROR")
        .config("spark.sql.warehouse.dir", str(folder / "warehouse"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.hadoop.javax.jdo.option.ConnectionURL", f"jdbc:derby:;databaseName={folder / 'metastore_db'};create=true")
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={folder}")
        .enableHiveSupport()
        .getOrCreate()
    )


@contextmanager
def metastore_lock(folder: Path) -> Iterator[None]:
    """Derby admits one process at a time: every user of the local metastore takes this lock."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def records(frame: DataFrame) -> list[dict[str, Any]]:
    """Rows as dictionaries of strings, for printing and for tests."""
    return [{name: None if value is None else str(value) for name, value in row.asDict().items()} for row in frame.collect()]


def run_worker(folder: Path, request: dict[str, Any]) -> str:
    """Run metastore work in a short-lived process; return what it printed."""
    completed = subprocess.run(
        [sys.executable, "-m", "alloy_pipeline.spark_catalog", str(folder)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if completed.returncode != 0:
        raise MetastoreError(f"local Spark metastore in {folder} failed: {completed.stderr.strip()[-2000:]}")
    return completed.stdout


def _worker(folder: Path, request: dict[str, Any]) -> None:
    with metastore_lock(folder):
        spark = local_metastore_session(folder)
        try:
            for registration in request.get("register", []):
                register_in_session(spark, Registration.model_validate(registration))
            if "queries" in request:
                print(json.dumps([records(spark.sql(query)) for query in request["queries"]]))
            elif "sql" in request:
                spark.sql(request["sql"]).show(request["rows"], truncate=False)
        finally:
            spark.stop()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), json.loads(sys.stdin.read()))
