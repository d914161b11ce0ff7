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


def column_statements(registration: Registration, existing_columns: Sequence[str]) -> list[str]:
    """DDL that adds the registration's columns the table lacks (Spark SQL); none when it has them all."""
    known = {column.lower() for column in existing_columns}
    added = [f"{_quote(column)} {kind}" for column, kind in registration.data_columns if column.lower() not in known]
    return [f"ALTER TABLE {_name(registration)} ADD COLUMNS ({', '.join(added)})"] if added else []


def partition_statements(registration: Registration) -> tuple[str, str]:
    """DDL that adds the partition at this version's folder if it is new, then points it there.

    Moving a partition is one metastore update, so a reader by table name sees the old version or
    the new one, never a mix.
    """
    spec = ", ".join(
        f"{_quote(key)} = {_literal(value)}"
        for key, value in zip(registration.partition_keys, registration.partition_values, strict=True)
    )
    location = _literal(registration.partition_location)
    return (
        f"ALTER TABLE {_name(registration)} ADD IF NOT EXISTS PARTITION ({spec}) LOCATION {location}",
        f"ALTER TABLE {_name(registration)} PARTITION ({spec}) SET LOCATION {location}",
    )


def _name(registration: Registration) -> str:
    return f"{_quote(registration.database)}.{_quote(registration.table)}"


def _columns(spark: SparkSession, registration: Registration) -> list[str] | None:
    """The table's columns, or None when it does not exist.

    Asked without provoking an error: Spark Connect logs every failed call at ERROR level.
    """
    if not spark.catalog.tableExists(registration.qualified_name):
        return None
    return spark.table(registration.qualified_name).columns


def register_in_session(
    spark: SparkSession, registration: Registration, known_columns: Sequence[str] | None = None
) -> list[str]:
    """Register through a Spark session's own catalog (a cluster's, or the local metastore); idempotent.

    Each statement is a round trip to the metastore: a table that exists costs a lookup of its
    columns (none when `known_columns`, from an earlier registration in this step, are given).
    Returns the table's columns after this registration.
    """
    columns = list(known_columns) if known_columns is not None else _columns(spark, registration)
    if columns is None:
        for statement in create_statements(registration):
            spark.sql(statement)
        columns = [name for name, _ in registration.columns]
    for statement in column_statements(registration, columns):
        spark.sql(statement)
    for statement in partition_statements(registration):
        spark.sql(statement)
    known = {column.lower() for column in columns}
    return [*columns, *(name for name, _ in registration.data_columns if name.lower() not in known)]
