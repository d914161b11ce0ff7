"""Merging a snapshot day in Spark: the base snapshot with the raw partitions applied, and the
counts and key checks that describe the merge. No I/O beyond Spark reads of committed tables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from alloy_pipeline.columns import SNAPSHOT_COLUMNS
from alloy_pipeline.frames import current_import_types, drop_root_items, rename_columns, upsert_root_items
from alloy_pipeline.lake import SnapshotTable, TableOutput
from alloy_pipeline.partitions import Day
from alloy_pipeline.snapshot_plan import SnapshotError, SnapshotPlan
from alloy_pipeline.tables import read_table

ITEM_ID = "item_id"
PRIMARY_ITEM = "primary_item"


@dataclass(frozen=True)
class MergeCounts:
    """How the main table changed against the previous snapshot, in root items."""

    expected_rows: int
    inserted: int
    replaced: int
    carried_forward: int
    removed: int


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


def _raw_main_ids(spark: SparkSession, plan: SnapshotPlan) -> DataFrame:
    """`(import_date, item_id)` of every row in the plan's raw main tables."""
    return reduce(
        DataFrame.unionByName,
        (read_table(spark, raw.tables[raw.main_table]).select("import_date", ITEM_ID) for raw in plan.raws),
    )


def observe_origin(frame: DataFrame, plan: SnapshotPlan) -> tuple[DataFrame, Observation]:
    """Count, while a table is written, its rows and those that came from the plan's raws.

    Raw rows carry their partition's `import_date`, later than any row of the base snapshot, so
    the rest were carried forward. Counting during the write saves a pass over the table.
    """
    observation = Observation()
    raw_dates = [Day(raw.day).compact for raw in plan.raws]
    observed = frame.observe(
        observation,
        F.count(F.lit(1)).alias("rows"),
        F.coalesce(F.sum(F.col("import_date").isin(raw_dates).cast("long")), F.lit(0)).alias("from_raws"),
    )
    return observed, observation


@dataclass(frozen=True)
class RawKeys:
    """What the plan's raw main tables hold, in root items."""

    touched: int
    duplicated: int
    examples: tuple[str, ...]


def inspect_raw_keys(spark: SparkSession, plan: SnapshotPlan) -> RawKeys:
    """Root items in the plan's raws, and those that appear twice in one raw partition.

    The merge replaces every root item of a raw partition, and the base snapshot was checked when
    it was written, so the snapshot's keys are unique exactly when each raw main table's are:
    checking the raws costs one pass over the day's changes instead of over the whole table. The
    pass is one aggregate (rows, items, item-day pairs); only when rows outnumber pairs does a
    second query name the repeated items.
    """
    if not plan.raws:
        return RawKeys(touched=0, duplicated=0, examples=())
    ids = _raw_main_ids(spark, plan)
    [totals] = ids.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct(ITEM_ID).alias("touched"),
        F.count_distinct("import_date", ITEM_ID).alias("pairs"),
    ).collect()
    if totals["rows"] == totals["pairs"]:
        return RawKeys(touched=totals["touched"], duplicated=0, examples=())
    repeated = ids.groupBy("import_date", ITEM_ID).count().where(F.col("count") > 1).select(ITEM_ID).distinct()
    examples = tuple(row[ITEM_ID] for row in repeated.orderBy(ITEM_ID).limit(5).collect())
    return RawKeys(touched=totals["touched"], duplicated=repeated.count(), examples=examples)


def count_changes(spark: SparkSession, plan: SnapshotPlan, touched: int, rows: int, from_raws: int) -> MergeCounts:
    """Root-item counts against the previous snapshot, and the main table's expected row count.

    The expected count (previous − replaced + new) comes from the inputs, so the reconciliation
    check catches a merge that loses or duplicates rows. Only a full extract needs a join with
    the previous snapshot (to count removals); an incremental day reads just its small raws.
    """
    if plan.previous is None:
        return MergeCounts(expected_rows=touched, inserted=rows, replaced=0, carried_forward=0, removed=0)
    previous_rows = plan.previous.tables[plan.previous.main_table].rows
    if plan.base is None and plan.raws:
        touched_ids = _raw_main_ids(spark, plan).select(ITEM_ID).distinct()
        previous_main = plan.previous.tables[plan.previous.main_table]
        previous_ids = read_snapshot_table(spark, previous_main).select(ITEM_ID)
        replaced = touched_ids.join(previous_ids, ITEM_ID, "left_semi").count()
        return MergeCounts(
            expected_rows=touched,
            inserted=touched - replaced,
            replaced=replaced,
            carried_forward=0,
            removed=previous_rows - replaced,
        )
    carried_forward = rows - from_raws
    replaced = previous_rows - carried_forward
    return MergeCounts(
        expected_rows=previous_rows - replaced + touched,
        inserted=touched - replaced,
        replaced=replaced,
        carried_forward=carried_forward,
        removed=0,
    )
