"""Snapshot assets: the previous snapshot with every newer raw partition merged in, renamed.

Snapshot D is a function of stored data only (the snapshot before D, the raw partitions after it
up to D, and the mapping files), so a backfill in date order rebuilds the same partitions.
"""

import datetime as dt
import logging
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame, Observation, SparkSession

from alloy_pipeline.aqs import AqsQuery
from alloy_pipeline.assets.metadata import preview, table_schema
from alloy_pipeline.assets.publication import Publisher, runs_alive
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.check_targets import TargetMaterialization, latest_materialization
from alloy_pipeline.frames import rename_columns, stamp_columns
from alloy_pipeline.lake import REFINED, LakeResource, SnapshotManifest, SnapshotTable
from alloy_pipeline.mapping import MappingNames, MappingResource, stale_files
from alloy_pipeline.naming import raw_key, snapshot_key, table_slug
from alloy_pipeline.partitions import Day
from alloy_pipeline.pools import snapshot_pool
from alloy_pipeline.query_settings import QuerySettings
from alloy_pipeline.snapshot_audit import WrittenKeys, audit_main_table, expected_keys, inspect_raw_keys, written_keys
from alloy_pipeline.snapshot_merge import merge_tables, observe_rows
from alloy_pipeline.snapshot_plan import CURRENT_INPUTS_CHECK, SnapshotError, SnapshotPlan, out_of_date, plan_snapshot
from alloy_pipeline.tables import read_table, run_together

SNAPSHOT_TAG = "alloy_pipeline/snapshot"
"""Op tag on every snapshot asset; the executor limits how many such steps of one run run at once."""


def _unique_check(keys: WrittenKeys) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="unique_item_id",
        passed=keys.repeated == 0,
        metadata={
            "rows": keys.rows,
            "distinct_keys": keys.distinct,
            "duplicated_keys": keys.repeated,
            "examples": dg.MetadataValue.json(list(keys.examples)),
        },
    )


def _reconcile_check(keys: WrittenKeys) -> dg.AssetCheckResult:
    """The main table as written against the items of its inputs; a raw item written with an older row
    (a merge that kept the version it should have replaced) fails it too."""
    return dg.AssetCheckResult(
        check_name="row_count_reconciles",
        passed=keys.rows == keys.distinct == keys.expected and keys.missing == keys.unexpected == keys.stale == 0,
        metadata={
            "rows": keys.rows,
            "distinct_keys": keys.distinct,
            "expected_rows": keys.expected,
            "missing_keys": keys.missing,
            "unexpected_keys": keys.unexpected,
            "stale_keys": keys.stale,
            "replaced": keys.changes.replaced,
        },
    )


def _drift_check(manifest: SnapshotManifest, previous: SnapshotManifest | None) -> dg.AssetCheckResult:
    drift: dict[str, dict[str, list[str]]] = {}
    if previous is not None:
        for table, entry in manifest.tables.items():
            before = set(previous.tables[table].columns) if table in previous.tables else set()
            added, removed = sorted(set(entry.columns) - before), sorted(before - set(entry.columns))
            if added or removed:
                drift[table] = {"added": added, "removed": removed}
    return dg.AssetCheckResult(
        check_name="schema_drift",
        passed=not drift,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"changes": dg.MetadataValue.json(drift)},
    )


class BlockedSnapshot(SnapshotError):
    """A blocking check failed before anything was committed; the failed check travels with the error."""

    def __init__(self, message: str, check: dg.AssetCheckResult) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class SnapshotStep:
    """What building one query's snapshot days needs; shared by every day of a run."""

    query: str
    mapping_names: MappingNames
    """The names this query's mapping files may begin with (its slug, or its AQS file's stem)."""
    sibling_names: tuple[MappingNames, ...]
    """The other queries' names, so that their files are not reported as this query's stale ones."""
    lake: LakeResource
    mappings: MappingResource
    catalog: CatalogResource
    spark: SparkSession
    run_id: str
    log: logging.Logger
    alive: Callable[[str], bool]
    """Whether a run is still alive (`runs_alive`), for the recovery of failed commits."""

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(self.lake, self.catalog, self.spark, REFINED, self.query, self.log, self.alive)


@dataclass(frozen=True)
class StagedTable:
    """A merged table ready to write: stamped, renamed, and counting its rows while it is written."""

    frame: DataFrame
    column_types: tuple[tuple[str, str], ...]
    counted: Observation
    renames: dict[str, str]
    mapping_source: str | None


@dataclass(frozen=True)
class CommittedDay:
    """A snapshot day that is committed and registered, with what the UI shows for it."""

    manifest: SnapshotManifest
    metadata: dict[str, object]
    checks: tuple[dg.AssetCheckResult, ...]


def _mapping_note(step: SnapshotStep, table: str, source: str | None) -> str:
    """Which file renamed `table`, or the names looked for: a file under a name nobody expected
    would otherwise leave a table unrenamed with nothing to say why."""
    return source or f"none (looked for {', '.join(step.mapping_names.file_names(table))})"


def _stage_tables(
    step: SnapshotStep, plan: SnapshotPlan, main_table: str, merged: dict[str, DataFrame]
) -> dict[str, StagedTable]:
    """Stamp each merged table with the day and rename it by its mapping file (read before any write).

    The schema is asked of the server once per table, before the rename, which only relabels it.
    """
    stamp = plan.day.fields("snapshot")
    staged: dict[str, StagedTable] = {}
    for table, frame in sorted(merged.items()):
        observed, counted = observe_rows(frame, *(written_keys(plan) if table == main_table else ()))
        stamped = stamp_columns(observed, stamp)
        column_types = stamped.dtypes
        mapping = step.mappings.load(step.mapping_names, table)
        renames = mapping.for_columns([name for name, _ in column_types]) if mapping else {}
        step.log.info(
            f"{step.query} {plan.day.key}: table {table}, mapping "
            f"{_mapping_note(step, table, mapping.source if mapping else None)}"
        )
        staged[table] = StagedTable(
            frame=rename_columns(stamped, renames),
            column_types=tuple((renames.get(name, name), kind) for name, kind in column_types),
            counted=counted,
            renames=renames,
            mapping_source=mapping.source if mapping else None,
        )
    return staged


def _stale_mapping_files(step: SnapshotStep, plan: SnapshotPlan, tables: Collection[str]) -> tuple[str, ...]:
    """This query's mapping files that rename none of the day's tables, with a warning: left alone,
    such a file (a table renamed or dropped from the query) is silently ignored every day."""
    stale = stale_files(step.mappings.list_files(), step.mapping_names, tables, step.sibling_names)
    if stale:
        step.log.warning(
            f"{step.query} {plan.day.key}: mapping files at {step.mappings.location} look like this query's but "
            f"name none of its tables ({', '.join(sorted(tables))}), so they rename nothing: {', '.join(stale)}"
        )
    return stale


def _blocked(step: SnapshotStep, plan: SnapshotPlan, keys: WrittenKeys) -> BlockedSnapshot:
    """The error for a main table that repeats item ids, saying whether a raw partition already did."""
    raws = inspect_raw_keys(step.spark, plan)
    cause = (
        f"a raw main table repeats {raws.duplicated} item ids (e.g. {', '.join(raws.examples)})"
        if raws.duplicated
        else "no raw main table repeats one, so the merge did"
    )
    return BlockedSnapshot(
        f"query {step.query}, partition {plan.day.key}: the main table as written repeats {keys.repeated} item ids "
        f"(e.g. {', '.join(keys.examples)}); {cause}. The snapshot was not committed (check unique_item_id)",
        _unique_check(keys),
    )


def _write_and_publish(
    step: SnapshotStep, plan: SnapshotPlan, main_table: str, staged: dict[str, StagedTable]
) -> tuple[SnapshotManifest, WrittenKeys]:
    """Write every table under staging, audit the main table as written, then publish the day as a new version.

    What the inputs say the main table must hold is counted while the tables are written (the
    main table's write is often one task, which leaves a core free), and what the main table
    holds is counted by its write. A main table that repeats an item id is never committed: its
    staging is removed, and the day's committed version, if any, stays as it was.
    """
    day, zone = plan.day, step.lake.refined
    commit = step.publisher.begin(day, step.run_id)
    staging = {table: zone.uri_of(f"{commit.staging}/{table}") for table in staged}
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="expected-keys") as pool:
            expecting = pool.submit(expected_keys, step.spark, plan)
            run_together(
                {
                    table: partial(entry.frame.write.mode("overwrite").parquet, staging[table])
                    for table, entry in staged.items()
                }
            )
            expected = expecting.result()
        tables = {
            table: SnapshotTable(
                path=zone.uri_of(REFINED.table_dir(step.query, table, day, commit.version)),
                rows=entry.counted.get["rows"],
                column_types=entry.column_types,
                mapping_source=entry.mapping_source,
                renames=entry.renames,
            )
            for table, entry in staged.items()
        }
        keys = audit_main_table(
            step.spark,
            plan,
            tables[main_table].model_copy(update={"path": staging[main_table]}),
            staged[main_table].counted.get,
            expected,
        )
        if keys.repeated:
            raise _blocked(step, plan, keys)
    except BaseException:
        commit.abandon()
        raise
    manifest = SnapshotManifest(
        query=step.query,
        day=day.date,
        version=commit.version,
        run_id=step.run_id,
        main_table=main_table,
        base_day=plan.base.day if plan.base else None,
        raw_days=tuple(raw.day for raw in plan.raws),
        inserted=keys.changes.inserted,
        replaced=keys.changes.replaced,
        carried_forward=keys.changes.carried_forward,
        removed=keys.changes.removed,
        tables=tables,
        inputs=plan.lineage,
    )
    step.publisher.publish(
        commit,
        manifest,
        {f"{commit.staging}/{table}": REFINED.table_dir(step.query, table, day, commit.version) for table in tables},
    )
    return manifest, keys


def _materialization_metadata(
    step: SnapshotStep, plan: SnapshotPlan, manifest: SnapshotManifest, stale_mappings: tuple[str, ...]
) -> dict[str, object]:
    """What the UI shows for a committed day: its tables as written, the merge counts, its inputs, and
    which mapping file renamed each table (and this query's files that renamed none)."""
    tables = manifest.tables
    main = tables[manifest.main_table]
    return {
        "dagster/row_count": main.rows,
        "dagster/column_schema": table_schema(main),
        "dagster/table_name": step.catalog.table_name(REFINED, step.query, manifest.main_table),
        "path": dg.MetadataValue.path(main.path),
        "rows": dg.MetadataValue.json({table: entry.rows for table, entry in tables.items()}),
        "paths": dg.MetadataValue.json({table: entry.path for table, entry in tables.items()}),
        "inserted": manifest.inserted,
        "replaced": manifest.replaced,
        "carried_forward": manifest.carried_forward,
        "removed": manifest.removed,
        "base_snapshot": plan.base.day.isoformat() if plan.base else "none",
        "raw_partitions": dg.MetadataValue.json([raw.day.isoformat() for raw in plan.raws]),
        "mappings": dg.MetadataValue.json(
            {table: _mapping_note(step, table, entry.mapping_source) for table, entry in tables.items()}
        ),
        "mapping_location": step.mappings.location,
        "stale_mapping_files": dg.MetadataValue.json(list(stale_mappings)),
        "preview": preview(read_table(step.spark, main), main),
    }


def _current_inputs_check(plan: SnapshotPlan, stale: Mapping[dt.date, list[str]]) -> dg.AssetCheckResult:
    """A day is built on its committed inputs by construction, but its base may itself be out of date."""
    changes = (
        [f"base snapshot {plan.base.day.isoformat()} is out of date: " + "; ".join(stale[plan.base.day])]
        if plan.base is not None and plan.base.day in stale
        else []
    )
    return dg.AssetCheckResult(
        check_name=CURRENT_INPUTS_CHECK,
        passed=not changes,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "base_snapshot": plan.lineage.base.describe() if plan.lineage.base else "none",
            "raw_partitions": dg.MetadataValue.json([raw.describe() for raw in plan.lineage.raws]),
            "changes": dg.MetadataValue.json(changes),
        },
    )


def build_day(step: SnapshotStep, plan: SnapshotPlan, stale: Mapping[dt.date, list[str]]) -> CommittedDay:
    """Merge, check, write and publish snapshot `plan.day` (committed, then registered in the catalog).

    `stale` are the days out of date (`out_of_date`) when the day is built. Raises
    BlockedSnapshot (nothing committed) when the main table as written repeats an item id.
    """
    day = plan.day
    step.log.info(
        f"{step.query} {day.key}: base snapshot {plan.base.day if plan.base else 'none'}, "
        f"raw partitions {[raw.day.isoformat() for raw in plan.raws] or 'none (carried forward)'}"
    )
    main_table, merged = merge_tables(step.spark, step.query, plan)
    staged = _stage_tables(step, plan, main_table, merged)
    stale_mappings = _stale_mapping_files(step, plan, staged.keys())
    manifest, keys = _write_and_publish(step, plan, main_table, staged)
    return CommittedDay(
        manifest=manifest,
        metadata=_materialization_metadata(step, plan, manifest, stale_mappings),
        checks=(
            _unique_check(keys),
            _reconcile_check(keys),
            _drift_check(manifest, plan.previous),
            _current_inputs_check(plan, stale),
        ),
    )


def snapshot_one_day(step: SnapshotStep, day: Day) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """A run of one partition: Dagster records these results against the run's partition."""
    step.publisher.recover()
    snapshots = step.lake.snapshot_manifests(step.query, replacing=(day,))
    raws = step.lake.raw_manifests(step.query)
    try:
        committed = build_day(
            step, plan_snapshot(step.query, day, snapshots, raws), out_of_date(step.query, snapshots, raws)
        )
    except BlockedSnapshot as blocked:
        yield blocked.check
        raise
    yield dg.MaterializeResult(metadata=committed.metadata)
    yield from committed.checks


def _evaluation(
    result: dg.AssetCheckResult, spec: dg.AssetCheckSpec, day: Day, target: TargetMaterialization | None
) -> dg.AssetCheckEvaluation:
    """`result` as recorded on `day` and `target`, its latest materialization: an AssetCheckResult takes
    the run's partition and its materialization, and a ranged run has neither."""
    return dg.AssetCheckEvaluation(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        description=result.description,
        blocking=spec.blocking,
        partition=day.key,
        target_materialization_data=target,
    )


def _range_failure(query: str, days: list[Day], index: int) -> str:
    committed = f"the days up to {days[index - 1].key} are committed" if index else "no earlier day was committed"
    return (
        f"query {query}, partition {days[index].key}: the run over {days[0].key}..{days[-1].key} "
        f"stopped at this day; {committed}"
    )


def snapshot_days(
    step: SnapshotStep,
    key: dg.AssetKey,
    days: list[Day],
    specs: Mapping[str, dg.AssetCheckSpec],
    instance: dg.DagsterInstance,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A run over a range of days: each day is committed, then reported, before the next is built.

    Day D+1 is planned from the manifests as they stand after D's commit, so it reads D back
    from the lake exactly as a run of D+1 alone would: the result cannot differ from day-by-day
    runs, and every day's Spark plan stays as small as a single day's (carrying the DataFrame
    lineage across 31 days would not). Reporting each day as it is committed lets a failure on
    day k leave the days before it materialized, in the lake and in Dagster alike.
    """
    step.publisher.recover()
    snapshots = step.lake.snapshot_manifests(step.query, replacing=days)
    raws = step.lake.raw_manifests(step.query)
    stale = out_of_date(step.query, snapshots, raws)
    for index, day in enumerate(days):
        try:
            committed = build_day(step, plan_snapshot(step.query, day, snapshots, raws), stale)
        except Exception as error:
            if isinstance(error, BlockedSnapshot):
                target = latest_materialization(instance, key, day.key)
                yield _evaluation(error.check, specs[error.check.check_name], day, target)
            raise SnapshotError(_range_failure(step.query, days, index)) from error
        snapshots = [manifest for manifest in snapshots if manifest.day != day.date] + [committed.manifest]
        stale.pop(day.date, None)
        yield dg.AssetMaterialization(asset_key=key, partition=day.key, metadata=committed.metadata)
        target = latest_materialization(instance, key, day.key)
        yield from (_evaluation(check, specs[check.check_name], day, target) for check in committed.checks)


def _check_specs(key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """The snapshot's checks, evaluated per day.

    Partitioned like the asset, so each evaluation is recorded on its day in a single-day run and
    in a ranged run alike (unpartitioned, a single-day run records its evaluation on no partition).
    """
    return [
        dg.AssetCheckSpec(
            "unique_item_id",
            asset=key,
            blocking=True,
            description=(
                "Each item appears once in the main table, as written and before it is committed: a table that "
                "repeats one is not committed."
            ),
            partitions_def=partitions,
        ),
        dg.AssetCheckSpec(
            "row_count_reconciles",
            asset=key,
            description=(
                "The main table as written holds exactly the items of the previous snapshot (or the full extract) "
                "and of the raw partitions since, one row each, and no raw item with an older row than the raws'."
            ),
            partitions_def=partitions,
        ),
        dg.AssetCheckSpec(
            "schema_drift",
            asset=key,
            description="Columns added or removed since the previous snapshot.",
            partitions_def=partitions,
        ),
        dg.AssetCheckSpec(
            CURRENT_INPUTS_CHECK,
            asset=key,
            description=(
                "The snapshot before this day and the raw partitions applied to it are still the committed "
                "versions; re-evaluated by alloy_cascade_sensor when one of them is re-run."
            ),
            partitions_def=partitions,
        ),
    ]


def build_snapshot_asset(
    query: AqsQuery,
    partitions: dg.PartitionsDefinition,
    *,
    days_per_run: int,
    siblings: Sequence[AqsQuery] = (),
    settings: QuerySettings | None = None,
    catalog: CatalogResource | None = None,
) -> dg.AssetsDefinition:
    """The daily snapshot asset of one AQS query, with its checks, owners, tags and freshness.

    A backfill runs up to `days_per_run` days in one run: starting Spark and the run costs more
    than a day's merge. Each day depends on the day before, so Dagster launches those runs one
    at a time, in date order, each once the day before its first is materialized. `siblings` are
    the code location's other queries, whose mapping files this one must not call stale;
    `settings` its owners, tags and deadline (`pipeline.toml`); `catalog` names its table.
    """
    settings, catalog = settings or QuerySettings(), catalog or CatalogResource()
    sibling_names = tuple(MappingNames.of(other) for other in siblings if other.slug != query.slug)
    if days_per_run < 1:
        raise ValueError(
            f"query {query.slug}: days_per_run (ALLOY_SNAPSHOT_DAYS_PER_RUN) must be at least 1, not {days_per_run}"
        )
    key = snapshot_key(query.slug)
    with warnings.catch_warnings():
        # A beta and a preview feature, used knowingly with dagster pinned; their warnings would
        # greet every load of the code location.
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = _check_specs(key, partitions)
        as_asset = dg.asset(
            key=key,
            partitions_def=partitions,
            group_name="alloy_snapshot",
            kinds={"spark", "parquet"},
            description=(
                f"Daily snapshot of `{query.path.name}`: one row per live item, columns renamed by the table's "
                f"mapping file. Due by {settings.fresh_by:%H:%M} London time for the day just ended."
            ),
            metadata={
                "dagster/table_name": catalog.table_name(REFINED, query.slug, table_slug(query.request.file_name))
            },
            owners=list(settings.owners),
            tags=settings.tags,
            freshness_policy=settings.freshness,
            deps=[
                dg.AssetDep(raw_key(query.slug)),
                dg.AssetDep(key, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
            ],
            check_specs=specs,
            backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=days_per_run),
            pool=snapshot_pool(query.slug),
            op_tags={SNAPSHOT_TAG: "spark"},
            # A ranged run reports each day as it commits it, so a failure leaves the days before it
            # materialized; the output, which Dagster would turn into a materialization of every day
            # of the range once the run ends, is left out.
            output_required=False,
        )

    def snapshot(
        context: dg.AssetExecutionContext,
        lake: LakeResource,
        mappings: MappingResource,
        catalog: CatalogResource,
        pyspark: PySparkResource,
    ) -> Iterator[
        dg.MaterializeResult | dg.AssetCheckResult | dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output
    ]:
        step = SnapshotStep(
            query=query.slug,
            mapping_names=MappingNames.of(query),
            sibling_names=sibling_names,
            lake=lake,
            mappings=mappings,
            catalog=catalog,
            spark=pyspark.spark_session,
            run_id=context.run.run_id,
            log=context.log,
            alive=runs_alive(context.instance, context.run.run_id),
        )
        if context.has_partition_key:
            yield from snapshot_one_day(step, Day.from_key(context.partition_key))
            return
        days = [Day.from_key(partition) for partition in sorted(context.partition_keys)]
        yield from snapshot_days(step, key, days, {spec.name: spec for spec in specs}, context.instance)
        # Dagster requires each selected check's output once; an AssetCheckResult would have yielded it.
        for check_key in context.selected_asset_check_keys:
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))

    return as_asset(snapshot)
