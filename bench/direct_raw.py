"""Raw days of the synthetic query written straight by Spark, for histories too long to extract a
day at a time (a year of days through the simulator and the raw asset takes longer than the
rebuild it prepares).

Day 1 is extracted by the raw asset as usual; days 2..N are made from it in one Spark job a
table. Each root item falls in one of `period` buckets by a hash of its id, and day k edits the
items of bucket k mod `period` (so about one in `period`, 0.5 % for 200): their main-table row
with its title changed, and every row of theirs in the joined tables, as an incremental export
would hold them, stamped with day k's `import_*` columns (`import_stamp`). Each day's files are
moved into a version folder of their own and committed with a manifest, as the raw asset lays
them out; the snapshots read nothing else. Unlike an extract, nothing is landed as CSV,
registered in the catalog, or checked.
"""

from __future__ import annotations

import datetime as dt
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from alloy_pipeline.assets.raw import import_stamp
from alloy_pipeline.lake import RAW, LakeResource, RawManifest
from alloy_pipeline.partitions import Day
from alloy_pipeline.snapshot_merge import ITEM_ID, PRIMARY_ITEM
from alloy_pipeline.tables import read_table
from alloy_pipeline.zone import new_version

DAY_COLUMN = "_bench_day"
"""The column a table's days are written apart by (`partitionBy`), so it is in no file."""
STAGING = "_bench_direct"
"""Where in the raw zone the days are written before each moves into its version folder."""


def _stamps(spark: SparkSession, days: list[Day], requested: list[dt.datetime], period: int) -> DataFrame:
    """One row a day: its bucket, its folder name and its `import_*` columns."""
    stamps = [import_stamp(day, moment) for day, moment in zip(days, requested, strict=True)]
    names = list(stamps[0])
    schema = StructType(
        [StructField("_bucket", StringType()), StructField(DAY_COLUMN, StringType())]
        + [StructField(name, TimestampType() if name == "import_datetime" else StringType()) for name in names]
    )
    rows = [
        (str(day.date.toordinal() % period), day.compact, *(stamp[name] for name in names))
        for day, stamp in zip(days, stamps, strict=True)
    ]
    return spark.createDataFrame(rows, schema)


def write_raw_days(spark: SparkSession, lake: LakeResource, query: str, days: list[Day], period: int) -> None:
    """Raw `days` of `query` from its committed day 1, each day the items of its bucket (see above)."""
    [first] = lake.raw_manifests(query)
    requested = [first.requested_at + dt.timedelta(minutes=number) for number in range(1, len(days) + 1)]
    stamps = _stamps(spark, days, requested, period)
    rows: dict[str, dict[str, int]] = {}
    for table, entry in first.tables.items():
        key = ITEM_ID if table == first.main_table else PRIMARY_ITEM
        rows_of_day_1 = read_table(spark, entry).drop(*stamps.columns)
        if table == first.main_table:
            rows_of_day_1 = rows_of_day_1.withColumn("title", F.concat_ws(" ", "title", F.lit("(edited)")))
        bucketed = rows_of_day_1.withColumn("_bucket", F.pmod(F.xxhash64(key), F.lit(period)).cast("string"))
        edited = bucketed.join(F.broadcast(stamps), "_bucket").select(*entry.columns, DAY_COLUMN)
        edited.write.partitionBy(DAY_COLUMN).mode("overwrite").parquet(lake.raw.uri_of(f"{STAGING}/{table}"))
        counted = edited.groupBy(DAY_COLUMN).count().collect()
        rows[table] = {row[DAY_COLUMN]: row["count"] for row in counted}
    run_id, previous = f"bench-direct-{uuid.uuid4()}", first
    for day, moment in zip(days, requested, strict=True):
        version = new_version()
        tables = {}
        for table, entry in first.tables.items():
            folder = RAW.table_dir(query, table, day, version)
            lake.raw.move_dir(f"{STAGING}/{table}/{DAY_COLUMN}={day.compact}", folder)
            tables[table] = entry.model_copy(update={"path": lake.raw.uri_of(folder), "rows": rows[table][day.compact]})
        previous = RawManifest(
            query=query,
            day=day.date,
            version=version,
            kind="incremental",
            watermark=previous.requested_at,
            requested_at=moment,
            task_id=f"direct-{day.compact}",
            run_id=run_id,
            main_table=first.main_table,
            tables=tables,
        )
        lake.raw.write_text(RAW.manifest_path(query, day), previous.model_dump_json())
    lake.raw.delete(STAGING)
