"""Per size N of the synthetic query, each step in a child process, so its peak RSS is that client's own.

The day-1 raw extract (wall time, split into wait / download / Spark, and the peak RSS of the
step's Python process), the day-1 snapshot, the day-2 raw extract and snapshot after 5 % of the
items changed, a plain Spark copy of the day-1 snapshot and the day-2 snapshot once more
(rebuilt), the same day merged by DuckDB instead (`duckdb_peer.py`), and the engine's jobs during
the day-2 snapshot and the copy. The engine's own memory is not counted. A child is
`bench/run.py --phase …`, told the step by its options. Last, the day-2 snapshot as a user's
command builds it: `dagster asset materialize` of that one partition, from launch to exit, loading
the code location from the workspace's folders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from duckdb_peer import duckdb_merge
from harness import (
    API_KEY,
    BIN,
    DAY1,
    DAY2,
    REPO,
    BenchEngine,
    JobLoad,
    Window,
    clean_environment,
    engine_activity,
    event_time,
    job_load,
    timed,
    user_environment,
)
from synthetic import QUERY, Materializer, Workspace, plain_copies

from alloy_pipeline.alloy.simulator import SYNTHETIC_ROOT, AlloySimulator, synthetic_dataset
from alloy_pipeline.naming import snapshot_key
from alloy_pipeline.spark import connect_session

RUN = REPO / "bench" / "run.py"
"""The bench's script, which runs one step when given `--phase`."""


def _peak_rss_mb() -> float:
    """This process's own peak RSS, in MB.

    Not `ru_maxrss` on Linux: it keeps the RSS this process had before exec, as a fork of its
    parent, here the bench holding the simulator's data (which grows with N).
    """
    status = Path("/proc/self/status")
    if status.exists():
        [peak] = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        return int(peak) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def run_phase(args: argparse.Namespace) -> None:
    """Materialise one partition of one group and print what it took as JSON on the last line.

    With `--baseline` (the day-2 snapshot), also a plain copy of the day-1 snapshot in the same
    engine, the same day's snapshot once more (a rebuild, with the engine's caches warm), and the
    same day merged by DuckDB in this process, after its peak RSS is read: DuckDB's memory is its own.
    """
    workspace = Workspace(Path(args.workspace))
    with dg.instance_for_test() as instance:
        runs = Materializer(workspace, args.url, args.remote, instance)
        window, result = runs.run(args.phase, day=args.day)
        [materialization] = result.get_asset_materialization_events()
        metadata = materialization.materialization.metadata
        figures: dict[str, object] = {"window": [window.start, window.end], "rows": metadata["dagster/row_count"].value}
        for name in ("wait_seconds", "download_seconds", "convert_seconds"):
            if name in metadata:
                figures[name] = metadata[name].value
        if args.baseline:
            copy = plain_copies(connect_session(args.remote), workspace.snapshot(DAY1), workspace.root / "plain-copy")
            rebuilt = runs.run(args.phase, day=args.day)[0]
            figures |= {"plain_copy_window": [copy.start, copy.end], "rebuilt_window": [rebuilt.start, rebuilt.end]}
    figures["peak_rss_mb"] = _peak_rss_mb()
    if args.baseline:
        [raw] = workspace.lake.raw_manifests(QUERY, days=[dt.date.fromisoformat(DAY2)])
        merged = duckdb_merge(workspace.snapshot(DAY1), raw, workspace.root / "duckdb-merge")
        figures["duckdb_merge_window"] = [merged.start, merged.end]
    print(json.dumps(figures))


@dataclass
class Step:
    """What a child process reported."""

    figures: dict

    @property
    def peak_rss_mb(self) -> float:
        return self.figures["peak_rss_mb"]

    def window(self, name: str = "window") -> Window:
        return Window(*self.figures[name])

    @property
    def seconds(self) -> float:
        return self.window().seconds


def _in_child(phase: str, day: str, alloy_url: str, remote: str, workspace: Workspace, baseline: bool = False) -> Step:
    """A step in a child process of its own, so the peak RSS reported is that client's alone."""
    command = [
        sys.executable,
        str(RUN),
        "--phase",
        phase,
        "--day",
        day,
        "--url",
        alloy_url,
        "--remote",
        remote,
        "--workspace",
        str(workspace.root),
    ] + (["--baseline"] if baseline else [])
    errors = workspace.root / f"{phase}-{day}.stderr"
    with errors.open("w") as stderr:
        child = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO, env=clean_environment(), check=False
        )
    if child.returncode != 0:
        raise RuntimeError(f"{phase} {day} failed:\n{child.stdout[-2000:]}\n{errors.read_text()[-4000:]}")
    return Step(json.loads(child.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class Command:
    """`dagster asset materialize` of one snapshot day, in epoch seconds: launch, the run's start
    (the process, its imports, the instance, loading the code location, the run's record), its one
    step's start and end, and exit."""

    launched: float
    run_start: float
    step_start: float
    step_end: float
    exited: float

    @property
    def seconds(self) -> float:
        return self.exited - self.launched

    def __str__(self) -> str:
        parts = (self.run_start - self.launched, self.step_start - self.run_start, self.step_end - self.step_start)
        return " / ".join(f"{part:.1f}" for part in (*parts, self.exited - self.step_end))


def _snapshot_command(workspace: Workspace, day: str, alloy_url: str, remote: str) -> Command:
    """`dagster asset materialize` of the query's snapshot on `day`, as a user runs it: a new process
    that loads the code location (the workspace's folders, through the environment a user sets)
    and runs the one step in the command's own process (`build_executor`)."""
    home = workspace.root / "dagster_home"
    home.mkdir(exist_ok=True)
    environment = user_environment(workspace.root, alloy_url, remote, workspace.database) | {
        "ALLOY_RAW_ZONE": workspace.lake.raw_zone,
        "ALLOY_REFINED_ZONE": workspace.lake.refined_zone,
        "ALLOY_MAPPING_LOCATION": str(workspace.mappings),
    }
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "alloy_pipeline.definitions"]
    command += ["--select", snapshot_key(QUERY).to_user_string(), "--partition", day]
    window, completed = timed(
        lambda: subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment, check=False)
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(completed.stdout + completed.stderr)[-4000:]}")
    kinds = dg.DagsterEventType
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs(limit=1)
        records = instance.all_logs(run.run_id)
    return Command(
        launched=window.start,
        run_start=event_time(records, kinds.RUN_START),
        step_start=event_time(records, kinds.STEP_START),
        step_end=event_time(records, kinds.STEP_SUCCESS),
        exited=window.end,
    )


@dataclass(frozen=True)
class SizeRun:
    """The four steps at one size; the day-2 snapshot's step also timed a copy, a rebuild and a DuckDB merge."""

    items: int
    raw1: Step
    snapshot1: Step
    raw2: Step
    snapshot2: Step
    command: Command
    """The day-2 snapshot once more, by `dagster asset materialize`."""
    snapshot2_jobs: JobLoad
    copy_jobs: JobLoad

    @property
    def copy_seconds(self) -> float:
        return self.snapshot2.window("plain_copy_window").seconds

    @property
    def rebuilt_seconds(self) -> float:
        return self.snapshot2.window("rebuilt_window").seconds

    @property
    def duckdb_seconds(self) -> float:
        return self.snapshot2.window("duckdb_merge_window").seconds


def measure_size(bench: BenchEngine, root: Path, n_items: int) -> SizeRun:
    """Day 1 and day 2 of the synthetic query at `n_items`, each step a child process."""
    workspace = Workspace.create(root)
    with AlloySimulator(dataset=synthetic_dataset(n_items), api_key=API_KEY) as simulator:

        def phase(name: str, day: str, baseline: bool = False) -> Step:
            return _in_child(name, day, simulator.url, bench.url, workspace, baseline)

        raw1 = phase("raw", DAY1)
        snapshot1 = phase("snapshot", DAY1)
        simulator.dataset.edit(SYNTHETIC_ROOT, max(1, n_items * 5 // 100))
        raw2 = phase("raw", DAY2)
        snapshot2 = phase("snapshot", DAY2, baseline=True)
        command = _snapshot_command(workspace, DAY2, simulator.url, bench.url)
    activity = engine_activity(bench.events)
    return SizeRun(
        items=n_items,
        raw1=raw1,
        snapshot1=snapshot1,
        raw2=raw2,
        snapshot2=snapshot2,
        command=command,
        snapshot2_jobs=job_load(activity, snapshot2.window()),
        copy_jobs=job_load(activity, snapshot2.window("plain_copy_window")),
    )


def sizes_table(rows: list[SizeRun]) -> str:
    lines = [
        "| items | raw day 1 (s) | of which wait / download / Spark (s) | raw day 1 peak RSS (MB) "
        "| snapshot day 1 (s) | raw day 2, 5 % changed (s) | raw day 2 peak RSS (MB) "
        "| snapshot day 2, first / rebuilt (s) | plain Spark copy (s) | day 2 / copy, first / rebuilt "
        "| DuckDB merge (s) | day 2 / DuckDB | day 2 by `dagster asset materialize` (s) "
        "| of which to run start / to step start / step / exit (s) | command / copy | Spark jobs, snapshot day 2 / copy (count in busy s) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        raw1, copy, duckdb = row.raw1.figures, row.copy_seconds, row.duckdb_seconds
        lines.append(
            f"| {row.items:,} | {row.raw1.seconds:.1f} | {raw1['wait_seconds']:.1f} / {raw1['download_seconds']:.1f} / "
            f"{raw1['convert_seconds']:.1f} | {row.raw1.peak_rss_mb:.0f} | {row.snapshot1.seconds:.1f} "
            f"| {row.raw2.seconds:.1f} | {row.raw2.peak_rss_mb:.0f} "
            f"| {row.snapshot2.seconds:.1f} / {row.rebuilt_seconds:.1f} "
            f"| {copy:.1f} | {row.snapshot2.seconds / copy:.2f}× / {row.rebuilt_seconds / copy:.2f}× "
            f"| {duckdb:.1f} | {row.snapshot2.seconds / duckdb:.2f}× "
            f"| {row.command.seconds:.1f} | {row.command} | {row.command.seconds / copy:.2f}× "
            f"| {row.snapshot2_jobs} / {row.copy_jobs} |"
        )
    return "\n".join(lines)
