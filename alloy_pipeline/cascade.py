"""After any re-run, every later snapshot is either rebuilt or visibly flagged.

Dagster never cascades a change to a past partition through a self-dependent asset, on purpose.
`alloy_cascade_sensor` does it for the snapshot assets: when a query's raw or snapshot asset is
materialised, it compares each snapshot day's recorded lineage with the committed versions
(`snapshot_plan.out_of_date`), reports the days that are out of date as failing
`built_on_current_inputs`, and requests one run that rebuilds them from the first such day to
the latest snapshot, in date order (a ranged run, as a backfill's). It never requests a second
rebuild of a query while one is queued or running, nor again one that failed from the same day
for the same cause, and one change rebuilds each later day once.

A query's first check reads all its manifests. Each later one checks only the days from the
earliest partition, raw or snapshot, materialised since the last (Dagster's records say which),
reading their manifests and those they are planned from; the days before have not changed, and
their flags are in the cursor. Dagster abandons a tick after 60 s, and a first check of years of
history on S3 takes seconds, so a tick starts no query after `TICK_BUDGET_SECONDS`: the queries
left are checked on the next tick, as Dagster's timeout message advises (work in chunks, carried
by the cursor).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
from pydantic import BaseModel, ConfigDict

from alloy_pipeline.check_targets import TargetMaterialization, latest_materialization, latest_materializations
from alloy_pipeline.lake import LakeResource, ManifestError
from alloy_pipeline.naming import raw_key, snapshot_key
from alloy_pipeline.partitions import DAYS_TAG, ranged_run_tags
from alloy_pipeline.snapshot_plan import CURRENT_INPUTS_CHECK, EarlierCheck, out_of_date

CASCADE_TAG = "alloy_pipeline/cascade"
"""On a cascade's run: the query whose snapshots it rebuilds."""
CAUSE_TAG = "alloy_pipeline/cascade_cause"
"""On a cascade's run: what made its first day out of date."""
SENSOR_NAME = "alloy_cascade_sensor"
TICK_BUDGET_SECONDS = 30.0
"""How long into a tick a query's check may start: half of Dagster's 60 s sensor timeout
(`DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`), leaving the other half to the query in hand."""
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class _Cursor(BaseModel):
    """Per query: the newest materialisations seen, and the flags already reported."""

    model_config = ConfigDict(extra="forbid")

    seen: dict[str, tuple[int, int]] = {}
    flagged: dict[str, dict[str, list[str]]] = {}


def _newest(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    return records[0].storage_id if records else 0


def _earlier_check(instance: dg.DagsterInstance, query: str, cursor: _Cursor) -> EarlierCheck | None:
    """What the query's last check found, and the earliest day materialised since (raw or snapshot);
    None for a first check, or when Dagster's records name no such day: the whole query is checked."""
    seen = cursor.seen.get(query)
    if seen is None:
        return None
    keys = (raw_key(query), snapshot_key(query))
    partitions = set().union(
        *(instance.get_materialized_partitions(key, after_cursor=after) for key, after in zip(keys, seen, strict=True))
    )
    if not partitions:
        return None
    stale = {dt.date.fromisoformat(day): changes for day, changes in cursor.flagged.get(query, {}).items()}
    return EarlierCheck(since=min(map(dt.date.fromisoformat, partitions)), stale=stale)


def _cascade_active(instance: dg.DagsterInstance, query: str) -> bool:
    return bool(instance.get_run_records(dg.RunsFilter(tags={CASCADE_TAG: query}, statuses=_ACTIVE), limit=1))


def _failed(instance: dg.DagsterInstance, query: str, request: dg.RunRequest) -> dg.RunRecord | None:
    """A failed rebuild of the same first day for the same cause: requesting it again would fail the same way.

    The cause names the versions the day was built on and the committed ones, so it changes with
    any re-run that could make a rebuild of that day come out differently.
    """
    tags = {CASCADE_TAG: query, CAUSE_TAG: request.tags[CAUSE_TAG]}
    records = instance.get_run_records(dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus.FAILURE]), limit=1)
    return records[0] if records else None


def _flag(
    query: str, day: dt.date, changes: list[str], target: TargetMaterialization | None
) -> dg.AssetCheckEvaluation:
    """A failing evaluation of the day's latest materialization (`target`): the one built on the replaced versions."""
    return dg.AssetCheckEvaluation(
        asset_key=snapshot_key(query),
        check_name=CURRENT_INPUTS_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        partition=day.isoformat(),
        target_materialization_data=target,
        description="Built on versions that are no longer the committed ones; a rebuild of this day brings it up to date.",
        metadata={"changes": dg.MetadataValue.json(changes)},
    )


def _unreadable(instance: dg.DagsterInstance, query: str, error: ManifestError) -> dg.AssetCheckEvaluation:
    """A query whose manifests cannot be read is reported on the damaged day; the others go on."""
    return dg.AssetCheckEvaluation(
        asset_key=snapshot_key(query),
        check_name=CURRENT_INPUTS_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        partition=error.day.isoformat(),
        target_materialization_data=latest_materialization(instance, snapshot_key(query), error.day.isoformat()),
        description="A manifest of this query cannot be read, so its snapshots could not be checked.",
        metadata={"error": str(error)},
    )


def _rebuild(query: str, stale: dict[dt.date, list[str]], last: dt.date) -> dg.RunRequest:
    first = min(stale)
    cause = f"{first.isoformat()}: " + "; ".join(stale[first])
    digest = hashlib.sha256(json.dumps(stale[first]).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{query}:{first.isoformat()}:{last.isoformat()}:{digest}",
        asset_selection=[snapshot_key(query)],
        tags={**ranged_run_tags(first.isoformat(), last.isoformat()), CASCADE_TAG: query, CAUSE_TAG: cause[:4000]},
    )


def _days(days: Sequence[dt.date]) -> str:
    return f"{len(days)} day{'s' if len(days) != 1 else ''} ({min(days).isoformat()}..{max(days).isoformat()})"


def _checked(query: str, snapshot_days: Sequence[dt.date], earlier: EarlierCheck | None) -> str:
    """The snapshot days a check looked at, for the tick's log."""
    if earlier is None:
        return f"{query}: {_days(snapshot_days)} checked"
    checked = [day for day in snapshot_days if day >= earlier.since]
    if not checked:
        return f"{query}: no snapshot day from {earlier.since} on to check (nothing before it materialised since the last check)"
    return f"{query}: {_days(checked)} checked (nothing before {earlier.since} materialised since the last check)"


@dataclass(frozen=True)
class _Outcome:
    """What one tick did for one query: its flags, its rebuild, and the line that says so in the tick's log."""

    flags: list[dg.AssetCheckEvaluation]
    request: dg.RunRequest | None
    report: str
    failed: bool = False
    read: bool = True
    """Whether the query's manifests were read: what a tick spends its time on."""


def _check_query(
    context: dg.SensorEvaluationContext,
    lake: LakeResource,
    query: str,
    cursor: _Cursor,
    *,
    enabled: bool,
    out_of_time: str | None = None,
) -> _Outcome:
    """One query's part of a tick; it records what it saw and flagged in `cursor`. With `out_of_time`
    (how far into its time the tick is), a query with anything to check is left to the next tick."""
    newest = (_newest(context.instance, raw_key(query)), _newest(context.instance, snapshot_key(query)))
    if cursor.seen.get(query) == newest:
        return _Outcome([], None, f"{query}: nothing materialised since its last check", read=False)
    if out_of_time:
        return _Outcome([], None, f"{query}: left for the next tick, {out_of_time}", read=False)
    earlier = _earlier_check(context.instance, query, cursor)
    try:
        snapshot_days, raw_days = lake.snapshot_days(query), lake.raw_days(query)
        snapshots_read, raws_read = (
            earlier.manifests_needed(snapshot_days, raw_days) if earlier else (snapshot_days, raw_days)
        )
        snapshots, raws = lake.snapshot_manifests(query, days=snapshots_read), lake.raw_manifests(query, days=raws_read)
        stale = out_of_date(query, snapshots, raws, earlier)
    except ManifestError as error:
        return _Outcome(
            [_unreadable(context.instance, query, error)],
            None,
            f"{query}: not checked for out-of-date snapshots, and checked again next tick: {error}",
            failed=True,
        )
    reported = cursor.flagged.get(query, {})
    unreported = {day: changes for day, changes in stale.items() if reported.get(day.isoformat()) != changes}
    targets = latest_materializations(context.instance, snapshot_key(query), [day.isoformat() for day in unreported])
    flags = [_flag(query, day, changes, targets.get(day.isoformat())) for day, changes in unreported.items()]
    cursor.flagged[query] = {day.isoformat(): changes for day, changes in stale.items()}
    checked = _checked(query, snapshot_days, earlier) if snapshot_days else ""
    if not stale:
        cursor.seen[query] = newest
        return _Outcome(flags, None, f"{checked}, none out of date" if snapshot_days else f"{query}: no snapshot yet")
    found = f"{checked}, {_days(list(stale))} out of date ({len(flags)} newly flagged); first {min(stale)}: " + (
        "; ".join(stale[min(stale)])
    )
    if _cascade_active(context.instance, query):
        return _Outcome(flags, None, f"{found}. A rebuild of {query} is queued or running: none requested")
    cursor.seen[query] = newest
    if not enabled:
        return _Outcome(flags, None, f"{found}. Flagged only: rebuilds are switched off (ALLOY_CASCADE=off)")
    request = _rebuild(query, stale, snapshot_days[-1])
    failed = _failed(context.instance, query, request)
    if failed:
        return _Outcome(
            flags,
            None,
            f"{found}. The rebuild from {min(stale)} failed for this cause (run {failed.dagster_run.run_id}): "
            "none requested until the cause changes",
        )
    return _Outcome(
        flags, request, f"{found}. Requested the rebuild {request.tags[DAYS_TAG]} (run key {request.run_key})"
    )


def build_cascade_sensor(
    queries: Sequence[str], *, enabled: bool, budget_seconds: float | None = TICK_BUDGET_SECONDS
) -> dg.SensorDefinition:
    """The sensor over `queries`; with `enabled` false it still flags, and requests nothing.

    Each tick logs one line per query (what it checked, flagged and requested, or why not), so a
    healthy tick reads differently from a broken one on the sensor's page. Once `budget_seconds`
    have passed (None: never), and it has read one query's manifests, it leaves the queries with
    anything to check to the next tick.
    """

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=[snapshot_key(query) for query in queries],
        description=(
            "Flags snapshot days built on versions that were re-run since, and rebuilds them in date order"
            + ("" if enabled else " (rebuilds switched off: ALLOY_CASCADE=off)")
            + "."
        ),
    )
    def alloy_cascade_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
        cursor = _Cursor.model_validate_json(context.cursor) if context.cursor else _Cursor()
        requests: list[dg.RunRequest] = []
        flags: list[dg.AssetCheckEvaluation] = []
        started, read = time.monotonic(), False
        for query in queries:
            elapsed = time.monotonic() - started
            over = read and budget_seconds is not None and elapsed > budget_seconds
            out_of_time = f"{elapsed:.0f} s into this one" if over else None
            outcome = _check_query(context, lake, query, cursor, enabled=enabled, out_of_time=out_of_time)
            read = read or outcome.read
            (context.log.error if outcome.failed else context.log.info)(outcome.report)
            flags += outcome.flags
            requests += [outcome.request] if outcome.request else []
        return dg.SensorResult(run_requests=requests, asset_events=flags, cursor=cursor.model_dump_json())

    return alloy_cascade_sensor
