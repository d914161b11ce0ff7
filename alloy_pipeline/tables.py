"""Reading a committed table by its manifest entry, with the schema the entry records.

Spark infers a parquet folder's schema with a job that reads a file footer, and it infers it
again each time a plan holding the read is analysed or run. A snapshot day reads six tables and
runs several plans over them, so on a small day those jobs cost more than the day's own work.
The manifest already records every column and its type, as the table was written.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from alloy_pipeline.lake import TableOutput


def ddl_schema(column_types: tuple[tuple[str, str], ...]) -> str:
    """The columns as a Spark DDL schema (`DataFrame.dtypes` names each type as DDL spells it)."""
    return ", ".join("`" + name.replace("`", "``") + "` " + kind for name, kind in column_types)


def read_table(spark: SparkSession, entry: TableOutput) -> DataFrame:
    """The table `entry` describes, read without inferring its schema."""
    return spark.read.schema(ddl_schema(entry.column_types)).parquet(entry.path)
