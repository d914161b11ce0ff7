"""Merging a snapshot day in Spark: the base snapshot with the raw partitions applied.
No I/O beyond Spark reads of committed tables."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from alloy_pipeline.columns import SNAPSHOT_COLUMNS
from alloy_pipeline.frames import current_import_types, drop_root_items, rename_columns, upsert_root_items
from alloy_pipeline.lake import SnapshotTable, TableOutput
from alloy_pipeline.snapshot_plan import SnapshotError, SnapshotPlan
from alloy_pipeline.tables import read_table

ITEM_ID = "item_id"
PRIMARY_ITEM = "primary_item"


def _key_of(table: str, main_table: str) -> str:
    return ITEM_ID if table == main_table else PRIMARY_ITEM


def _require_column(entry: TableOutput, column: str, where: str) -> None:
    if column not in entry.columns:
        raise SnapshotError(f"{where} has no '{column}' column (columns: {', '.join(entry.columns)})")


def read_snapshot_table(spark: SparkSession, entry: SnapshotTable) -> DataFrame:
    """A stored snapshot table under its raw column names and today's types, so newer raw partitions line up.

    The renames are undone before the `snapshot_*` columns are dropped: a mapping may have given
    one of those names to an Alloy column."""
    raw_names = {new: old for old, new in entry.renames.items()}
    frame = rename_columns(read_table(spark, entry), raw_names).drop(*SNAPSHOT_COLUMNS)
    return current_import_types(frame, {raw_names.get(name, name): kind for name, kind in entry.column_types})


def _read_raw_table(spark: SparkSession, entry: TableOutput) -> DataFrame:
    """A raw table with today's types, whichever version of the pipeline wrote it."""
    return current_import_types(read_table(spark, entry), dict(entry.column_types))


def merge_tables(spark: SparkSession, query: str, plan: SnapshotPlan) -> tuple[str, dict[str, DataFrame]]:
    """Apply the plan's raw partitions to its base; return the main table's name and all tables."""
    tables = (
        {table: read_snapshot_table(spark, entry) for table, entry in plan.base.tables.items()} if plan.base else {}
    )
    main_table = plan.base.main_table if plan.base else plan.raws[0].main_table
    for raw in plan.raws:
        where = f"query {query}, raw partition {raw.day}"
        main_table = raw.main_table
        for table, entry in raw.tables.items():
            _require_column(entry, _key_of(table, main_table), f"{where}, table {table}")
        increment = {table: _read_raw_table(spark, entry) for table, entry in raw.tables.items()}
        if raw.kind == "full":
            tables = increment
            continue
        changed = increment[main_table].select(ITEM_ID)
        merged: dict[str, DataFrame] = {}
        for table in tables.keys() | increment.keys():
            current, new = tables.get(table), increment.get(table)
            key = _key_of(table, main_table)
            if current is None:
                merged[table] = new
            elif new is None:
                merged[table] = drop_root_items(current, changed, key)
            else:
                merged[table] = upsert_root_items(current, new, changed, key)
        tables = merged
    return main_table, tables


def observe_rows(frame: DataFrame, *metrics: Column) -> tuple[DataFrame, Observation]:
    """Count a table's rows (and `metrics`) while it is written, which saves a pass over it."""
    observation = Observation()
    return frame.observe(observation, F.count(F.lit(1)).alias("rows"), *metrics), observation
