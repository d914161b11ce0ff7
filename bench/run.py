"""Benchmark: the pipeline on this machine, its steps clients of one Spark engine the bench starts.

Every step is a Spark Connect client of one long-lived engine, so what a user waits for is no
longer JVM starts but the fixed costs around the Spark work: Dagster's processes, connecting,
catalog statements, many small jobs. The bench starts an engine of its own (home and catalog in
its work folder, a free port other than the default 15002, Spark's event log on, so each job's
times and Spark Connect session are known) and, through it, measures:

- a daily run of the example queries in `aqs_queries/` as a user runs it (`dagster asset
  materialize` in a subprocess, against the simulator, the engine already up): day 1 (full
  extracts) and day 2 (incremental, after a simulated day of edits, inserts and deletes);
- per step of those runs, from the run's Dagster event log and the engine's Spark event log
  (joined by the Spark Connect session id each step logs): the process launch, step start to the
  first Spark job (less the Alloy export's wait and download, which are Alloy's time), the Spark
  work, and last Spark job to step end (with the catalog statements the engine ran in it);
- a 30-day snapshot rebuild at 100k items: raw days 1..30 (day 1 full, then 0.5 % of the items
  edited a day) and their snapshots day by day, then one ranged run rebuilding the 30 days (as a
  backfill run does, in this process), against 30 plain Spark copies of the day-1 snapshot;
- per size N (synthetic data): the day-1 raw extract (wall time, split into wait / download /
  Spark, and the peak RSS of the step's Python process), the day-1 snapshot, the day-2 raw extract
  and snapshot after 5 % of the items changed, a plain Spark copy of the day-1 snapshot and the
  day-2 snapshot once more (rebuilt), and the engine's jobs during the day-2 snapshot and the copy.
  Each step runs in a child process, so the peak RSS is that client's own (the engine's is not).

Before its engine starts, it times `make demo` (`alloy-pipeline demo` in a subprocess, which starts
and stops an engine of its own on port 15002), so nothing else runs meanwhile; after it stops
its engine, how soon the client notices that an export finished.

    python bench/run.py --items 100000 1000000 3000000 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import dagster as dg
from pyspark.sql import SparkSession

from alloy_pipeline import engine as engines
from alloy_pipeline.alloy.client import API_URL_VARIABLE, AlloyClient, AlloyResource
from alloy_pipeline.alloy.simulator import (
    SYNTHETIC_ROOT,
    AlloySimulator,
    demo_dataset,
    synthetic_dataset,
    synthetic_request,
)
from alloy_pipeline.aqs import load_queries, load_query
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.definitions import build_query_definitions
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.lake import LakeResource, SnapshotManifest
from alloy_pipeline.mapping import MappingResource
from alloy_pipeline.naming import raw_key
from alloy_pipeline.partitions import daily_partitions, ranged_run_tags
from alloy_pipeline.spark import SparkResource, connect_session, connected

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUERY = "synthetic_records"
DAY1, DAY2 = "2024-03-01", "2024-03-02"
API_KEY = "bench-key"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
PARTS = ("daily", "demo", "rebuild", "sizes", "notice")
SESSION_LOG = re.compile(r"Spark Connect session (\S+) on ")
"""The line each step logs when its resource connects (`SparkResource`)."""
SESSION_TAG = re.compile(r"_Session_([0-9a-f-]{36})_")
"""How the Connect server tags a session's jobs (`spark.job.tags`, `..._Session_<id>_Operation_...`)."""
CONNECT_VARIABLES = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")
T = TypeVar("T")


def _clean_environment(**values: str) -> dict[str, str]:
    """This environment without the Spark Connect switches a Connect session in this process sets,
    plus `values`: a child decides for itself whether and where it connects."""
    return {name: value for name, value in os.environ.items() if name not in CONNECT_VARIABLES} | values


def _median_and_max(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}" if values else "–"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class BenchEngine:
    """The engine every measurement but the demo runs through, and where its Spark event log goes."""

    settings: EngineSettings
    events: Path

    @property
    def url(self) -> str:
        return self.settings.url


@contextmanager
def bench_engine(root: Path) -> Iterator[BenchEngine]:
    """An engine of the bench's own, with Spark's event log as one plain JSON-lines file.

    Spark 4 writes the event log as zstd-compressed rolling files by default; plain and single
    makes it readable while the engine runs (it flushes at each job's start and end).
    """
    events = root / "spark-events"
    events.mkdir(parents=True)
    settings = EngineSettings.under(
        root,
        port=engines.free_port(),
        extra_conf={
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": events.resolve().as_uri(),
            "spark.eventLog.compress": "false",
            "spark.eventLog.rolling.enabled": "false",
        },
    )
    with engines.running(settings):
        yield BenchEngine(settings, events)


@dataclass(frozen=True)
class Window:
    """A span of time, in epoch seconds, so the bench's clock and the event logs' compare."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def within(self, start: float, end: float) -> float:
        """How much of this window lies between `start` and `end`."""
        return max(0.0, min(self.end, end) - max(self.start, start))


def timed(action: Callable[[], T]) -> tuple[Window, T]:
    """When `action` ran, and what it returned."""
    started = time.time()
    outcome = action()
    return Window(started, time.time()), outcome


@dataclass
class SessionActivity:
    """What the engine did for one Spark Connect session, in epoch seconds."""

    jobs: list[Window] = field(default_factory=list)
    operations: list[Window] = field(default_factory=list)
    """Connect operations, started to finished: queries and writes, and commands that run no job
    (catalog DDL among them)."""


OPERATION_ENDS = {
    "SparkListenerConnectOperationFinished",
    "SparkListenerConnectOperationFailed",
    "SparkListenerConnectOperationCanceled",
}


def _spark_events(events: Path) -> Iterator[dict]:
    for log in events.iterdir():
        for line in log.open(errors="replace"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # the line the engine is writing
                continue


def engine_activity(events: Path) -> dict[str, SessionActivity]:
    """The engine's jobs and Connect operations by session id, from its event log.

    A job names its session in its `spark.job.tags`; a Connect operation names it when it starts
    and only its own id when it ends.
    """
    activity: dict[str, SessionActivity] = defaultdict(SessionActivity)
    jobs: dict[int, tuple[str, float]] = {}
    operations: dict[str, tuple[str, float]] = {}
    for event in _spark_events(events):
        kind = event["Event"].rsplit(".", 1)[-1]
        if kind == "SparkListenerJobStart":
            tagged = SESSION_TAG.search(event.get("Properties", {}).get("spark.job.tags", ""))
            if tagged:
                jobs[event["Job ID"]] = (tagged[1], event["Submission Time"] / 1000)
        elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
            session, started = jobs.pop(event["Job ID"])
            activity[session].jobs.append(Window(started, event["Completion Time"] / 1000))
        elif kind == "SparkListenerConnectOperationStarted":
            operations[event["operationId"]] = (event["sessionId"], int(event["eventTime"]) / 1000)  # ms, a string
        elif kind in OPERATION_ENDS and event["operationId"] in operations:
            session, started = operations.pop(event["operationId"])
            activity[session].operations.append(Window(started, int(event["eventTime"]) / 1000))
    return activity


@dataclass(frozen=True)
class JobLoad:
    """The engine's jobs during a window: how many, and for how long at least one was running."""

    jobs: int
    busy: float

    def __str__(self) -> str:
        return f"{self.jobs} in {self.busy:.1f}"


def job_load(activity: dict[str, SessionActivity], window: Window) -> JobLoad:
    """The jobs of every session that ran during `window` (the bench is the engine's only client)."""
    spans = sorted(
        (max(job.start, window.start), min(job.end, window.end))
        for session in activity.values()
        for job in session.jobs
        if job.end > window.start and job.start < window.end
    )
    busy, reached = 0.0, window.start
    for start, end in spans:
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return JobLoad(len(spans), busy)


# ------------------------------------------------------------------------ a daily run, per step


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


def _timestamp(records: Sequence[dg.EventLogEntry], kind: dg.DagsterEventType) -> float:
    [timestamp] = [record.timestamp for record in records if record.dagster_event_type == kind]
    return timestamp


def step_times(records: Sequence[dg.EventLogEntry], activity: dict[str, SessionActivity]) -> list[StepTimes]:
    """Each step's phases: its Dagster events give its window and session, the engine's log its jobs."""
    kinds = dg.DagsterEventType
    run_start = _timestamp(records, kinds.RUN_START)
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
    return _clean_environment(
        SPARK_REMOTE=remote,
        ALLOY_API_URL=simulator.url,
        ALLOY_API_KEY=API_KEY,
        ALLOY_AQS_DIR=str(aqs),
        ALLOY_RAW_ZONE=str(root / "raw-zone"),
        ALLOY_REFINED_ZONE=str(root / "refined-zone"),
        ALLOY_RAW_DATABASE="bench_daily_raw",
        ALLOY_REFINED_DATABASE="bench_daily_refined",
        DAGSTER_HOME=str(root / "dagster_home"),
    )


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
            started = _timestamp(records, dg.DagsterEventType.RUN_START)
            ended = _timestamp(records, dg.DagsterEventType.RUN_SUCCESS)
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


def _daily_tables(runs: list[DailyRun]) -> str:
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


# ---------------------------------------------------------------------------------- make demo


DEMO_MILESTONES = {
    "engine up": re.compile(r"^Spark engine at "),
    "first day": re.compile(r"^\d{4}-\d{2}-\d{2}: materialising"),
    "rebuild": re.compile(r"^Rebuilding every snapshot"),
    "rebuilt": re.compile(r"^Rebuilt "),
    "done": re.compile(r"^Browse the runs"),
}
"""Lines of the demo's output that end its phases: first match of each, timed as it is printed."""


@dataclass(frozen=True)
class DemoRun:
    """The demo's wall time, when each milestone line was printed, and whether its rebuild matched."""

    wall: float
    milestones: dict[str, float]
    identical: bool

    def phases(self) -> dict[str, float]:
        """Engine start, setup, the days, the rebuild and its comparison, the query and engine stop,
        and the process's exit after its last line."""
        at = self.milestones
        return {
            "engine start": at["engine up"],
            "setup": at["first day"] - at["engine up"],
            "days": at["rebuild"] - at["first day"],
            "rebuild": at["rebuilt"] - at["rebuild"],
            "query, engine stop": at["done"] - at["rebuilt"],
            "exit": self.wall - at["done"],
        }


def measure_demo(root: Path) -> DemoRun:
    """`make demo` as a user runs it: its own engine in `root/engine` on port 15002, and the simulator."""
    (root / "dagster_home").mkdir(parents=True)
    environment = _clean_environment(DAGSTER_HOME=str(root / "dagster_home"), PYTHONUNBUFFERED="1")
    milestones: dict[str, float] = {}
    started = time.perf_counter()
    demo = subprocess.Popen(
        [str(BIN / "alloy-pipeline"), "demo", "--data", str(root)],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    assert demo.stdout is not None
    for line in demo.stdout:
        output.append(line)
        for name, pattern in DEMO_MILESTONES.items():
            if name not in milestones and pattern.match(line):
                milestones[name] = time.perf_counter() - started
    returncode = demo.wait()
    wall = time.perf_counter() - started
    text = "".join(output)
    if set(milestones) != set(DEMO_MILESTONES):
        raise RuntimeError(f"the demo failed (exit {returncode}):\n{text[-4000:]}")
    return DemoRun(wall=wall, milestones=milestones, identical="identical to the originals" in text)


def _demo_table(demo: DemoRun) -> str:
    phases = demo.phases()
    return "\n".join(
        [
            "| `alloy-pipeline demo` (s) | " + " | ".join(f"{name} (s)" for name in phases) + " | rebuild identical |",
            "|---:|" + "---:|" * len(phases) + "---|",
            f"| {demo.wall:.1f} | "
            + " | ".join(f"{value:.1f}" for value in phases.values())
            + f" | {'yes' if demo.identical else 'NO'} |",
        ]
    )


# --------------------------------------------------------- the synthetic query, shared with children


@dataclass(frozen=True)
class Workspace:
    """The synthetic query's AQS folder, lake and catalog databases, under one folder.

    The bench and its child processes rebuild the same assets and resources from the folder alone.
    """

    root: Path

    @classmethod
    def create(cls, root: Path) -> Workspace:
        (root / "aqs").mkdir(parents=True)
        (root / "aqs" / "Synthetic Records.json").write_text(json.dumps(synthetic_request()))
        return cls(root)

    @property
    def lake(self) -> LakeResource:
        return LakeResource(raw_zone=str(self.root / "lake" / "raw"), refined_zone=str(self.root / "lake" / "refined"))

    def assets(self) -> list[dg.AssetsDefinition]:
        [query] = load_queries(self.root / "aqs")
        return list(build_query_definitions(query, daily_partitions("2024-01-01")).assets or ())

    def resources(self, alloy_url: str, remote: str) -> dict[str, object]:
        """The pipeline's resources, its steps thin clients of the engine at `remote`; the environment names
        `alloy_url` as the Alloy API, as an operator's would (the key goes nowhere else)."""
        os.environ[API_URL_VARIABLE] = alloy_url
        database = "bench_" + re.sub(r"\W", "_", self.root.name).lower()
        return {
            "alloy": AlloyResource(base_url=alloy_url, api_key=API_KEY),
            "lake": self.lake,
            "mappings": MappingResource(location=str(self.root / "lake" / "mappings")),
            "catalog": CatalogResource(
                backend="spark", raw_database=f"{database}_raw", refined_database=f"{database}_refined"
            ),
            "pyspark": SparkResource(remote=remote),
        }

    def snapshot(self, day: str) -> SnapshotManifest:
        return next(manifest for manifest in self.lake.snapshot_manifests(QUERY) if manifest.day.isoformat() == day)


@dataclass
class Materializer:
    """In-process runs of one group of the workspace's assets on one instance, timed."""

    workspace: Workspace
    alloy_url: str
    remote: str
    instance: dg.DagsterInstance

    def run(
        self, group: str, *, day: str | None = None, days: Sequence[str] = (), config: dict | None = None
    ) -> tuple[Window, dg.ExecuteInProcessResult]:
        """One run of `day`, or one ranged run over `days` (as a backfill under the assets' policy)."""
        tags = ranged_run_tags(days[0], days[-1]) if days else None
        assets, resources = self.workspace.assets(), self.workspace.resources(self.alloy_url, self.remote)
        return timed(
            lambda: dg.materialize(
                assets,
                selection=dg.AssetSelection.groups(f"alloy_{group}"),
                partition_key=day,
                resources=resources,
                instance=self.instance,
                run_config=QUIET | (config or {}),
                tags=tags,
            )
        )


def plain_copies(spark: SparkSession, manifest: SnapshotManifest, target: Path, times: int = 1) -> Window:
    """Read and write every table of a snapshot, `times` over: the least that writing a day's snapshot costs."""
    started = time.time()
    for number in range(times):
        for table, entry in manifest.tables.items():
            spark.read.parquet(entry.path).write.mode("overwrite").parquet(str(target / str(number) / table))
    return Window(started, time.time())


# ---------------------------------------------------------------------- a ranged snapshot rebuild


@dataclass(frozen=True)
class RebuildRun:
    """The ranged rebuild and its baseline, with the setup's times for scale."""

    items: int
    days: int
    edited_per_day: int
    raw_seconds: float
    day_by_day_seconds: float
    ranged: Window
    copies: Window
    ranged_jobs: JobLoad
    copies_jobs: JobLoad


def measure_rebuild(bench: BenchEngine, root: Path, n_items: int, days: int, edit_percent: float) -> RebuildRun:
    """One ranged run rebuilding `days` snapshot days, against as many plain copies of a snapshot.

    A backfill run builds its days one after the other, each from the day before as stored, so
    the fair baseline is a copy per day. Raw day 1 is a full extract; each later day's export
    holds only that day's edits (overlap 0: the bench's days are minutes apart, not a day).
    The days are materialised in this process, so the ranged run pays no run process launch.
    """
    workspace = Workspace.create(root)
    keys = [(dt.date.fromisoformat(DAY1) + dt.timedelta(days=offset)).isoformat() for offset in range(days)]
    edited = max(1, round(n_items * edit_percent / 100))
    no_overlap = {"ops": {raw_key(QUERY).to_python_identifier(): {"config": {"overlap_minutes": 0}}}}
    with (
        AlloySimulator(dataset=synthetic_dataset(n_items), api_key=API_KEY) as simulator,
        dg.instance_for_test() as instance,
    ):
        runs = Materializer(workspace, simulator.url, bench.url, instance)
        raw_seconds = 0.0
        for number, day in enumerate(keys):
            if number:
                simulator.dataset.edit(SYNTHETIC_ROOT, edited)
            raw_seconds += runs.run("raw", day=day, config=no_overlap)[0].seconds
        day_by_day = sum(runs.run("snapshot", day=day)[0].seconds for day in keys)
        ranged, result = runs.run("snapshot", days=keys)
    rebuilt = [m.day.isoformat() for m in workspace.lake.snapshot_manifests(QUERY) if m.run_id == result.run_id]
    if rebuilt != keys:
        raise RuntimeError(f"the ranged run committed {rebuilt}, not {keys}")
    with connected(bench.url) as spark:  # this process's one session, the runs' too, closed before the engine stops
        copies = plain_copies(spark, workspace.snapshot(keys[0]), root / "plain-copy", times=days)
    activity = engine_activity(bench.events)
    return RebuildRun(
        items=n_items,
        days=days,
        edited_per_day=edited,
        raw_seconds=raw_seconds,
        day_by_day_seconds=day_by_day,
        ranged=ranged,
        copies=copies,
        ranged_jobs=job_load(activity, ranged),
        copies_jobs=job_load(activity, copies),
    )


def _rebuild_table(run: RebuildRun) -> str:
    return "\n".join(
        [
            "| items | days | items edited a day | raw days, materialised (s) | snapshots day by day, "
            f"{run.days} runs (s) | one ranged rebuild (s) | {run.days} plain Spark copies (s) | rebuild / copies "
            "| Spark jobs, rebuild / copies (count in busy s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {run.items:,} | {run.days} | {run.edited_per_day:,} | {run.raw_seconds:.1f} "
            f"| {run.day_by_day_seconds:.1f} | {run.ranged.seconds:.1f} | {run.copies.seconds:.1f} "
            f"| {run.ranged.seconds / run.copies.seconds:.2f}× | {run.ranged_jobs} / {run.copies_jobs} |",
        ]
    )


# --------------------------------------------------------------- per size, a child process per step


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


def _phase(args: argparse.Namespace) -> None:
    """Materialise one partition of one group and print what it took as JSON on the last line.

    With `--baseline` (the day-2 snapshot), also a plain copy of the day-1 snapshot in the same
    engine, and the same day's snapshot once more (a rebuild, with the engine's caches warm).
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
    print(json.dumps(figures | {"peak_rss_mb": _peak_rss_mb()}))


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


def _run_phase(phase: str, day: str, alloy_url: str, remote: str, workspace: Workspace, baseline: bool = False) -> Step:
    """A step in a child process of its own, so the peak RSS reported is that client's alone."""
    command = [
        sys.executable,
        __file__,
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
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO, env=_clean_environment(), check=False
        )
    if child.returncode != 0:
        raise RuntimeError(f"{phase} {day} failed:\n{child.stdout[-2000:]}\n{errors.read_text()[-4000:]}")
    return Step(json.loads(child.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class SizeRun:
    """The four steps at one size; the day-2 snapshot's step also timed a copy and a rebuild."""

    items: int
    raw1: Step
    snapshot1: Step
    raw2: Step
    snapshot2: Step
    snapshot2_jobs: JobLoad
    copy_jobs: JobLoad

    @property
    def copy_seconds(self) -> float:
        return self.snapshot2.window("plain_copy_window").seconds

    @property
    def rebuilt_seconds(self) -> float:
        return self.snapshot2.window("rebuilt_window").seconds


def measure_size(bench: BenchEngine, root: Path, n_items: int) -> SizeRun:
    """Day 1 and day 2 of the synthetic query at `n_items`, each step a child process."""
    workspace = Workspace.create(root)
    with AlloySimulator(dataset=synthetic_dataset(n_items), api_key=API_KEY) as simulator:

        def phase(name: str, day: str, baseline: bool = False) -> Step:
            return _run_phase(name, day, simulator.url, bench.url, workspace, baseline)

        raw1 = phase("raw", DAY1)
        snapshot1 = phase("snapshot", DAY1)
        simulator.dataset.edit(SYNTHETIC_ROOT, max(1, n_items * 5 // 100))
        raw2 = phase("raw", DAY2)
        snapshot2 = phase("snapshot", DAY2, baseline=True)
    activity = engine_activity(bench.events)
    return SizeRun(
        items=n_items,
        raw1=raw1,
        snapshot1=snapshot1,
        raw2=raw2,
        snapshot2=snapshot2,
        snapshot2_jobs=job_load(activity, snapshot2.window()),
        copy_jobs=job_load(activity, snapshot2.window("plain_copy_window")),
    )


def _sizes_table(rows: list[SizeRun]) -> str:
    lines = [
        "| items | raw day 1 (s) | of which wait / download / Spark (s) | raw day 1 peak RSS (MB) "
        "| snapshot day 1 (s) | raw day 2, 5 % changed (s) | raw day 2 peak RSS (MB) "
        "| snapshot day 2, first / rebuilt (s) | plain Spark copy (s) | day 2 / copy, first / rebuilt "
        "| Spark jobs, snapshot day 2 / copy (count in busy s) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        raw1, copy = row.raw1.figures, row.copy_seconds
        lines.append(
            f"| {row.items:,} | {row.raw1.seconds:.1f} | {raw1['wait_seconds']:.1f} / {raw1['download_seconds']:.1f} / "
            f"{raw1['convert_seconds']:.1f} | {row.raw1.peak_rss_mb:.0f} | {row.snapshot1.seconds:.1f} "
            f"| {row.raw2.seconds:.1f} | {row.raw2.peak_rss_mb:.0f} "
            f"| {row.snapshot2.seconds:.1f} / {row.rebuilt_seconds:.1f} "
            f"| {copy:.1f} | {row.snapshot2.seconds / copy:.2f}× / {row.rebuilt_seconds / copy:.2f}× "
            f"| {row.snapshot2_jobs} / {row.copy_jobs} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the notice delay


def measure_notice_delay(task_seconds: float) -> float:
    """Seconds between a task completing in the simulator and the client noticing it."""
    request = load_query(REPO / "aqs_queries" / "Gully Inspections.json").request
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, task_seconds=task_seconds) as simulator:
        with AlloyClient(simulator.url, API_KEY, logger=logging.getLogger("bench")) as client:
            started = time.monotonic()
            task_id = client.start_export(request)
            client.wait_for(task_id)
            return time.monotonic() - started - task_seconds


def _notice_table(delays: dict[float, float]) -> str:
    lines = ["| export task takes (s) | noticed after completion (s) |", "|---:|---:|"]
    return "\n".join(lines + [f"| {task:g} | {delay:.2f} |" for task, delay in delays.items()])


# ---------------------------------------------------------------------------------------- main


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000], help="the sizes measured per size")
    parser.add_argument("--rebuild-items", type=int, default=100_000, help="the size of the ranged rebuild")
    parser.add_argument("--rebuild-days", type=int, default=30, help="the days the ranged rebuild covers")
    parser.add_argument("--edit-percent", type=float, default=0.5, help="items edited a day in the rebuild")
    parser.add_argument("--task-seconds", type=float, nargs="+", default=[3.0, 20.0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    parser.add_argument("--write", type=Path, help="append the results to this Markdown file")
    parser.add_argument(
        "--folder", type=Path, help="work in this new folder and keep it, event logs too (default: a temporary one)"
    )
    for hidden in ("--phase", "--day", "--url", "--remote", "--workspace"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def _command_line(args: argparse.Namespace) -> str:
    shown = ["python bench/run.py", "--items", *map(str, args.items)]
    if args.rebuild_items != 100_000 or args.rebuild_days != 30 or args.edit_percent != 0.5:
        shown += ["--rebuild-items", str(args.rebuild_items), "--rebuild-days", str(args.rebuild_days)]
        shown += ["--edit-percent", f"{args.edit_percent:g}"]
    if list(args.parts) != list(PARTS):
        shown += ["--parts", *args.parts]
    return " ".join(shown)


def _measure(args: argparse.Namespace, root: Path) -> Iterator[tuple[str, str]]:
    """Each part asked for, as a title and a Markdown table, printed as soon as it is measured.

    The demo runs first, before the bench's engine starts, so nothing else runs while it is
    timed; everything else runs through the bench's engine.
    """
    if "demo" in args.parts:
        print("timing `alloy-pipeline demo` (its own engine) ...", flush=True)
        yield "`make demo`, its engine's start included", _demo_table(measure_demo(root / "demo"))
    print("starting the bench's Spark engine ...", flush=True)
    with bench_engine(root / "engine") as bench:
        if "daily" in args.parts:
            print("timing a daily run of the example queries ...", flush=True)
            runs = measure_daily_runs(bench, root / "daily")
            yield "A daily run of the example queries (`dagster asset materialize`, engine up)", _daily_tables(runs)
        if "rebuild" in args.parts:
            days, items = args.rebuild_days, args.rebuild_items
            print(f"timing a {days}-day snapshot rebuild at {items:,} items ...", flush=True)
            rebuild = measure_rebuild(bench, root / "rebuild", items, days, args.edit_percent)
            yield f"A {days}-day snapshot rebuild in one ranged run", _rebuild_table(rebuild)
        if "sizes" in args.parts:
            rows = []
            for n_items in args.items:
                print(f"measuring {n_items:,} items ...", flush=True)
                rows.append(measure_size(bench, root / f"size-{n_items}", n_items))
            yield "Per size, each step a child process", _sizes_table(rows)
    if "notice" in args.parts:
        delays = {task: measure_notice_delay(task) for task in args.task_seconds}
        yield "Finished exports noticed", _notice_table(delays)


def main() -> None:
    args = _arguments()
    if args.phase:
        _phase(args)
        return
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = f"\n## Run of {dt.date.today().isoformat()}, one Spark engine ({machine})\n\n`{_command_line(args)}`\n"
    with ExitStack() as stack:
        folder = args.folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alloy-bench-")))
        for title, table in _measure(args, folder):
            section = f"\n### {title}\n\n{table}\n"
            print(section, flush=True)
            text += section
    if args.write:
        with args.write.open("a") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
