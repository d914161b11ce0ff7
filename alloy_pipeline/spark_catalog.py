"""Registration in a Spark session's own catalog, as Spark SQL DDL.

The session is the step's: on the local engine its catalog is the Hive metastore the engine's
JVM owns, on a cluster whatever the cluster is configured with (Glue on EMR, Unity on
Databricks). Registration therefore costs a few statements, never a process of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import SparkSession

from alloy_pipeline.registration import Registration


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
    """DDL that adds new columns and the partition, and points it at this version's folder; idempotent.

    Moving the partition is one metastore update, so a reader by table name sees the old version
    or the new one, never a mix.
    """
    name = f"{_quote(registration.database)}.{_quote(registration.table)}"
    known = {column.lower() for column in existing_columns}
    added = [f"{_quote(column)} {kind}" for column, kind in registration.data_columns if column.lower() not in known]
    spec = ", ".join(
        f"{_quote(key)} = {_literal(value)}"
        for key, value in zip(registration.partition_keys, registration.partition_values, strict=True)
    )
    location = _literal(registration.partition_location)
    statements = [f"ALTER TABLE {name} ADD COLUMNS ({', '.join(added)})"] if added else []
    return statements + [
        f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION ({spec}) LOCATION {location}",
        f"ALTER TABLE {name} PARTITION ({spec}) SET LOCATION {location}",
    ]


def register_in_session(
    spark: SparkSession, registration: Registration, known_columns: Sequence[str] | None = None
) -> list[str]:
    """Register through a Spark session's own catalog (a cluster's, or the local metastore).

    `known_columns` are the table's columns as an earlier registration in this step left them:
    a ranged rebuild registers the same tables every day, and knowing they exist saves three of
    the four round trips. Returns the table's columns after this registration.
    """
    if known_columns is None:
        for statement in create_statements(registration):
            spark.sql(statement)
        known_columns = spark.table(registration.qualified_name).columns
    for statement in update_statements(registration, known_columns):
        spark.sql(statement)
    known = {column.lower() for column in known_columns}
    return [*known_columns, *(name for name, _ in registration.data_columns if name.lower() not in known)]
