"""Raw-extract assets: one per AQS file, one partition per London day.

A partition lands the export's CSVs as received, converts each to parquet with the `import_*`
columns, and is published as a new version of the day (`publication.py`).
"""

import datetime as dt
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.sql import Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from alloy_pipeline.alloy.client import AlloyResource, Export
from alloy_pipeline.aqs import AqsQuery
from alloy_pipeline.assets.metadata import table_schema
from alloy_pipeline.assets.publication import Publisher, runs_alive
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.columns import KEY_COLUMN, name_columns, read_header
from alloy_pipeline.frames import conform_csv
from alloy_pipeline.lake import RAW, LakeResource, RawManifest, TableOutput, landing_dir
from alloy_pipeline.naming import raw_key, table_slug
from alloy_pipeline.partitions import Day
from alloy_pipeline.pools import ALLOY_POOL
from alloy_pipeline.query_settings import QuerySettings
from alloy_pipeline.tables import read_table, run_together
from alloy_pipeline.zone import Zone

EXPORT_TAG = "alloy_pipeline/export"
"""Op tag on every raw asset; the executor limits how many such steps of one run run at once."""
ROW_COUNT_CHECK = "row_count_matches_alloy"
UNIQUE_ITEM_ID_CHECK = "unique_item_id"
_EXAMPLES = 5


class RawExtractConfig(dg.Config):
    full_refresh: bool = Field(
        default=False,
        description="Export every item instead of only those edited since the previous extract.",
    )
    overlap_minutes: int = Field(
        default=60,
        ge=0,
        description="Safety overlap subtracted from the previous extract's request time.",
    )


@dataclass(frozen=True)
class ExtractWindow:
    """The edits one raw partition asks Alloy for: after `after` (None: from the start, a full
    extract) and up to `until` (None: up to the request)."""

    after: dt.datetime | None
    until: dt.datetime | None

    def describe(self) -> str:
        start = "full extract" if self.after is None else f"edits since {self.after.isoformat()}"
        return start + (f", up to {self.until.isoformat()}" if self.until else "")


def extract_window(manifests: list[RawManifest], day: Day, overlap: dt.timedelta, *, full: bool) -> ExtractWindow:
    """What day `day` asks for, given the committed raw partitions.

    `after` is the previous partition's bound (its request time, unless it was itself bounded)
    minus `overlap`. A day with later partitions is bounded: a re-run must not bring values first
    seen after its own day into it and, through the cascade, into the days after it. It asks for
    edits up to the bound of its own earlier extract or, when it was never extracted, up to where
    the next partition's window starts. An item edited again after the bound is left to the
    later day that extracted it. A full extract is never bounded: it cannot tell an item edited
    since the bound from one deleted, and would drop it from every later snapshot.
    """
    earlier = [manifest for manifest in manifests if manifest.day < day.date]
    later = sorted((manifest for manifest in manifests if manifest.day > day.date), key=lambda manifest: manifest.day)
    after = None if full or not earlier else max(earlier, key=lambda manifest: manifest.day).covered_until - overlap
    if after is None or not later:
        return ExtractWindow(after, None)
    own = next((manifest for manifest in manifests if manifest.day == day.date), None)
    until = own.covered_until if own else later[0].watermark or later[0].covered_until
    return ExtractWindow(after, until)


def import_stamp(day: Day, requested_at: dt.datetime) -> dict[str, str | dt.datetime]:
    """The `import_*` columns as the old Glue jobs wrote them, so analysts' SQL keeps working: the
    partition's day as strings, `import_datetime` a timestamp and `import_timestamp` a string of
    epoch seconds (Python's `str(datetime.timestamp())`), both when the export was requested.

    The timestamp stays time-zone aware: Spark reads a naive datetime in the client's local
    time zone, so a step on a machine outside UTC would shift it.
    """
    moment = requested_at.astimezone(dt.UTC)
    return {**day.fields("import"), "import_datetime": moment, "import_timestamp": str(moment.timestamp())}


def _tables_by_slug(query: AqsQuery, export: Export) -> dict[str, Path]:
    tables: dict[str, Path] = {}
    for csv_file in export.csv_files:
        slug = table_slug(csv_file.name)
        if slug in tables:
            raise ValueError(
                f"query {query.slug}: export {export.task_id} holds {tables[slug].name} and "
                f"{csv_file.name}, which both give the table name '{slug}'"
            )
        tables[slug] = csv_file
    return tables


_GLOB_CHARACTERS = re.compile(r"([\\\[\]{}*?])")


def glob_literal(uri: str) -> str:
    """`uri` with Hadoop's glob characters escaped: Spark globs every path it reads, so a CSV named
    `Job [2024].csv` would match `Job 2.csv`, or nothing (Spark Connect ignores the option that
    turns globbing off)."""
    return _GLOB_CHARACTERS.sub(r"\\\1", uri)


def _text_columns(count: int) -> StructType:
    """`count` string columns, named by position: the header is read in Python (`read_header`),
    so Spark need not run a job to read it, and a row of another width fails the read."""
    return StructType([StructField(f"_c{index}", StringType()) for index in range(count)])


def _convert_table(
    spark: SparkSession,
    zone: Zone,
    *,
    query: str,
    day: Day,
    version: str,
    table: str,
    csv_file: Path,
    stamp: dict[str, str | dt.datetime],
    staging: str,
) -> TableOutput:
    """Land one CSV under `staging` as received and write its parquet beside it; an error names the file."""
    landed = f"{staging}/csv/{csv_file.name}"
    zone.upload(csv_file, landed)
    try:
        names = name_columns(read_header(csv_file))
        frame = spark.read.csv(
            glob_literal(zone.uri_of(landed)),
            schema=_text_columns(len(names.columns)),
            header=True,
            multiLine=True,
            quote='"',
            escape='"',
            encoding="UTF-8",
            mode="FAILFAST",
        )
        conformed = conform_csv(frame, list(names.columns), stamp)
        written = Observation()
        conformed.observe(written, F.count(F.lit(1)).alias("rows")).write.mode("overwrite").parquet(
            zone.uri_of(f"{staging}/parquet/{table}")
        )
        rows = written.get["rows"]
    except Exception as error:
        raise RuntimeError(f"query {query}, partition {day.key}: converting {csv_file.name} failed: {error}") from error
    return TableOutput(
        path=zone.uri_of(RAW.table_dir(query, table, day, version)),
        rows=rows,
        column_types=tuple(conformed.dtypes),
        source_file=csv_file.name,
        renamed_headers=names.renamed,
    )


def convert_tables(
    spark: SparkSession,
    lake: LakeResource,
    *,
    query: str,
    day: Day,
    version: str,
    tables: dict[str, Path],
    stamp: dict[str, str | dt.datetime],
    staging: str,
) -> dict[str, TableOutput]:
    """Land each CSV under `staging` as received, then write its parquet there; return what was staged.

    The tables are converted together (`run_together`): a CSV whose cells may hold newlines is
    parsed by one task, so one table alone keeps one core busy. Each table's `path` is where the
    commit will put it: its folder of version `version`.
    """
    return run_together(
        {
            table: partial(
                _convert_table,
                spark,
                lake.raw,
                query=query,
                day=day,
                version=version,
                table=table,
                csv_file=csv_file,
                stamp=stamp,
                staging=staging,
            )
            for table, csv_file in tables.items()
        }
    )


def raw_check_specs(key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """The raw asset's checks, evaluated per day: partitioned like the asset, as the snapshot's are, so
    each evaluation is recorded on its day and against that day's materialization.

    Neither blocks: when they run, the partition is already committed as Alloy sent it, and the
    snapshot's own blocking `unique_item_id` check keeps a repeated item out of the merge. Both are
    errors: a day that fails one is not what Alloy holds.
    """
    with warnings.catch_warnings():
        # A preview feature, used knowingly with dagster pinned (as in the snapshot's checks).
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                ROW_COUNT_CHECK,
                asset=key,
                description=(
                    "Main-table rows equal the root items Alloy reported processing (the finished task's "
                    "processState), so no row was lost or added between Alloy and the lake. Passes, saying so, "
                    "when Alloy reported no count: a missing count is no evidence of a wrong extract. "
                    "Non-blocking: the partition is already committed as received."
                ),
                partitions_def=partitions,
            ),
            dg.AssetCheckSpec(
                UNIQUE_ITEM_ID_CHECK,
                asset=key,
                description=(
                    "Every main-table row as committed has an item_id, and none repeats: the snapshot upserts by "
                    "it. Non-blocking: the partition is already committed as received, and the snapshot's own "
                    "blocking unique_item_id check keeps a repeated item out of the merge."
                ),
                partitions_def=partitions,
            ),
        ]


def row_count_check(rows: int, export: Export) -> dg.AssetCheckResult:
    """`rows` (the main table as written) against the root items Alloy said the export processed.

    Alloy counts the export's root items, and the main table holds one row per root item (joined
    tables hang several rows from one), so only the main table is compared.
    """
    return dg.AssetCheckResult(
        check_name=ROW_COUNT_CHECK,
        passed=export.processed is None or rows == export.processed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None
        if export.processed is not None
        else f"Alloy reported no processed count for task {export.task_id}: nothing to compare",
        metadata={"rows": rows, "alloy_processed": export.processed, "alloy_total": export.total},
    )


def unique_item_id_check(spark: SparkSession, main: TableOutput) -> dg.AssetCheckResult:
    """Whether `main`, read back from where the commit put it, has one row per `item_id`.

    It measures the committed files, not what the conversion meant to write. Every raw
    materialization pays for one query: the rows without an id and the repeated ids, sorted, two
    more than the examples it names. Only a day with that many repeats pays a second, to count them.
    """
    per_id = read_table(spark, main).groupBy(KEY_COLUMN).count()
    found = (
        per_id.where(F.col(KEY_COLUMN).isNull() | (F.col("count") > 1))
        .orderBy(F.col(KEY_COLUMN).asc_nulls_first())
        .limit(_EXAMPLES + 2)
        .collect()
    )
    missing = sum(row["count"] for row in found if row[KEY_COLUMN] is None)
    repeated = [row[KEY_COLUMN] for row in found if row[KEY_COLUMN] is not None]
    duplicated = len(repeated)
    if len(found) == _EXAMPLES + 2:
        duplicated = per_id.where(F.col(KEY_COLUMN).isNotNull() & (F.col("count") > 1)).count()
    return dg.AssetCheckResult(
        check_name=UNIQUE_ITEM_ID_CHECK,
        passed=duplicated == 0 and missing == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rows": main.rows,
            "duplicated_item_ids": duplicated,
            "examples": dg.MetadataValue.json(repeated[:_EXAMPLES]),
            "rows_without_item_id": missing,
        },
    )


def build_raw_asset(
    query: AqsQuery,
    partitions: dg.PartitionsDefinition,
    *,
    settings: QuerySettings | None = None,
    catalog: CatalogResource | None = None,
) -> dg.AssetsDefinition:
    """The raw-extract asset of one AQS query, with the owners and tags of its `settings` and its
    main table's name in `catalog`."""
    settings, catalog = settings or QuerySettings(), catalog or CatalogResource()
    main_table = table_slug(query.request.file_name)

    @dg.asset(
        key=raw_key(query.slug),
        partitions_def=partitions,
        group_name="alloy_raw",
        kinds={"spark", "parquet"},
        pool=ALLOY_POOL,
        op_tags={EXPORT_TAG: "alloy"},
        description=(
            f"Alloy export of `{query.path.name}` landed as CSV and parquet, one partition per day. A day's row "
            "count is its extract's: every item on a full extract, only the items edited since the previous "
            "extract on an incremental one. The snapshot holds the whole table."
        ),
        metadata={
            "dagster/table_name": catalog.table_name(RAW, query.slug, main_table),
            "aqs_file": dg.MetadataValue.path(str(query.path)),
            "main_table": main_table,
        },
        owners=list(settings.owners),
        tags=settings.tags,
        check_specs=raw_check_specs(raw_key(query.slug), partitions),
    )
    def raw_extract(
        context: dg.AssetExecutionContext,
        config: RawExtractConfig,
        alloy: AlloyResource,
        lake: LakeResource,
        catalog: CatalogResource,
        pyspark: PySparkResource,
    ) -> dg.MaterializeResult:
        day = Day.from_key(context.partition_key)
        publisher = Publisher(
            lake,
            catalog,
            pyspark.spark_session,
            RAW,
            query.slug,
            context.log,
            runs_alive(context.instance, context.run.run_id),
        )
        publisher.recover()
        window = extract_window(
            lake.raw_manifests(query.slug, replacing=(day,)),
            day,
            dt.timedelta(minutes=config.overlap_minutes),
            full=config.full_refresh,
        )
        request = query.request.edited(after=window.after, until=window.until)
        context.log.info(f"{query.slug} {day.key}: {window.describe()}")
        commit = publisher.begin(day, context.run.run_id)
        try:
            with tempfile.TemporaryDirectory(prefix=f"alloy-{query.slug}-") as workdir:
                export = alloy.export(request, Path(workdir), context.log)
                started = time.monotonic()
                tables = _tables_by_slug(query, export)
                if main_table not in tables:
                    raise RuntimeError(f"query {query.slug}: export {export.task_id} has no {query.request.file_name}")
                outputs = convert_tables(
                    pyspark.spark_session,
                    lake,
                    query=query.slug,
                    day=day,
                    version=commit.version,
                    tables=tables,
                    stamp=import_stamp(day, export.requested_at),
                    staging=commit.staging,
                )
        except BaseException:
            commit.abandon()
            raise
        convert_seconds = time.monotonic() - started
        manifest = RawManifest(
            query=query.slug,
            day=day.date,
            version=commit.version,
            kind="full" if window.after is None else "incremental",
            watermark=window.after,
            extracted_until=window.until,
            requested_at=export.requested_at,
            task_id=export.task_id,
            run_id=context.run.run_id,
            main_table=main_table,
            tables=outputs,
        )
        moves = {f"{commit.staging}/csv": landing_dir(query.slug, day, commit.version)} | {
            f"{commit.staging}/parquet/{table}": RAW.table_dir(query.slug, table, day, commit.version)
            for table in outputs
        }
        publisher.publish(commit, manifest, moves)
        checks = [
            row_count_check(outputs[main_table].rows, export),
            unique_item_id_check(pyspark.spark_session, outputs[main_table]),
        ]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": outputs[main_table].rows,
                "dagster/table_name": catalog.table_name(RAW, query.slug, main_table),
                "dagster/column_schema": table_schema(outputs[main_table]),
                "extract_kind": manifest.kind,
                "watermark": window.after.isoformat() if window.after else "none (full extract)",
                "extracted_until": window.until.isoformat() if window.until else "the request",
                "task_id": export.task_id,
                "requested_at": export.requested_at.isoformat(),
                "rows": dg.MetadataValue.json({table: output.rows for table, output in outputs.items()}),
                "columns": dg.MetadataValue.json({table: list(output.columns) for table, output in outputs.items()}),
                "paths": dg.MetadataValue.json({table: output.path for table, output in outputs.items()}),
                "landed_csv": dg.MetadataValue.path(lake.raw.uri_of(landing_dir(query.slug, day, commit.version))),
                "archive_bytes": export.archive_bytes,
                "wait_seconds": round(export.wait_seconds, 2),
                "download_seconds": round(export.download_seconds, 2),
                "convert_seconds": round(convert_seconds, 2),
            },
            check_results=checks,
        )

    return raw_extract
