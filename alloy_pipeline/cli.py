"""`alloy-pipeline`: the demo (the real pipeline against the local Alloy simulator) and friends."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.lake import Lake, SnapshotManifest
from alloy_pipeline.schedules import LONDON

DEMO_API_KEY = "demo-key"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _demo_days(count: int) -> list[str]:
    """The `count` London days that end yesterday: the newest partitions a schedule would run."""
    from zoneinfo import ZoneInfo

    yesterday = dt.datetime.now(ZoneInfo(LONDON)).date() - dt.timedelta(days=1)
    return [(yesterday - dt.timedelta(days=offset)).isoformat() for offset in reversed(range(count))]


def _snapshot_rows(spark: object, lake: Lake, query: str, day: dt.date) -> dict[str, list[tuple]]:
    manifest = next(m for m in lake.snapshot_manifests(query) if m.day == day)
    return {
        table: sorted(tuple(map(str, row)) for row in spark.read.parquet(entry.path).collect())  # type: ignore[attr-defined]
        for table, entry in manifest.tables.items()
    }


def _print_day(lake: Lake, queries: list[str], day: str) -> None:
    for query in queries:
        raw = next(m for m in lake.raw_manifests(query) if m.day.isoformat() == day)
        snapshot: SnapshotManifest = next(m for m in lake.snapshot_manifests(query) if m.day.isoformat() == day)
        print(f"  {query}: raw {raw.kind}, snapshot +{snapshot.inserted} new, {snapshot.replaced} replaced")
        for table, entry in raw.tables.items():
            print(f"    raw      {table:<28} {entry.rows:>6} rows  {entry.path}")
        for table, entry in snapshot.tables.items():
            print(f"    snapshot {table:<28} {entry.rows:>6} rows  {entry.path}")


def demo(data: Path, days: int) -> int:
    """Run the real pipeline for `days` consecutive days against the simulator, then rebuild."""
    from alloy_pipeline.definitions import build_definitions

    data = data.resolve()
    for stale in ("raw-zone", "refined-zone", "dagster_home"):
        shutil.rmtree(data / stale, ignore_errors=True)
    (data / "dagster_home").mkdir(parents=True)
    keys = _demo_days(days)
    with AlloySimulator(dataset=demo_dataset(), api_key=DEMO_API_KEY) as simulator, _environment(
        {
            "ALLOY_API_URL": simulator.url,
            "ALLOY_API_KEY": DEMO_API_KEY,
            "ALLOY_RAW_ZONE": str(data / "raw-zone"),
            "ALLOY_REFINED_ZONE": str(data / "refined-zone"),
            "ALLOY_PARTITIONS_START": keys[0],
            "DAGSTER_HOME": str(data / "dagster_home"),
        }
    ):
        definitions = build_definitions()
        lake = Lake(raw_zone=str(data / "raw-zone"), refined_zone=str(data / "refined-zone"))
        queries = sorted(key.path[-1] for key in definitions.resolve_all_asset_keys() if key.path[1] == "raw")
        daily = definitions.resolve_job_def("alloy_daily")
        instance = dg.DagsterInstance.get()
        print(f"Alloy simulator at {simulator.url}; lake under {data}")
        for number, day in enumerate(keys):
            if number:
                changes = simulator.simulate_day(seed=number)
                print(f"\nSimulated a day of edits in Alloy: {changes}")
            print(f"\nDay {day}: materialising raw and snapshot assets")
            daily.execute_in_process(partition_key=day, instance=instance)
            _print_day(lake, queries, day)

        from pyspark.sql import SparkSession

        spark = SparkSession.builder.getOrCreate()
        before = {(query, day): _snapshot_rows(spark, lake, query, dt.date.fromisoformat(day)) for query in queries for day in keys}
        print(f"\nRebuilding every snapshot from {keys[0]} to {keys[-1]} in date order (a backfill)")
        snapshots = dg.AssetSelection.groups("alloy_snapshot")
        for day in keys:
            dg.materialize(
                [definitions.resolve_assets_def(key) for key in definitions.resolve_all_asset_keys()],
                selection=snapshots,
                partition_key=day,
                instance=instance,
                resources=definitions.resources,
            )
        after = {(query, day): _snapshot_rows(spark, lake, query, dt.date.fromisoformat(day)) for query in queries for day in keys}
        identical = before == after
        print("Rebuilt snapshots are " + ("identical to the originals." if identical else "DIFFERENT from the originals!"))
    print(
        "\nBrowse the runs, partitions and metadata in the Dagster UI:\n"
        f"  DAGSTER_HOME={data / 'dagster_home'} ALLOY_PARTITIONS_START={keys[0]} make dev\n"
        "then open http://127.0.0.1:3000"
    )
    return 0 if identical else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alloy-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the pipeline for a few days against the local simulator")
    demo_parser.add_argument("--data", type=Path, default=Path("data"), help="folder for the demo lake (wiped first)")
    demo_parser.add_argument("--days", type=int, default=3, help="consecutive days to materialise")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.data, args.days)
    return 2


if __name__ == "__main__":
    sys.exit(main())
