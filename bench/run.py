"""Benchmark: the pipeline on this machine, its steps clients of one Spark engine the bench starts.

Every step is a Spark Connect client of one long-lived engine, so what a user waits for is no
longer JVM starts but the fixed costs around the Spark work: Dagster's processes, connecting,
catalog statements, many small jobs. The bench starts an engine of its own (`harness.py`) and,
through it, measures one scenario a module:

- `daily.py`: a daily run of the example queries in `aqs_queries/` as a user runs it, day 1 and
  day 2, and per step its launch, the time around its Spark work, and the Spark work;
- `rebuild.py`: an N-day snapshot rebuild at 100k items in ranged runs, as a backfill runs them
  (in this process), against N plain Spark copies of the day-1 snapshot;
- `sizes.py`: per size (synthetic data), raw and snapshot days 1 and 2, each step in a child
  process (this script with `--phase`), with the peak RSS of the step's Python process.

Before its engine starts, it times `make demo` (`demo.py`: `alloy-pipeline demo` in a
subprocess, which starts and stops an engine of its own on port 15002), so nothing else runs
meanwhile; after it stops its engine, how soon the client notices that an export finished
(`notice.py`), and the cascade sensor's ticks over years of manifests on moto's S3
(`history.py`, no Spark). Each part's table is followed by the machine's load average before and
after it: other work on the machine slows every figure beside it.

    python bench/run.py --items 100000 1000000 3000000 --rebuild-days 365 --rebuild-raw direct \
        --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from daily import daily_tables, measure_daily_runs
from demo import demo_table, measure_demo
from harness import bench_engine, load_average, machine
from history import history_table, measure_history
from notice import measure_notice_delay, notice_table
from rebuild import RAW_DAYS, measure_rebuild, rebuild_table, rebuild_title
from sizes import measure_size, run_phase, sizes_table

PARTS = ("daily", "demo", "rebuild", "sizes", "notice", "history")
DEFAULTS = {
    "rebuild_items": 100_000,
    "rebuild_days": 30,
    "edit_percent": 0.5,
    "rebuild_raw": "extract",
    "history_queries": 20,
    "history_years": 3,
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000], help="the sizes measured per size")
    parser.add_argument("--rebuild-items", type=int, help="the size of the ranged rebuild")
    parser.add_argument("--rebuild-days", type=int, help="the days the ranged rebuild covers")
    parser.add_argument("--edit-percent", type=float, help="items edited a day in the rebuild")
    parser.add_argument(
        "--rebuild-raw", choices=RAW_DAYS, help="raw days 2..N: extracted a run each, or written directly by Spark"
    )
    parser.add_argument("--history-queries", type=int, help="the queries the cascade sensor checks")
    parser.add_argument("--history-years", type=int, help="the years of daily manifests each query has")
    parser.add_argument("--task-seconds", type=float, nargs="+", default=[3.0, 20.0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    parser.add_argument("--write", type=Path, help="append the results to this Markdown file")
    parser.add_argument(
        "--folder", type=Path, help="work in this new folder and keep it, event logs too (default: a temporary one)"
    )
    for hidden in ("--phase", "--day", "--url", "--remote", "--workspace"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(**DEFAULTS)
    return parser.parse_args()


def _command_line(args: argparse.Namespace) -> str:
    """The command that measured this run, with the options that differ from their defaults."""
    shown = ["python bench/run.py", "--items", *map(str, args.items)]
    rebuild = ("rebuild_items", "rebuild_days", "edit_percent")
    if any(getattr(args, name) != DEFAULTS[name] for name in rebuild):
        shown += ["--rebuild-items", str(args.rebuild_items), "--rebuild-days", str(args.rebuild_days)]
        shown += ["--edit-percent", f"{args.edit_percent:g}"]
    for name in ("rebuild_raw", "history_queries", "history_years"):
        if getattr(args, name) != DEFAULTS[name]:
            shown += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if list(args.parts) != list(PARTS):
        shown += ["--parts", *args.parts]
    return " ".join(shown)


def _measure(args: argparse.Namespace, root: Path) -> Iterator[tuple[str, str]]:
    """Each part asked for, as a title and a Markdown table, printed as soon as it is measured.

    The demo runs first, before the bench's engine starts, so nothing else runs while it is
    timed; everything else but the notice delay and the sensor's ticks runs through the bench's engine.
    """
    if "demo" in args.parts:
        print("timing `alloy-pipeline demo` (its own engine) ...", flush=True)
        yield "`make demo`, its engine's start included", demo_table(measure_demo(root / "demo"))
    print("starting the bench's Spark engine ...", flush=True)
    with bench_engine(root / "engine") as bench:
        if "daily" in args.parts:
            print("timing a daily run of the example queries ...", flush=True)
            runs = measure_daily_runs(bench, root / "daily")
            yield "A daily run of the example queries (`dagster asset materialize`, engine up)", daily_tables(runs)
        if "rebuild" in args.parts:
            days, items = args.rebuild_days, args.rebuild_items
            print(f"timing a {days}-day snapshot rebuild at {items:,} items ...", flush=True)
            rebuild = measure_rebuild(bench, root / "rebuild", items, days, args.edit_percent, args.rebuild_raw)
            yield rebuild_title(rebuild), rebuild_table(rebuild)
        if "sizes" in args.parts:
            rows = []
            for n_items in args.items:
                print(f"measuring {n_items:,} items ...", flush=True)
                rows.append(measure_size(bench, root / f"size-{n_items}", n_items))
            yield "Per size, each step a child process", sizes_table(rows)
    if "notice" in args.parts:
        delays = {task: measure_notice_delay(task) for task in args.task_seconds}
        yield "Finished exports noticed", notice_table(delays)
    if "history" in args.parts:
        queries, years = args.history_queries, args.history_years
        print(f"timing the cascade sensor over {queries} queries × {years} years of manifests ...", flush=True)
        history = measure_history(queries, years)
        yield (
            f"The cascade sensor over {years} years of manifests of {queries} queries, on S3 (moto)",
            history_table(history),
        )


def main() -> None:
    args = _arguments()
    if args.phase:
        run_phase(args)
        return
    text = f"\n## Run of {dt.date.today().isoformat()}, one Spark engine ({machine()})\n\n`{_command_line(args)}`\n"
    with ExitStack() as stack:
        folder = args.folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alloy-bench-")))
        before = load_average()
        for title, table in _measure(args, folder):
            after = load_average()
            section = f"\n### {title}\n\n{table}\n\nLoad average (1 / 5 / 15 min): {before} before, {after} after.\n"
            before = after
            print(section, flush=True)
            text += section
    if args.write:
        with args.write.open("a") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
