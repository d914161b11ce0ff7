"""What the bench's scenarios share: the engine they run through, when things ran, and what the
engine and Dagster logged meanwhile.

Every scenario but the demo and the sensor's tick is a Spark Connect client of one engine the bench
starts (home and catalog in its work folder, a free port other than the default 15002, Spark's
event log on, so each job's times and Spark Connect session are known). Times are epoch seconds
throughout, so the bench's clock, Spark's event log and Dagster's compare.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import dagster as dg

from alloy_pipeline import engine as engines
from alloy_pipeline.engine import EngineSettings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "bench-key"
DAY1, DAY2 = "2024-03-01", "2024-03-02"
SESSION_TAG = re.compile(r"_Session_([0-9a-f-]{36})_")
"""How the Connect server tags a session's jobs (`spark.job.tags`, `..._Session_<id>_Operation_...`)."""
CONNECT_VARIABLES = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")
OPERATION_ENDS = {
    "SparkListenerConnectOperationFinished",
    "SparkListenerConnectOperationFailed",
    "SparkListenerConnectOperationCanceled",
}
T = TypeVar("T")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load_average() -> str:
    """The machine's load over 1, 5 and 15 minutes: other users' work slows every figure beside it."""
    return " / ".join(f"{load:.1f}" for load in os.getloadavg())


def clean_environment(**values: str) -> dict[str, str]:
    """This environment without the Spark Connect switches a Connect session in this process sets,
    plus `values`: a child decides for itself whether and where it connects."""
    return {name: value for name, value in os.environ.items() if name not in CONNECT_VARIABLES} | values


def user_environment(root: Path, alloy_url: str, remote: str, database: str, **values: str) -> dict[str, str]:
    """What a user sets to run the code location against the simulator through the engine at `remote`:
    the AQS folder `root/aqs` and the instance `root/dagster_home` (the caller fills both), the lake
    under `root`, and the catalog's databases `<database>_raw` and `<database>_refined`."""
    return clean_environment(
        SPARK_REMOTE=remote,
        ALLOY_API_URL=alloy_url,
        ALLOY_API_KEY=API_KEY,
        ALLOY_AQS_DIR=str(root / "aqs"),
        ALLOY_RAW_ZONE=str(root / "raw-zone"),
        ALLOY_REFINED_ZONE=str(root / "refined-zone"),
        ALLOY_RAW_DATABASE=f"{database}_raw",
        ALLOY_REFINED_DATABASE=f"{database}_refined",
        DAGSTER_HOME=str(root / "dagster_home"),
        **values,
    )


def event_time(records: Sequence[dg.EventLogEntry], kind: dg.DagsterEventType) -> float:
    """When a run logged its one event of `kind` (RUN_START, RUN_SUCCESS)."""
    [moment] = [record.timestamp for record in records if record.dagster_event_type == kind]
    return moment


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


# ------------------------------------------------------------------------------ timing windows


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


# --------------------------------------------------------------------- the engine's event log


@dataclass
class SessionActivity:
    """What the engine did for one Spark Connect session, in epoch seconds."""

    jobs: list[Window] = field(default_factory=list)
    operations: list[Window] = field(default_factory=list)
    """Connect operations, started to finished: queries and writes, and commands that run no job
    (catalog DDL among them)."""


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
