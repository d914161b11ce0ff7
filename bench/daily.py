"""A daily run of the example queries in `aqs_queries/`, as a user runs it, and its steps.

`dagster asset materialize` in a subprocess, against the simulator, the engine already up: day 1
(full extracts) and day 2 (incremental, after a simulated day of edits, inserts and deletes). Per
step, from the run's Dagster event log and the engine's Spark event log (joined by the Spark
Connect session id each step logs): the process launch, step start to the first Spark job (less
the Alloy export's wait and download, which are Alloy's time), the Spark work, and last Spark job
to step end (with the catalog statements the engine ran in it).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from harness import (
    API_KEY,
    BIN,
    DAY1,
    DAY2,
    REPO,
    BenchEngine,
    SessionActivity,
    engine_activity,
    event_time,
    user_environment,
)

from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset

SESSION_LOG = re.compile(r"Spark Connect session (\S+) on ")
"""The line each step logs when its resource connects (`SparkResource`)."""


def _median_and_max(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}" if values else "–"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


@dataclass(frozen=True)
class StepTimes:
    """One step of a run, in seconds, from the run's Dagster event log and the engine's Spark event log."""

    step: str
    queued: float | None
    """Its upstream step done (or the run started) to the executor launching the step's process."""
    launch: tuple[float, float, float] | None
    """Launching the process to STEP_START: the process and its imports (to STEP_WORKER_STARTED),
    loading the code location and planning the step (to RESOURCE_INIT_STARTED), and the resources,
    mostly connecting to the engine (to STEP_START)."""
    export: float
    """The Alloy export's wait and download (raw steps): Alloy's time, not overhead."""
    before_spark: float | None
    """STEP_START to the first Spark job's submission, less `export`."""
    spark: float | None
    """First Spark job's submission to the last one's completion."""
    after_spark: float | None
    """Last Spark job's completion to STEP_SUCCESS."""
    engine_after_spark: float | None
    """Of `after_spark`, the time the engine spent on the step's Connect operations (catalog DDL)."""
    total: float

    @property
    def launch_total(self) -> float | None:
        return sum(self.launch) if self.launch else None


@dataclass(frozen=True)
class DailyRun:
    """One `dagster asset materialize` of a day, in seconds, and its steps."""

    day: str
    wall: float
    """`dagster asset materialize` from launch to exit."""
    to_run_start: float
    """Process launch to RUN_START: interpreter, imports, loading the code location, the run record."""
    run: float
    """RUN_START to RUN_SUCCESS."""
    after_run: float
    """RUN_SUCCESS to process exit."""
    steps: list[StepTimes]


@dataclass
class _StepEvents:
    """What a run's event log says about one step."""

    marks: dict[dg.DagsterEventType, float] = field(default_factory=dict)
    session: str | None = None
    export: float = 0.0

    def between(self, first: dg.DagsterEventType, second: dg.DagsterEventType) -> float | None:
        if first not in self.marks or second not in self.marks:
            return None
        return self.marks[second] - self.marks[first]


def _upstream(step: str) -> str | None:
    """A snapshot step's raw step (step keys are asset keys joined by `__`)."""
    return step.replace("__snapshot__", "__raw__") if "__snapshot__" in step else None


def _step_events(records: Sequence[dg.EventLogEntry]) -> dict[str, _StepEvents]:
    """Each step's first event of each type, its Connect session and its export's time."""
    steps: dict[str, _StepEvents] = defaultdict(_StepEvents)
    for record in records:
        event = record.dagster_event
        if event is None:
            session = SESSION_LOG.search(record.user_message or "")
            if session and record.step_key:
                steps[record.step_key].session = session[1]
        elif event.step_key:
            step = steps[event.step_key]
            step.marks.setdefault(event.event_type, record.timestamp)
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                metadata = event.step_materialization_data.materialization.metadata
                if "wait_seconds" in metadata:
                    step.export = metadata["wait_seconds"].value + metadata["download_seconds"].value
    return steps


def step_times(records: Sequence[dg.EventLogEntry], activity: dict[str, SessionActivity]) -> list[StepTimes]:
    """Each step's phases: its Dagster events give its window and session, the engine's log its jobs."""
    kinds = dg.DagsterEventType
    run_start = event_time(records, kinds.RUN_START)
    steps = _step_events(records)
    times = []
    for key, step in sorted(steps.items()):
        if kinds.STEP_START not in step.marks or kinds.STEP_SUCCESS not in step.marks:
            raise RuntimeError(f"step {key} has no STEP_START or STEP_SUCCESS in the run's event log")
        started, ended = step.marks[kinds.STEP_START], step.marks[kinds.STEP_SUCCESS]
        upstream = steps.get(_upstream(key) or "")
        ready = upstream.marks.get(kinds.STEP_SUCCESS, run_start) if upstream else run_start
        launching = step.marks.get(kinds.STEP_WORKER_STARTING)
        parts = [
            step.between(kinds.STEP_WORKER_STARTING, kinds.STEP_WORKER_STARTED),
            step.between(kinds.STEP_WORKER_STARTED, kinds.RESOURCE_INIT_STARTED),
            step.between(kinds.RESOURCE_INIT_STARTED, kinds.STEP_START),
        ]
        session = activity.get(step.session or "", SessionActivity())
        first = min((job.start for job in session.jobs), default=None)
        last = max((job.end for job in session.jobs), default=None)
        times.append(
            StepTimes(
                step=key,
                queued=launching - ready if launching else None,
                launch=(parts[0], parts[1], parts[2]) if None not in parts else None,
                export=step.export,
                before_spark=first - started - step.export if first else None,
                spark=last - first if first and last else None,
                after_spark=ended - last if last else None,
                engine_after_spark=sum(op.within(last, ended) for op in session.operations) if last else None,
                total=ended - started,
            )
        )
    return times


def _example_environment(root: Path, simulator: AlloySimulator, remote: str) -> dict[str, str]:
    """What a user sets to run the example queries against the simulator through the engine."""
    aqs = root / "aqs"
    aqs.mkdir(parents=True)
    for query in sorted((REPO / "aqs_queries").glob("*.json")):
        (aqs / query.name).write_bytes(query.read_bytes())
    (root / "dagster_home").mkdir()
    return user_environment(root, simulator.url, remote, "bench_daily")


def _materialize_as_a_user(day: str, environment: dict[str, str]) -> tuple[float, float]:
    """`dagster asset materialize` of every asset for `day`; its launch and exit (epoch seconds)."""
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "alloy_pipeline.definitions"]
    launched = time.time()
    completed = subprocess.run(
        [*command, "--select", "*", "--partition", day],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    exited = time.time()
    if completed.returncode != 0:
        raise RuntimeError(f"dagster asset materialize {day} failed:\n{(completed.stdout + completed.stderr)[-4000:]}")
    return launched, exited


def measure_daily_runs(bench: BenchEngine, root: Path) -> list[DailyRun]:
    """Day 1 (full extracts) and day 2 (incremental after a simulated day) of the example queries.

    Both run as a user runs them, through the engine that is already up, so the wall time is
    what the engine leaves: Dagster's run and step processes, the exports and the Spark work.
    """
    windows: dict[str, tuple[float, float]] = {}
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY) as simulator:
        environment = _example_environment(root, simulator, bench.url)
        windows[DAY1] = _materialize_as_a_user(DAY1, environment)
        simulator.dataset.simulate_day(seed=1)
        windows[DAY2] = _materialize_as_a_user(DAY2, environment)
    activity = engine_activity(bench.events)
    runs = []
    with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        for day, (launched, exited) in windows.items():
            [run] = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": day}))
            records = instance.all_logs(run.run_id)
            started = event_time(records, dg.DagsterEventType.RUN_START)
            ended = event_time(records, dg.DagsterEventType.RUN_SUCCESS)
            runs.append(
                DailyRun(
                    day=day,
                    wall=exited - launched,
                    to_run_start=started - launched,
                    run=ended - started,
                    after_run=exited - ended,
                    steps=step_times(records, activity),
                )
            )
    return runs


def _over_steps(run: DailyRun, pick: Callable[[StepTimes], float | None]) -> str:
    """Median and max of one phase over the run's steps."""
    return _median_and_max([value for step in run.steps if (value := pick(step)) is not None])


def daily_tables(runs: list[DailyRun]) -> str:
    """A line per run with the steps' median and max, then a line per step."""
    lines = [
        "| day | wall (s) | launch → run start (s) | run (s) | run end → exit (s) "
        "| step launch, median / max (s) | step start → first Spark job, less export, median / max (s) "
        "| last Spark job → step end, median / max (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.day} | {run.wall:.1f} | {run.to_run_start:.1f} | {run.run:.1f} | {run.after_run:.1f} "
            f"| {_over_steps(run, lambda s: s.launch_total)} | {_over_steps(run, lambda s: s.before_spark)} "
            f"| {_over_steps(run, lambda s: s.after_spark)} |"
        )
    lines += [
        "",
        "| day | step | queued (s) | launch: process / code location / resources (s) | export wait + download (s) "
        "| start → first Spark job, less export (s) | first → last Spark job (s) "
        "| last Spark job → step end, of which catalog DDL in the engine (s) | step start → end (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for step in run.steps:
            launch = " / ".join(f"{part:.1f}" for part in step.launch) if step.launch else "–"
            lines.append(
                f"| {run.day} | `{step.step}` | {_seconds(step.queued)} | {launch} | {step.export:.1f} "
                f"| {_seconds(step.before_spark)} | {_seconds(step.spark)} "
                f"| {_seconds(step.after_spark)}, {_seconds(step.engine_after_spark)} | {step.total:.1f} |"
            )
    return "\n".join(lines)
