"""A ranged snapshot rebuild at one size, against as many plain Spark copies of a snapshot.

Raw days 1..N of the synthetic query (day 1 a full extract, then a share of the items edited a
day) and their snapshots day by day, then the N days rebuilt as a backfill of the snapshot asset
runs them: in ranged runs of up to its backfill policy's days (`ALLOY_SNAPSHOT_DAYS_PER_RUN`, 31),
one after the other, in this process; against N plain Spark copies of the day-1 snapshot. Raw
days 2..N are extracted through the simulator one run each, or, for long histories, written
directly by Spark (`direct_raw.py`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg
from direct_raw import write_raw_days
from harness import API_KEY, DAY1, BenchEngine, JobLoad, Window, engine_activity, job_load, timed
from synthetic import QUERY, Materializer, Workspace, plain_copies

from alloy_pipeline.alloy.simulator import SYNTHETIC_ROOT, AlloySimulator, synthetic_dataset
from alloy_pipeline.naming import raw_key, snapshot_key
from alloy_pipeline.partitions import Day
from alloy_pipeline.spark import connect_session, connected

RawDays = Literal["extract", "direct"]
RAW_DAYS: tuple[RawDays, ...] = ("extract", "direct")


@dataclass(frozen=True)
class RebuildRun:
    """The ranged rebuild and its baseline, with the setup's times for scale."""

    items: int
    days: int
    edited_per_day: int
    raw_days: RawDays
    raw_seconds: float
    day_by_day_seconds: float
    days_per_run: int
    ranged: Window
    """From the first ranged run's start to the last one's end."""
    copies: Window
    ranged_jobs: JobLoad
    copies_jobs: JobLoad

    @property
    def runs(self) -> int:
        return -(-self.days // self.days_per_run)


def _days_per_run(workspace: Workspace) -> int:
    """How many days a backfill of the snapshot asset puts in one run (its backfill policy)."""
    [snapshot] = [asset for asset in workspace.assets() if asset.key == snapshot_key(QUERY)]
    policy = snapshot.backfill_policy
    assert policy is not None and policy.max_partitions_per_run is not None
    return policy.max_partitions_per_run


def measure_rebuild(
    bench: BenchEngine, root: Path, n_items: int, days: int, edit_percent: float, raw_days: RawDays = "extract"
) -> RebuildRun:
    """The `days` snapshot days rebuilt in ranged runs, against as many plain copies of a snapshot.

    A backfill run builds its days one after the other, each from the day before as stored, so
    the fair baseline is a copy per day. Raw day 1 is a full extract; each later day's export
    holds only that day's edits (overlap 0: the bench's days are minutes apart, not a day).
    The days are materialised in this process, so the ranged runs pay no run process launch.
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
        raw_seconds = runs.run("raw", day=keys[0], config=no_overlap)[0].seconds
        if raw_days == "direct":
            spark, later = connect_session(bench.url), [Day.from_key(key) for key in keys[1:]]
            period = round(100 / edit_percent)
            raw_seconds += timed(lambda: write_raw_days(spark, workspace.lake, QUERY, later, period))[0].seconds
        else:
            for day in keys[1:]:
                simulator.dataset.edit(SYNTHETIC_ROOT, edited)
                raw_seconds += runs.run("raw", day=day, config=no_overlap)[0].seconds
        day_by_day = sum(runs.run("snapshot", day=day)[0].seconds for day in keys)
        per_run = _days_per_run(workspace)
        ranged = [runs.run("snapshot", days=keys[start : start + per_run]) for start in range(0, days, per_run)]
    run_ids = {result.run_id for _, result in ranged}
    rebuilt = [m.day.isoformat() for m in workspace.lake.snapshot_manifests(QUERY) if m.run_id in run_ids]
    if rebuilt != keys:
        raise RuntimeError(f"the ranged runs committed {rebuilt}, not {keys}")
    with connected(bench.url) as spark:  # this process's one session, the runs' too, closed before the engine stops
        copies = plain_copies(spark, workspace.snapshot(keys[0]), root / "plain-copy", times=days)
    activity = engine_activity(bench.events)
    rebuild = Window(ranged[0][0].start, ranged[-1][0].end)
    return RebuildRun(
        items=n_items,
        days=days,
        edited_per_day=edited,
        raw_days=raw_days,
        raw_seconds=raw_seconds,
        day_by_day_seconds=day_by_day,
        days_per_run=per_run,
        ranged=rebuild,
        copies=copies,
        ranged_jobs=job_load(activity, rebuild),
        copies_jobs=job_load(activity, copies),
    )


def rebuild_title(run: RebuildRun) -> str:
    if run.runs == 1:
        return f"A {run.days}-day snapshot rebuild in one ranged run"
    return f"A {run.days}-day snapshot rebuild in {run.runs} ranged runs of up to {run.days_per_run} days"


def rebuild_table(run: RebuildRun) -> str:
    raw = "raw days, materialised" if run.raw_days == "extract" else "raw days: day 1 extracted, the rest by Spark"
    rebuild = "one ranged rebuild" if run.runs == 1 else f"ranged rebuild, {run.runs} runs"
    return "\n".join(
        [
            f"| items | days | items edited a day | {raw} (s) | snapshots day by day, "
            f"{run.days} runs (s) | {rebuild} (s) | {run.days} plain Spark copies (s) | rebuild / copies "
            "| Spark jobs, rebuild / copies (count in busy s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {run.items:,} | {run.days} | {run.edited_per_day:,} | {run.raw_seconds:.1f} "
            f"| {run.day_by_day_seconds:.1f} | {run.ranged.seconds:.1f} | {run.copies.seconds:.1f} "
            f"| {run.ranged.seconds / run.copies.seconds:.2f}× | {run.ranged_jobs} / {run.copies_jobs} |",
        ]
    )
