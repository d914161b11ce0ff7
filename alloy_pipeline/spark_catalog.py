"""Registration in a Spark session's own catalog, as Spark SQL DDL.

The session is the step's: on the local engine its catalog is the Hive metastore the engine's
JVM owns, on a cluster whatever the cluster is configured with (Glue on EMR, Unity on
Databricks). Registration therefore costs a few statements, never a process of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

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


def _partition_spec(registration: Registration) -> str:
    return ", ".join(
        f"{_quote(key)} = {_literal(value)}"
        for key, value in zip(registration.partition_keys, registration.partition_values, strict=True)
    )


def partition_statement(registration: Registration, exists: bool) -> str:
    """DDL that adds the partition at this version's folder, or points the existing one there.

    Moving a partition is one metastore update, so a reader by table name sees the old version or
    the new one, never a mix.
    """
    location = _literal(registration.partition_location)
    if exists:
        return f"ALTER TABLE {_name(registration)} PARTITION ({_partition_spec(registration)}) SET LOCATION {location}"
    return f"ALTER TABLE {_name(registration)} ADD PARTITION ({_partition_spec(registration)}) LOCATION {location}"


def _name(registration: Registration) -> str:
    return f"{_quote(registration.database)}.{_quote(registration.table)}"


@dataclass
class KnownTable:
    """What a step learned of a table it registers in, so its later days skip the lookups."""

    columns: list[str]
    partitions: set[tuple[str, ...]] = field(default_factory=set)


def _partition_values(line: str) -> tuple[str, ...]:
    """The values of a `SHOW PARTITIONS` line (`k1=v1/k2=v2`, each value path-escaped)."""
    return tuple(unquote(part.split("=", 1)[1]) for part in line.split("/"))


def _lookup(spark: SparkSession, registration: Registration) -> KnownTable | None:
    """The table's columns and partitions, or None when it does not exist.

    Asked without provoking an error: Spark Connect logs every failed call at ERROR level.
    """
    name = registration.qualified_name
    if not spark.catalog.tableExists(name):
        return None
    partitions = {_partition_values(row[0]) for row in spark.sql(f"SHOW PARTITIONS {_name(registration)}").collect()}
    return KnownTable(columns=spark.table(name).columns, partitions=partitions)


def register_in_session(spark: SparkSession, registration: Registration, known: KnownTable | None = None) -> KnownTable:
    """Register through a Spark session's own catalog (a cluster's, or the local metastore); idempotent.

    Each statement is a round trip to the metastore. A table that exists costs a lookup of its
    columns and partitions, unless `known` from an earlier registration in this step is given;
    then a day costs one statement, or two when it brings new columns. Returns what is known of
    the table after this registration.
    """
    table = known or _lookup(spark, registration)
    if table is None:
        for statement in create_statements(registration):
            spark.sql(statement)
        table = KnownTable(columns=[name for name, _ in registration.columns])
    for statement in column_statements(registration, table.columns):
        spark.sql(statement)
    exists = registration.partition_values in table.partitions
    spark.sql(partition_statement(registration, exists))
    known_columns = {column.lower() for column in table.columns}
    table.columns += [name for name, _ in registration.data_columns if name.lower() not in known_columns]
    table.partitions.add(registration.partition_values)
    return table
