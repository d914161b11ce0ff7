"""Years of history: the cascade sensor's ticks over years of manifests on S3.

`alloy_cascade_sensor` compares each snapshot day's lineage with the committed versions, for each
query materialised since its last tick: after a night's run, every query. A query's first check
reads all its raw and snapshot manifests; a later one, those from the earliest day materialised
since. Dagster abandons a sensor evaluation after 60 s, so the sensor stops starting queries 30 s
into a tick and leaves the rest to the next (`cascade.TICK_BUDGET_SECONDS`). The bench writes N
queries × Y years of daily manifests straight to moto's S3, served over HTTP on loopback as the
tests serve it (no Spark: the sensor reads only manifests), each snapshot day built on the day
before and that day's raw partition, as nightly runs build them. It then
evaluates the sensor as the daemon would (`dg.build_sensor_context`, an instance of its own),
counting the requests moto's server receives by S3 operation:

- every query checked for the first time (no cursor) in one tick, without the time budget: what
  checking them all costs;
- every query checked for the first time by the sensor as deployed, tick after tick until none
  is left (as are the rows below);
- the tick after, nothing materialised since;
- a night's run: every query's next raw and snapshot day committed and materialised;
- one raw day a year in re-run: that query's later days out of date, flagged, one rebuild
  requested.

Each tick's CPU time is this process's, so it counts moto's serving (a thread of it) too. The
instance holds no materialisations of the history's days (only the night's and the re-run's), so
a flag's lookup of its day's latest materialisation finds none; nor does moto charge S3's round
trip.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import boto3
import dagster as dg
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from alloy_pipeline.cascade import build_cascade_sensor
from alloy_pipeline.lake import RAW, REFINED, LakeResource, RawManifest, SnapshotManifest, SnapshotTable, TableOutput
from alloy_pipeline.lineage import Lineage, PartitionVersion
from alloy_pipeline.naming import raw_key, snapshot_key
from alloy_pipeline.partitions import Day
from alloy_pipeline.zone import new_version

FIRST_DAY = dt.date(2022, 1, 1)
REGION = "eu-west-2"
TABLES = {"records": 25, "records_site": 14, "records_owner": 14}
"""Each partition's tables and their column counts, as the synthetic query's: its manifests' size."""
SENSOR_LIMIT_SECONDS = 60
LEFT = ": left for the next tick"
"""In the line a tick logs for each query it leaves to the next."""
WRITERS = 16


# ------------------------------------------------------------------------- moto, requests counted


def s3_operation(method: str, path: str, query: str) -> str:
    """The S3 operation of a path-style request (`/bucket` or `/bucket/key`), as the S3 API names it."""
    if "/" in path.strip("/"):
        names = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
        return names.get(method, f"{method} object")
    if method == "GET":
        listing = urllib.parse.parse_qs(query).get("list-type") == ["2"]
        return "ListObjectsV2" if listing else "ListObjects"
    return {"HEAD": "HeadBucket", "PUT": "CreateBucket"}.get(method, f"{method} bucket")


@dataclass
class CountedRequests:
    """moto's WSGI application, behind a count of the requests it receives by S3 operation."""

    app: Any
    counts: Counter[str]
    lock: threading.Lock

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        operation = s3_operation(environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
        with self.lock:
            self.counts[operation] += 1
        return self.app(environ, start_response)

    def now(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)


@contextmanager
def counted_moto() -> Iterator[tuple[str, CountedRequests]]:
    """moto's server on a free loopback port, served as `ThreadedMotoServer` serves it, its requests counted."""
    counted = CountedRequests(DomainDispatcherApplication(create_backend_app), Counter(), threading.Lock())
    server = make_server("127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler)
    serving = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
    serving.start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line a request otherwise
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}", counted
    finally:
        server.shutdown()
        serving.join()


def aws_environment(endpoint: str) -> dict[str, str]:
    """boto3 and pyarrow pointed at moto the way production points them at AWS: through the environment."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION,
    }


# ------------------------------------------------------------------------------ the manifests


def _tables(lake: LakeResource, model: type[TableOutput], query: str, day: Day, version: str) -> dict[str, Any]:
    zone, layer = (lake.raw, RAW) if model is TableOutput else (lake.refined, REFINED)
    return {
        table: model(
            path=zone.uri_of(layer.table_dir(query, table, day, version)),
            rows=500,
            column_types=tuple((f"{table}_column_{number:02d}", "string") for number in range(columns)),
        )
        for table, columns in TABLES.items()
    }


def raw_manifest(lake: LakeResource, query: str, day: dt.date, run_id: str) -> RawManifest:
    """A committed raw day: the first a full extract, the others the day's edits."""
    version, requested = new_version(), dt.datetime.combine(day, dt.time(2), tzinfo=dt.UTC)
    return RawManifest(
        query=query,
        day=day,
        version=version,
        kind="full" if day == FIRST_DAY else "incremental",
        watermark=None if day == FIRST_DAY else requested - dt.timedelta(days=1),
        requested_at=requested,
        task_id=uuid.uuid4().hex,
        run_id=run_id,
        main_table="records",
        tables=_tables(lake, TableOutput, query, Day(day), version),
    )


def snapshot_manifest(
    lake: LakeResource, raw: RawManifest, previous: SnapshotManifest | None, run_id: str
) -> SnapshotManifest:
    """Snapshot `raw.day` as a nightly run builds it: on the day before and the day's raw partition."""
    version = new_version()
    return SnapshotManifest(
        query=raw.query,
        day=raw.day,
        version=version,
        run_id=run_id,
        main_table="records",
        base_day=previous.day if previous else None,
        raw_days=(raw.day,),
        inserted=0 if previous else 100_000,
        replaced=500 if previous else 0,
        carried_forward=99_500 if previous else 0,
        removed=0,
        tables=_tables(lake, SnapshotTable, raw.query, Day(raw.day), version),
        inputs=Lineage(base=PartitionVersion.of(previous) if previous else None, raws=(PartitionVersion.of(raw),)),
    )


def write_history(lake: LakeResource, bucket: str, query: str, days: int) -> SnapshotManifest:
    """`days` committed raw and snapshot days of `query`, one run a night, PUT side by side; the last snapshot."""
    objects: list[tuple[str, str]] = []
    previous: SnapshotManifest | None = None
    for number in range(days):
        day, run_id = FIRST_DAY + dt.timedelta(days=number), str(uuid.uuid4())
        raw = raw_manifest(lake, query, day, run_id)
        previous = snapshot_manifest(lake, raw, previous, run_id)
        for zone, layer, manifest in ((lake.raw, RAW, raw), (lake.refined, REFINED, previous)):
            key = zone.path_of(layer.manifest_path(query, Day(day))).removeprefix(f"{bucket}/")
            objects.append((key, manifest.model_dump_json()))
    client = boto3.client("s3", region_name=REGION)
    with ThreadPoolExecutor(WRITERS) as writers:
        list(writers.map(lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1].encode()), objects))
    assert previous is not None
    return previous


def run_night(lake: LakeResource, instance: dg.DagsterInstance, last: SnapshotManifest) -> SnapshotManifest:
    """The night after `last`: its query's next raw and snapshot day committed, and their materialisations recorded."""
    day, run_id = last.day + dt.timedelta(days=1), str(uuid.uuid4())
    raw = raw_manifest(lake, last.query, day, run_id)
    snapshot = snapshot_manifest(lake, raw, last, run_id)
    lake.raw.write_text(RAW.manifest_path(last.query, Day(day)), raw.model_dump_json())
    lake.refined.write_text(REFINED.manifest_path(last.query, Day(day)), snapshot.model_dump_json())
    for key in (raw_key(last.query), snapshot_key(last.query)):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=day.isoformat()))
    return snapshot


def rerun_raw_day(lake: LakeResource, instance: dg.DagsterInstance, query: str, day: dt.date) -> None:
    """Raw `day` of `query` committed again, as a new version, and its materialisation recorded."""
    lake.raw.write_text(RAW.manifest_path(query, Day(day)), raw_manifest(lake, query, day, "rerun").model_dump_json())
    instance.report_runless_asset_event(dg.AssetMaterialization(raw_key(query), partition=day.isoformat()))


# ------------------------------------------------------------------------------------ the ticks


@dataclass(frozen=True)
class Tick:
    """One evaluation of the sensor: its wall and CPU time, its S3 requests, and what it reported."""

    seconds: float
    cpu_seconds: float
    """This process's, moto's serving included."""
    requests: Counter[str]
    flags: int
    run_requests: int
    left: int
    """Queries it left to the next tick."""
    cursor: str | None


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    lake: LakeResource,
    requests: CountedRequests,
    cursor: str | None,
) -> Tick:
    """The sensor evaluated once, as the daemon evaluates it, timed and its S3 requests counted."""
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, cursor=cursor)
    lines = _Lines()
    context.log.addHandler(lines)
    before = requests.now()
    started, cpu = time.perf_counter(), time.process_time()
    result = sensor(context)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    assert isinstance(result, dg.SensorResult)
    return Tick(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        requests=requests.now() - before,
        flags=sum(isinstance(event, dg.AssetCheckEvaluation) for event in result.asset_events),
        run_requests=len(result.run_requests or []),
        left=sum(LEFT in line for line in lines.lines),
        cursor=result.cursor,
    )


@dataclass(frozen=True)
class Ticks:
    """What one row of the table measured: a tick, or the ticks until the sensor had checked every query."""

    name: str
    ticks: list[Tick]

    @property
    def requests(self) -> Counter[str]:
        return sum((tick.requests for tick in self.ticks), Counter())


@dataclass(frozen=True)
class History:
    queries: int
    years: int
    days: int
    setup_seconds: float
    rows: list[Ticks]


def measure_history(queries: int, years: int) -> History:
    """The sensor over `queries` queries with `years` of daily manifests each on moto's S3 (see above)."""
    days = (FIRST_DAY.replace(year=FIRST_DAY.year + years) - FIRST_DAY).days
    names = [f"history_{number:02d}" for number in range(1, queries + 1)]
    rerun = FIRST_DAY.replace(year=FIRST_DAY.year + 1)
    with (
        counted_moto() as (endpoint, requests),
        mock.patch.dict(os.environ, aws_environment(endpoint)),
        dg.instance_for_test() as instance,
    ):
        bucket = f"history-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        lake = LakeResource(raw_zone=f"s3a://{bucket}/raw", refined_zone=f"s3a://{bucket}/refined")
        started = time.perf_counter()
        last = [write_history(lake, bucket, query, days) for query in names]
        setup = time.perf_counter() - started
        print(f"  {queries * days * 2:,} manifests written in {setup:.0f} s; ticking ...", flush=True)

        def once(sensor: dg.SensorDefinition, cursor: str | None) -> Tick:
            return tick(sensor, instance, lake, requests, cursor)

        deployed = build_cascade_sensor(names, enabled=True)

        def until_done(cursor: str | None) -> list[Tick]:
            """The sensor as deployed, ticking from `cursor` until it leaves no query to the next tick."""
            ticks = [once(deployed, cursor)]
            while ticks[-1].left:
                ticks.append(once(deployed, ticks[-1].cursor))
            return ticks

        whole = once(build_cascade_sensor(names, enabled=True, budget_seconds=None), None)
        first = until_done(None)
        idle = once(deployed, first[-1].cursor)
        last = [run_night(lake, instance, snapshot) for snapshot in last]
        night = until_done(idle.cursor)
        rerun_raw_day(lake, instance, names[0], rerun)
        after = until_done(night[-1].cursor)
    return History(
        queries,
        years,
        days,
        setup,
        [
            Ticks("first check of every query, in one tick without the time budget", [whole]),
            Ticks("first check of every query, by the sensor as deployed", first),
            Ticks("the tick after: nothing materialised since", [idle]),
            Ticks(f"a night's run: every query's {last[0].day.isoformat()} committed", night),
            Ticks(f"raw {rerun.isoformat()} of one query re-run", after),
        ],
    )


def history_table(history: History) -> str:
    operations = sorted({operation for row in history.rows for operation in row.requests})
    lines = [
        "| what the sensor checks | ticks | longest tick (s) | ticks in all (s) | CPU in all (s) | S3 requests | "
        + " | ".join(operations)
        + f" | days flagged | rebuilds requested | every tick within {SENSOR_LIMIT_SECONDS} s |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(operations) + "---:|---:|---|",
    ]
    for row in history.rows:
        longest = max(tick.seconds for tick in row.ticks)
        counts = " | ".join(f"{row.requests[operation]:,}" for operation in operations)
        lines.append(
            f"| {row.name} | {len(row.ticks)} | {longest:.1f} | {sum(tick.seconds for tick in row.ticks):.1f} "
            f"| {sum(tick.cpu_seconds for tick in row.ticks):.1f} | {sum(row.requests.values()):,} | {counts} | {sum(tick.flags for tick in row.ticks)} "
            f"| {sum(tick.run_requests for tick in row.ticks)} | {'yes' if longest <= SENSOR_LIMIT_SECONDS else 'NO'} |"
        )
    return "\n".join(lines)
