"""`import_datetime` and `import_timestamp` typed as the old Glue jobs typed them, and a lake written
with the earlier types (`import_datetime` text, `import_timestamp` a timestamp) still merging."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from alloy_pipeline.frames import epoch_seconds_text
from alloy_pipeline.lake import RAW, REFINED, Layer, RawManifest, SnapshotManifest
from alloy_pipeline.partitions import Day
from alloy_pipeline.tables import read_table
from alloy_pipeline_tests.harness import Pipeline, rows_of

QUERY = "gully_inspections"
EARLIER_TYPES = {"import_datetime": "string", "import_timestamp": "timestamp"}


def test_epoch_text_is_what_python_writes(spark: SparkSession) -> None:
    moments = [
        dt.datetime(2024, 3, 1, 3, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, 3, 0, 0, 500000, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, 3, 0, 7, 123456, tzinfo=dt.UTC),
        dt.datetime(2031, 12, 31, 23, 59, 59, 10, tzinfo=dt.UTC),
    ]
    frame = spark.createDataFrame([(moment,) for moment in moments], "moment timestamp")
    texts = [row[0] for row in frame.select(epoch_seconds_text(F.col("moment"))).collect()]
    assert texts == [str(moment.timestamp()) for moment in moments]


def _as_written_before(pipeline: Pipeline, layer: Layer, manifest: RawManifest | SnapshotManifest) -> None:
    """Rewrite a committed partition the way the earlier pipeline wrote it: its tables with the
    earlier `import_*` types under a folder of their own, and a manifest recording those types."""
    tables = {}
    for table, entry in manifest.tables.items():
        earlier = read_table(pipeline.spark, entry).withColumns(
            {
                "import_datetime": F.date_format("import_datetime", "yyyy-MM-dd HH:mm:ss"),
                "import_timestamp": F.timestamp_micros(
                    (F.col("import_timestamp").cast("decimal(20,6)") * 1_000_000).cast("long")
                ),
            }
        )
        path = f"{entry.path.rstrip('/')}_earlier"
        earlier.write.parquet(path)
        types = tuple((name, EARLIER_TYPES.get(name, kind)) for name, kind in entry.column_types)
        assert types == tuple(earlier.dtypes)
        tables[table] = entry.model_copy(update={"path": path, "column_types": types})
    rewritten = manifest.model_copy(update={"tables": tables})
    pipeline.lake.zone(layer).write_text(
        layer.manifest_path(manifest.query, Day(manifest.day)), rewritten.model_dump_json()
    )


def test_types_in_the_raw_parquet_and_a_snapshot_over_earlier_and_current_days(pipeline: Pipeline) -> None:
    pipeline.keep_only("Gully Inspections")
    pipeline.run("2024-03-01")
    raw = pipeline.raw_manifest(QUERY, "2024-03-01")
    assert raw is not None
    types = dict(raw.tables[QUERY].column_types)
    assert (types["import_datetime"], types["import_timestamp"]) == ("timestamp", "string")
    stamps = pipeline.raw_table(QUERY, QUERY, "2024-03-01").select(
        F.unix_micros("import_datetime").alias("micros"), "import_timestamp"
    )
    [stamp] = stamps.distinct().collect()
    requested = raw.requested_at.astimezone(dt.UTC)
    assert stamp["micros"] == (requested - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert dt.datetime.fromtimestamp(float(stamp["import_timestamp"]), dt.UTC) == requested
    day_one = rows_of(pipeline.snapshot_table(QUERY, QUERY, "2024-03-01"), ("import_datetime",))

    snapshot = pipeline.snapshot_manifest(QUERY, "2024-03-01")
    assert snapshot is not None
    _as_written_before(pipeline, RAW, raw)
    _as_written_before(pipeline, REFINED, snapshot)
    pipeline.simulator.dataset.simulate_day(seed=1)
    pipeline.run("2024-03-02")

    day_two = pipeline.snapshot_manifest(QUERY, "2024-03-02")
    assert day_two is not None and day_two.carried_forward > 0
    assert dict(day_two.tables[QUERY].column_types)["import_datetime"] == "timestamp"
    carried = pipeline.snapshot_table(QUERY, QUERY, "2024-03-02").where(F.col("import_date") == "20240301")
    carried_stamps = carried.select(F.unix_micros("import_datetime").alias("micros"), "import_timestamp")
    [carried_stamp] = carried_stamps.distinct().collect()
    assert carried_stamp["import_timestamp"] == stamp["import_timestamp"], "epoch text reads back exactly"
    assert carried_stamp["micros"] == stamp["micros"] // 1_000_000 * 1_000_000, "the earlier text held whole seconds"

    pipeline.rebuild("2024-03-01", "2024-03-02")
    rebuilt = pipeline.snapshot_table(QUERY, QUERY, "2024-03-01")
    assert rows_of(rebuilt, ("import_datetime",)) == day_one, "rebuilt from the earlier raw day"
