"""Benchmark: the pipeline at council scale against the simulator, on this machine.

For each size N it measures, in one run: the day-1 raw extract (wall time and the peak RSS of the
Python process doing it), the day-1 snapshot, the day-2 raw extract and snapshot after 5 % of the
items changed, and, as the baseline, a plain Spark read-and-write of the day-1 snapshot in the
same Spark session as the day-2 snapshot (after one warm-up copy), and the day-2 snapshot once
more in that session (a rebuild of the same day, with the JIT warm for its code paths too). It also measures how soon a finished export is
noticed. Each pipeline step runs in a child process so its peak RSS is its own.

    python bench/run.py --items 100000 1000000 3000000 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUERY = "synthetic_records"
DAY1, DAY2 = "2024-03-01", "2024-03-02"
API_KEY = "bench-key"


# ----------------------------------------------------------------------------- child process side


def _phase(args: argparse.Namespace) -> None:
    """Materialise one asset partition and print what it took as JSON on the last line."""
    import dagster as dg
    from dagster_pyspark import PySparkResource

    from alloy_pipeline.alloy.client import AlloyApi
    from alloy_pipeline.aqs import load_queries
    from alloy_pipeline.catalog import Catalog
    from alloy_pipeline.definitions import build_query_definitions, daily_partitions
    from alloy_pipeline.lake import Lake
    from alloy_pipeline.mapping import MappingFiles
    from alloy_pipeline.spark import LOCAL_SPARK_CONFIG

    lake = Lake(raw_zone=f"{args.lake}/raw", refined_zone=f"{args.lake}/refined")
    [query] = load_queries(Path(args.aqs))
    assets = build_query_definitions(query, daily_partitions("2024-01-01")).assets
    pyspark = PySparkResource(spark_config={})
    resources = {
        "alloy": AlloyApi(base_url=args.url, api_key=API_KEY),
        "lake": lake,
        "mappings": MappingFiles(location=f"{args.lake}/mappings"),
        "catalog": Catalog(backend="spark", metastore=None),
        "pyspark": pyspark,
    }
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.config(map=LOCAL_SPARK_CONFIG).getOrCreate()

    def plain_copy() -> float:
        previous = next(m for m in lake.snapshot_manifests(QUERY) if m.day.isoformat() == DAY1)
        copy_started = time.perf_counter()
        for table, entry in previous.tables.items():
            spark.read.parquet(entry.path).write.mode("overwrite").parquet(f"{args.lake}/plain-copy/{table}")
        return time.perf_counter() - copy_started

    def materialize() -> tuple[float, dg.ExecuteInProcessResult]:
        started = time.perf_counter()
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                assets,
                selection=dg.AssetSelection.groups(f"alloy_{args.phase}"),
                partition_key=args.day,
                resources=resources,
                instance=instance,
                run_config=quiet,
            )
        return time.perf_counter() - started, result

    if args.baseline:
        plain_copy()  # warms the JVM up, so the copy is not charged for starting it
    seconds, result = materialize()
    figures: dict[str, float] = {"seconds": seconds}
    [materialization] = result.get_asset_materialization_events()
    metadata = materialization.materialization.metadata
    figures["rows"] = metadata["dagster/row_count"].value
    if args.phase == "raw":
        figures["wait_seconds"] = metadata["wait_seconds"].value
        figures["download_seconds"] = metadata["download_seconds"].value
        figures["convert_seconds"] = metadata["convert_seconds"].value
    if args.baseline:
        figures["plain_copy_seconds"] = plain_copy()
        figures["rebuilt_seconds"] = materialize()[0]
    print(json.dumps(figures))


# ---------------------------------------------------------------------------- parent process side


@dataclass
class Step:
    seconds: float
    peak_rss_mb: float
    figures: dict[str, float]


def _run_phase(phase: str, day: str, url: str, lake: Path, aqs: Path, baseline: bool = False) -> Step:
    command = [
        sys.executable, __file__, "--phase", phase, "--day", day, "--url", url, "--lake", str(lake), "--aqs", str(aqs)
    ] + (["--baseline"] if baseline else [])
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    output = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{phase} {day} failed:\n{output[-3000:]}")
    return Step(time.perf_counter() - started, usage.ru_maxrss / 1024, json.loads(output.strip().splitlines()[-1]))


def measure_size(n_items: int) -> dict[str, float]:
    from alloy_pipeline.alloy.simulator import SYNTHETIC_ROOT, AlloySimulator, synthetic_dataset, synthetic_request

    with tempfile.TemporaryDirectory(prefix="alloy-bench-") as folder:
        root = Path(folder)
        aqs = root / "aqs"
        aqs.mkdir()
        (aqs / "Synthetic Records.json").write_text(json.dumps(synthetic_request()))
        with AlloySimulator(dataset=synthetic_dataset(n_items), api_key=API_KEY) as simulator:
            raw1 = _run_phase("raw", DAY1, simulator.url, root / "lake", aqs)
            snap1 = _run_phase("snapshot", DAY1, simulator.url, root / "lake", aqs)
            simulator.dataset.edit(SYNTHETIC_ROOT, max(1, n_items * 5 // 100))
            raw2 = _run_phase("raw", DAY2, simulator.url, root / "lake", aqs)
            snap2 = _run_phase("snapshot", DAY2, simulator.url, root / "lake", aqs, baseline=True)
    return {
        "items": n_items,
        "raw1_s": raw1.figures["seconds"],
        "raw1_wait_s": raw1.figures["wait_seconds"],
        "raw1_download_s": raw1.figures["download_seconds"],
        "raw1_convert_s": raw1.figures["convert_seconds"],
        "raw1_rss_mb": raw1.peak_rss_mb,
        "snapshot1_s": snap1.figures["seconds"],
        "raw2_s": raw2.figures["seconds"],
        "raw2_rows": raw2.figures["rows"],
        "raw2_rss_mb": raw2.peak_rss_mb,
        "snapshot2_s": snap2.figures["seconds"],
        "plain_copy_s": snap2.figures["plain_copy_seconds"],
        "snapshot2_rebuilt_s": snap2.figures["rebuilt_seconds"],
    }


def measure_notice_delay(task_seconds: float) -> float:
    """Seconds between a task completing in the simulator and the client noticing it."""
    import logging

    from alloy_pipeline.alloy.client import AlloyClient
    from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
    from alloy_pipeline.aqs import load_query

    request = load_query(REPO / "aqs_queries" / "Gully Inspections.json").request
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, task_seconds=task_seconds) as simulator:
        with AlloyClient(simulator.url, API_KEY, logger=logging.getLogger("bench")) as client:
            started = time.monotonic()
            task_id = client.start_export(request)
            client.wait_for(task_id)
            return time.monotonic() - started - task_seconds


def _table(rows: list[dict[str, float]], delays: dict[float, float]) -> str:
    lines = [
        "| items | raw day 1 (s) | of which wait / download / Spark (s) | raw day 1 peak RSS (MB) "
        "| snapshot day 1 (s) | raw day 2, 5 % changed (s) | raw day 2 peak RSS (MB) "
        "| snapshot day 2, first / rebuilt (s) | plain Spark copy (s) | day 2 / copy, first / rebuilt |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['items']:,} | {row['raw1_s']:.1f} | {row['raw1_wait_s']:.1f} / {row['raw1_download_s']:.1f} / "
            f"{row['raw1_convert_s']:.1f} | {row['raw1_rss_mb']:.0f} | {row['snapshot1_s']:.1f} | {row['raw2_s']:.1f} "
            f"| {row['raw2_rss_mb']:.0f} | {row['snapshot2_s']:.1f} / {row['snapshot2_rebuilt_s']:.1f} "
            f"| {row['plain_copy_s']:.1f} | {row['snapshot2_s'] / row['plain_copy_s']:.2f}× / "
            f"{row['snapshot2_rebuilt_s'] / row['plain_copy_s']:.2f}× |"
        )
    lines += ["", "| export task takes (s) | noticed after completion (s) |", "|---:|---:|"]
    lines += [f"| {task:g} | {delay:.2f} |" for task, delay in delays.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--task-seconds", type=float, nargs="+", default=[3.0, 20.0])
    parser.add_argument("--write", type=Path, help="append the results to this Markdown file")
    parser.add_argument("--phase", choices=["raw", "snapshot"], help=argparse.SUPPRESS)
    parser.add_argument("--day", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--aqs", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _phase(args)
        return

    rows = []
    for n_items in args.items:
        print(f"measuring {n_items:,} items ...", flush=True)
        rows.append(measure_size(n_items))
        print(json.dumps(rows[-1]), flush=True)
    delays = {task: measure_notice_delay(task) for task in args.task_seconds}
    table = _table(rows, delays)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    report = (
        f"\n## Run of {dt.date.today().isoformat()} ({machine})\n\n"
        f"`python bench/run.py --items {' '.join(map(str, args.items))}`\n\n{table}\n"
    )
    print(report)
    if args.write:
        with args.write.open("a") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
