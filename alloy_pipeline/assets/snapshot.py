"""Snapshot assets: the previous snapshot with every newer raw partition merged in, renamed.

Snapshot D is a function of stored data only (the snapshot before D, the raw partitions after it
up to D, and the mapping files), so a backfill in date order rebuilds the same partitions.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from alloy_pipeline.aqs import AqsQuery
from alloy_pipeline.assets.metadata import preview, table_schema
from alloy_pipeline.catalog import Catalog
from alloy_pipeline.frames import drop_root_items, rename_columns, stamp_columns, upsert_root_items
from alloy_pipeline.lake import Day, Lake, RawManifest, SnapshotManifest, SnapshotTable
from alloy_pipeline.mapping import MappingFiles
from alloy_pipeline.naming import raw_key, snapshot_key

ITEM_ID = "item_id"
PRIMARY_ITEM = "primary_item"
SNAPSHOT_COLUMNS = ("snapshot_year", "snapshot_month", "snapshot_day", "snapshot_date")


class SnapshotError(RuntimeError):
    """A snapshot that cannot be built from what is stored."""


@dataclass(frozen=True)
class SnapshotPlan:
    """What snapshot D is built from: a base snapshot (or nothing) and raw partitions, in date order."""

    day: Day
    previous: SnapshotManifest | None
    base: SnapshotManifest | None
    raws: tuple[RawManifest, ...]


def plan_snapshot(
    query: str, day: Day, snapshots: list[SnapshotManifest], raws: list[RawManifest]
) -> SnapshotPlan:
    """Start from the latest snapshot before D; apply raw partitions after it up to D.

    A full extract among them makes everything before it irrelevant, deletions included.
    """
    earlier = [manifest for manifest in snapshots if manifest.day < day.date]
    previous = max(earlier, key=lambda manifest: manifest.day) if earlier else None
    pending = sorted(
        (raw for raw in raws if raw.day <= day.date and (previous is None or raw.day > previous.day)),
        key=lambda raw: raw.day,
    )
    fulls = [index for index, raw in enumerate(pending) if raw.kind == "full"]
    base = previous
    if fulls:
        pending, base = pending[fulls[-1] :], None
    if base is None and not pending:
        raise SnapshotError(
            f"query {query}, partition {day.key}: no raw partition on or before this day; "
            f"materialise alloy/raw/{query} first"
        )
    return SnapshotPlan(day=day, previous=previous, base=base, raws=tuple(pending))


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


def _require_column(frame: DataFrame, column: str, where: str) -> None:
    if column not in frame.columns:
        raise SnapshotError(f"{where} has no '{column}' column (columns: {', '.join(frame.columns)})")


def _read_snapshot_table(spark: SparkSession, entry: SnapshotTable) -> DataFrame:
    """A stored snapshot table under its raw column names, so newer raw partitions line up."""
    return rename_columns(
        spark.read.parquet(entry.path).drop(*SNAPSHOT_COLUMNS), {new: old for old, new in entry.renames.items()}
    )


def merge_tables(spark: SparkSession, query: str, plan: SnapshotPlan) -> tuple[str, dict[str, DataFrame]]:
    """Apply the plan's raw partitions to its base; return the main table's name and all tables."""
    tables = (
        {table: _read_snapshot_table(spark, entry) for table, entry in plan.base.tables.items()} if plan.base else {}
    )
    main_table = plan.base.main_table if plan.base else plan.raws[0].main_table
    for raw in plan.raws:
        where = f"query {query}, raw partition {raw.day}"
        increment = {table: spark.read.parquet(entry.path) for table, entry in raw.tables.items()}
        main_table = raw.main_table
        for table, frame in increment.items():
            _require_column(frame, _key_of(table, main_table), f"{where}, table {table}")
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
        (spark.read.parquet(raw.tables[raw.main_table].path).select("import_date", ITEM_ID) for raw in plan.raws),
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
    checking the raws costs one pass over the day's changes instead of over the whole table.
    """
    if not plan.raws:
        return RawKeys(touched=0, duplicated=0, examples=())
    per_item = (
        _raw_main_ids(spark, plan)
        .groupBy(ITEM_ID)
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("import_date").alias("days"))
    )
    repeated = F.col("rows") > F.col("days")
    totals = per_item.agg(
        F.count(F.lit(1)).alias("touched"), F.coalesce(F.sum(repeated.cast("long")), F.lit(0)).alias("duplicated")
    ).first()
    examples = (
        tuple(row[ITEM_ID] for row in per_item.where(repeated).limit(5).collect()) if totals["duplicated"] else ()
    )
    return RawKeys(touched=totals["touched"], duplicated=totals["duplicated"], examples=examples)


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
        previous_ids = _read_snapshot_table(spark, previous_main).select(ITEM_ID)
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


def _unique_check(keys: RawKeys) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="unique_item_id",
        passed=keys.duplicated == 0,
        metadata={"duplicated_keys": keys.duplicated, "examples": dg.MetadataValue.json(list(keys.examples))},
    )


def _checks_after_write(
    manifest: SnapshotManifest, previous: SnapshotManifest | None, counts: MergeCounts
) -> list[dg.AssetCheckResult]:
    main = manifest.tables[manifest.main_table]
    drift: dict[str, dict[str, list[str]]] = {}
    if previous is not None:
        for table, entry in manifest.tables.items():
            before = set(previous.tables[table].columns) if table in previous.tables else set()
            added, removed = sorted(set(entry.columns) - before), sorted(before - set(entry.columns))
            if added or removed:
                drift[table] = {"added": added, "removed": removed}
    return [
        dg.AssetCheckResult(
            check_name="row_count_reconciles",
            passed=main.rows == counts.expected_rows,
            metadata={"rows": main.rows, "expected_rows": counts.expected_rows, "replaced": counts.replaced},
        ),
        dg.AssetCheckResult(
            check_name="schema_drift",
            passed=not drift,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"changes": dg.MetadataValue.json(drift)},
        ),
    ]


def build_snapshot_asset(query: AqsQuery, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The daily snapshot asset of one AQS query, with its checks."""
    key = snapshot_key(query.slug)

    @dg.asset(
        key=key,
        partitions_def=partitions,
        group_name="alloy_snapshot",
        kinds={"spark", "parquet"},
        description=f"Daily snapshot of `{query.path.name}`: one row per live item, columns renamed.",
        deps=[
            dg.AssetDep(raw_key(query.slug)),
            dg.AssetDep(key, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "unique_item_id", asset=key, blocking=True, description="Each item appears once in the main table."
            ),
            dg.AssetCheckSpec(
                "row_count_reconciles",
                asset=key,
                description="Main-table rows equal previous − replaced + new root items.",
            ),
            dg.AssetCheckSpec(
                "schema_drift", asset=key, description="Columns added or removed since the previous snapshot."
            ),
        ],
    )
    def snapshot(
        context: dg.AssetExecutionContext,
        lake: Lake,
        mappings: MappingFiles,
        catalog: Catalog,
        pyspark: PySparkResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        spark = pyspark.spark_session
        day = Day.from_key(context.partition_key)
        plan = plan_snapshot(query.slug, day, lake.snapshot_manifests(query.slug), lake.raw_manifests(query.slug))
        context.log.info(
            f"{query.slug} {day.key}: base snapshot {plan.base.day if plan.base else 'none'}, "
            f"raw partitions {[raw.day.isoformat() for raw in plan.raws] or 'none (carried forward)'}"
        )
        main_table, merged = merge_tables(spark, query.slug, plan)
        keys = inspect_raw_keys(spark, plan)
        unique = _unique_check(keys)
        if not unique.passed:
            yield unique
            raise SnapshotError(
                f"query {query.slug}, partition {day.key}: {unique.metadata['duplicated_keys'].value} item ids "
                "appear more than once in a raw main table; the snapshot was not written (check unique_item_id)"
            )
        stamp = day.fields("snapshot")
        renamed: dict[str, tuple[DataFrame, Observation, dict[str, str], str | None]] = {}
        for table, frame in sorted(merged.items()):
            observed, origin = observe_origin(frame, plan)
            stamped = stamp_columns(observed, stamp)
            mapping = mappings.load(f"{query.slug}_{table}")
            renames = mapping.for_columns(stamped.columns) if mapping else {}
            renamed[table] = (rename_columns(stamped, renames), origin, renames, mapping.source if mapping else None)

        zone = lake.refined
        staging = lake.staging_dir(context.run.run_id, query.slug)
        try:
            tables: dict[str, SnapshotTable] = {}
            for table, (frame, origin, renames, source) in renamed.items():
                frame.write.mode("overwrite").parquet(zone.uri_of(f"{staging}/{table}"))
                tables[table] = SnapshotTable(
                    path=zone.uri_of(lake.snapshot_table_dir(query.slug, table, day)),
                    rows=origin.get["rows"],
                    column_types=tuple(frame.dtypes),
                    mapping_source=source,
                    renames=renames,
                )
            main_origin = renamed[main_table][1].get
            counts = count_changes(
                spark, plan, keys.touched, rows=main_origin["rows"], from_raws=main_origin["from_raws"]
            )
            manifest = SnapshotManifest(
                query=query.slug,
                day=day.date,
                run_id=context.run.run_id,
                main_table=main_table,
                base_day=plan.base.day if plan.base else None,
                raw_days=tuple(raw.day for raw in plan.raws),
                inserted=counts.inserted,
                replaced=counts.replaced,
                carried_forward=counts.carried_forward,
                removed=counts.removed,
                tables=tables,
            )
            lake.commit_snapshot(
                manifest, {f"{staging}/{table}": lake.snapshot_table_dir(query.slug, table, day) for table in tables}
            )
        finally:
            zone.delete(staging)

        catalog.register_tables(
            spark,
            "refined",
            query.slug,
            day,
            tables,
            root=lambda table: zone.uri_of(lake.snapshot_table_root(query.slug, table)),
        )
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": tables[main_table].rows,
                "dagster/column_schema": table_schema(tables[main_table]),
                "dagster/table_name": catalog.table_name("refined", query.slug, main_table),
                "path": dg.MetadataValue.path(tables[main_table].path),
                "rows": dg.MetadataValue.json({table: entry.rows for table, entry in tables.items()}),
                "paths": dg.MetadataValue.json({table: entry.path for table, entry in tables.items()}),
                "inserted": counts.inserted,
                "replaced": counts.replaced,
                "carried_forward": counts.carried_forward,
                "removed": counts.removed,
                "base_snapshot": plan.base.day.isoformat() if plan.base else "none",
                "raw_partitions": dg.MetadataValue.json([raw.day.isoformat() for raw in plan.raws]),
                "mappings": dg.MetadataValue.json(
                    {table: entry.mapping_source for table, entry in tables.items() if entry.mapping_source}
                ),
                "preview": preview(spark.read.parquet(tables[main_table].path), tables[main_table]),
            }
        )
        yield unique
        yield from _checks_after_write(manifest, plan.previous, counts)

    return snapshot
