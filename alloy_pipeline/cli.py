"""`alloy-pipeline`: the local Spark engine, the demo (the real pipeline against the local Alloy
simulator), snapshot rebuilds, Spark SQL against the catalog, which mapping file renames each table, and
the instance's limits of the snapshot pools."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import dagster as dg
from pyspark.sql import DataFrame, SparkSession

from alloy_pipeline import engine
from alloy_pipeline.aqs import AqsError, load_queries
from alloy_pipeline.demo_instance import (
    DEMO_API_KEY,
    INSTANCE_FOLDER,
    DemoRecord,
    example_queries,
    fresh_demo_instance,
    make_data_option,
)
from alloy_pipeline.dev_server import dev
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.lake import RAW, REFINED, LakeResource
from alloy_pipeline.mapping import MappingError, MappingNames, MappingResource, unmatched_files
from alloy_pipeline.naming import table_slug
from alloy_pipeline.partitions import DAYS_TAG, LONDON, Day, ranged_run_tags
from alloy_pipeline.pools import SNAPSHOT_POOL_LIMIT, limit_snapshot_pools, snapshot_pool
from alloy_pipeline.spark import connected
from alloy_pipeline.tables import read_table

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Run config that keeps step-by-step DEBUG lines off the terminal (they stay in the run's log)."""


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


def _instance() -> dg.DagsterInstance:
    """The instance under DAGSTER_HOME, so `dagster dev` shows the runs; else a throwaway one."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def _days(first: dt.date, last: dt.date) -> list[str]:
    return [(first + dt.timedelta(days=offset)).isoformat() for offset in range((last - first).days + 1)]


def _ranges(days: list[str], size: int) -> list[list[str]]:
    return [days[start : start + size] for start in range(0, len(days), size)]


def rebuild_snapshots(
    definitions: dg.Definitions, days: list[str], instance: dg.DagsterInstance, *, raise_on_error: bool = True
) -> list[dg.ExecuteInProcessResult]:
    """Re-materialise every snapshot asset for `days` in date order, as an asset backfill does.

    Each run covers as many days as the snapshot assets' backfill policy allows (31 by
    default); within a run, each day is built on the one before it and committed in turn. A
    failed run ends the rebuild (every later day is built on the one it failed at); without
    `raise_on_error` its result is the last one returned.
    """
    job = definitions.resolve_implicit_global_asset_job_def()
    snapshots = [key for key in definitions.resolve_all_asset_keys() if key.path[1] == "snapshot"]
    policy = definitions.resolve_assets_def(snapshots[0]).backfill_policy
    size = (policy.max_partitions_per_run if policy else None) or len(days)
    results = []
    for chunk in _ranges(days, size):
        result = job.execute_in_process(
            instance=instance,
            asset_selection=snapshots,
            run_config=QUIET,
            tags=ranged_run_tags(chunk[0], chunk[-1]),
            raise_on_error=raise_on_error,
        )
        results.append(result)
        if not result.success:
            break
    return results


def failure_messages(result: dg.ExecuteInProcessResult, step_key_part: str = "") -> list[str]:
    """A failed run's step errors (of the steps whose key holds `step_key_part`), each followed by its
    causes: the snapshot step says which day stopped it and which days are committed, its cause why."""
    messages = []
    for event in result.get_step_failure_events():
        if step_key_part in event.step_key:
            error = event.step_failure_data.error
            while error is not None:
                messages.append(error.message.strip())
                error = error.cause
    return messages


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "; caused by: ".join(failure_messages(result)) or "see the run's log"


def _queries(definitions: dg.Definitions) -> list[str]:
    return sorted(key.path[-1] for key in definitions.resolve_all_asset_keys() if key.path[1] == "raw")


def _snapshot_rows(spark: SparkSession, lake: LakeResource, queries: list[str], days: list[str]) -> dict[tuple, list]:
    rows: dict[tuple, list] = {}
    for query in queries:
        for manifest in lake.snapshot_manifests(query):
            if manifest.day.isoformat() in days:
                for table, entry in manifest.tables.items():
                    frame = read_table(spark, entry)
                    rows[(query, table, manifest.day)] = sorted(map(str, frame.collect()))
    return rows


def _report_day(lake: LakeResource, queries: list[str], day: str) -> None:
    for query in queries:
        raw = next(m for m in lake.raw_manifests(query) if m.day.isoformat() == day)
        snapshot = next(m for m in lake.snapshot_manifests(query) if m.day.isoformat() == day)
        print(
            f"  {query}: {raw.kind} extract; snapshot {snapshot.inserted} new, {snapshot.replaced} replaced, "
            f"{snapshot.carried_forward} carried forward"
        )
        for table, entry in raw.tables.items():
            print(f"    raw      {table:<24} {entry.rows:>5} rows  {entry.path}")
        for table, entry in snapshot.tables.items():
            print(f"    snapshot {table:<24} {entry.rows:>5} rows  {entry.path}")
        renamed = {table: entry.mapping_source for table, entry in snapshot.tables.items() if entry.mapping_source}
        for table, source in renamed.items():
            print(f"    mapping  {table:<24} renamed by {source}")
        if not renamed:
            print("    mapping  no mapping file renames this query's tables")


def demo(data: Path, days: int, aqs_dir: Path | None = None, engine_port: int = engine.DEFAULT_PORT) -> int:
    """Run the real pipeline for `days` consecutive days against the simulator, then rebuild.

    `aqs_dir` (default `ALLOY_AQS_DIR`, else the example queries) may hold a council's own AQS
    files: the simulator makes up designs and items for those whose designs it does not know, so
    a council can watch its queries and mapping files at work before it points at its tenancy.

    The runs go to an instance of the demo's own, `<data>/dagster_home`, new each time, on a
    calendar that starts at the demo's first day: `dev` then shows just this demo's runs, with
    every partition filled.
    """
    from alloy_pipeline.alloy.simulator import AlloySimulator, dataset_for_queries, demo_dataset
    from alloy_pipeline.definitions import build_definitions

    aqs_dir = (aqs_dir or Path(os.environ.get("ALLOY_AQS_DIR") or example_queries())).resolve()
    dataset = dataset_for_queries((query.request.to_body() for query in load_queries(aqs_dir)), demo_dataset())
    data = data.resolve()
    raw_zone, refined_zone = data / "raw-zone", data / "refined-zone"
    for stale in (raw_zone, refined_zone):
        shutil.rmtree(stale, ignore_errors=True)
    yesterday = dt.datetime.now(ZoneInfo(LONDON)).date() - dt.timedelta(days=1)
    keys = _days(yesterday - dt.timedelta(days=days - 1), yesterday)
    home = data / INSTANCE_FOLDER
    make_data = make_data_option(data)
    calendar = [dt.date.fromisoformat(key) for key in keys]
    fresh_demo_instance(home, DemoRecord(partitions_start=calendar[0], days=calendar))
    print("Starting the Spark engine (a Spark Connect server on loopback)", flush=True)
    settings = EngineSettings.under(data, port=engine_port)
    with ExitStack() as stack:
        stack.enter_context(engine.running(settings))
        simulator = stack.enter_context(AlloySimulator(dataset=dataset, api_key=DEMO_API_KEY))
        stack.enter_context(
            _environment(
                {
                    "SPARK_REMOTE": settings.url,
                    "ALLOY_API_URL": simulator.url,
                    "ALLOY_API_KEY": DEMO_API_KEY,
                    "ALLOY_AQS_DIR": str(aqs_dir),
                    "ALLOY_RAW_ZONE": str(raw_zone),
                    "ALLOY_REFINED_ZONE": str(refined_zone),
                    "ALLOY_CATALOG": "spark",
                    "ALLOY_PARTITIONS_START": keys[0],
                    "DAGSTER_HOME": str(home),
                }
            )
        )
        definitions = build_definitions()
        catalog = definitions.resources["catalog"]
        spark = stack.enter_context(connected(settings.url))
        for database in (catalog.database(RAW), catalog.database(REFINED)):
            spark.sql(f"DROP DATABASE IF EXISTS `{database}` CASCADE")
        lake = LakeResource(raw_zone=str(raw_zone), refined_zone=str(refined_zone))
        queries = _queries(definitions)
        daily = definitions.resolve_job_def("alloy_daily")
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        print(f"Spark engine at {settings.endpoint}; Alloy simulator at {simulator.url}; lake under {data}")
        with dg.build_resources({"mappings": definitions.resources["mappings"]}) as built:
            print(f"AQS files from {aqs_dir}; mapping files from {built.mappings.location}")
        for number, day in enumerate(keys):
            if number:
                changes = simulator.dataset.simulate_day(seed=number)
                print(
                    f"\nA day passes in Alloy: {len(changes.edited)} items edited, {len(changes.inserted)} created, "
                    f"{len(changes.deleted)} deleted, {len(changes.unlinked)} links cleared"
                )
            print(f"\n{day}: materialising alloy_daily (raw extracts, then snapshots)")
            daily.execute_in_process(partition_key=day, instance=instance, run_config=QUIET)
            _report_day(lake, queries, day)

        before = _snapshot_rows(spark, lake, queries, keys)
        print(f"\nRebuilding every snapshot from {keys[0]} to {keys[-1]} in date order, as a backfill does")
        rebuild_snapshots(definitions, keys, instance)
        identical = _snapshot_rows(spark, lake, queries, keys) == before
        print(
            f"Rebuilt {len(before)} snapshot partitions: "
            + ("identical to the originals." if identical else "DIFFERENT from the originals!")
        )
        latest = Day.from_key(keys[-1]).compact
        counts = [
            f"SELECT '{name}' AS table_name, count(*) AS row_count FROM {name} WHERE snapshot_date = '{latest}'"
            for name in (catalog.table_name(REFINED, query, query) for query in queries)
        ]
        print(f'\nThe latest snapshots, queried by table name (try it: make sql{make_data} q="{counts[0]}"):')
        _show(catalog.queryable(spark).sql(" UNION ALL ".join(counts)))
    print(f"Browse the runs, partitions, metadata and checks: `make dev{make_data}`, then open http://127.0.0.1:3000")
    return 0 if identical else 1


def sql(query: str, data: Path) -> int:
    """Run Spark SQL against the configured catalog, through SPARK_REMOTE or the local engine."""
    from alloy_pipeline.definitions import build_definitions

    catalog = build_definitions().resources["catalog"]
    with ExitStack() as stack:
        remote = os.environ.get("SPARK_REMOTE")
        if not remote:
            settings = EngineSettings.under(data)
            stack.enter_context(engine.running(settings))
            remote = settings.url
        _show(catalog.queryable(stack.enter_context(connected(remote))).sql(query))
    return 0


def _show(result: DataFrame, rows: int = 50) -> None:
    result.show(rows, truncate=False)


def rebuild(first: dt.date, last: dt.date) -> int:
    """Rebuild the snapshots of every query from `first` to `last` with the configured resources,
    saying what each run rebuilt; a failed run ends it, with its error and exit status 1."""
    from alloy_pipeline.definitions import build_definitions

    if last < first:
        print(f"alloy-pipeline rebuild: --to {last} is before --from {first}", file=sys.stderr)
        return 2
    try:
        definitions = build_definitions()
    except AqsError as error:
        print(f"alloy-pipeline rebuild: {error}", file=sys.stderr)
        return 2
    with _instance() as instance:
        for result in rebuild_snapshots(definitions, _days(first, last), instance, raise_on_error=False):
            days = result.dagster_run.tags[DAYS_TAG]
            if not result.success:
                print(
                    f"alloy-pipeline rebuild: run {result.run_id} over {days} failed: {_failure(result)}",
                    file=sys.stderr,
                )
                return 1
            print(f"rebuilt {days} in run {result.run_id}")
    return 0


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines whose columns line up: names with spaces in them cannot be split on one space."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def mappings() -> int:
    """Print every table the queries produce with the mapping file that renames it, then every file
    at the mapping location that renames nothing, for the configuration the code location reads.

    A query's tables are those of its last committed raw partition; before its first extract only
    its main table is known (joined tables are named after Alloy designs, which the AQS does not
    spell). Exits 1 when a table's mapping files would fail its snapshot (a conflict, a bad file).
    """
    from alloy_pipeline.definitions import aqs_folder, build_resources

    configured = build_resources()
    with dg.build_resources({"lake": configured["lake"], "mappings": configured["mappings"]}) as built:
        lake: LakeResource = built.lake
        mapping_files: MappingResource = built.mappings
    rows = [("query", "table", "tables from", "mapping file")]
    named: list[tuple[MappingNames, str]] = []
    unextracted: list[MappingNames] = []
    failed = False
    for query in load_queries(aqs_folder()):
        names = MappingNames.of(query)
        manifests = lake.raw_manifests(query.slug)
        if manifests:
            last = manifests[-1]
            tables = [last.main_table, *sorted(set(last.tables) - {last.main_table})]
            known = f"raw partition {last.day.isoformat()}"
        else:
            tables, known = [table_slug(query.request.file_name)], "main table only: no raw partition yet"
            unextracted.append(names)
        for table in tables:
            named.append((names, table))
            try:
                mapping = mapping_files.load(names, table)
            except MappingError as error:
                failed, file = True, f"error: {error}"
            else:
                file = PurePosixPath(mapping.source).name if mapping else "none"
            rows.append((query.slug, table, known, file))
    print(f"AQS files:     {aqs_folder()}\nMapping files: {mapping_files.location}\n")
    print("\n".join(_aligned(rows)))
    unmatched = unmatched_files(mapping_files.list_files(), named)
    print(f"\nMapping files that apply to no table: {len(unmatched) or 'none'}")
    for file_name in unmatched:
        maybe = [names.slug for names in unextracted if file_name.startswith(names.prefixes)]
        note = f"  (perhaps a joined table of {', '.join(maybe)}, which has no raw partition yet)" if maybe else ""
        print(f"  {file_name}{note}")
    return 1 if failed else 0


def pools() -> int:
    """Give every query's snapshot pool its limit on the instance under DAGSTER_HOME
    (docs/production.md, section 7), saying what each was: once per instance, and again when an
    AQS file is added. Pools of queries since removed are left as they are."""
    from alloy_pipeline.definitions import aqs_folder

    if not os.environ.get("DAGSTER_HOME"):
        print(
            "alloy-pipeline pools: DAGSTER_HOME is not set: the limits belong to the instance the daemon and the "
            "webserver use",
            file=sys.stderr,
        )
        return 2
    try:
        queries = [query.slug for query in load_queries(aqs_folder())]
    except AqsError as error:
        print(f"alloy-pipeline pools: {error}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        changed = limit_snapshot_pools(instance, queries)
    for pool in map(snapshot_pool, queries):
        if pool not in changed:
            print(f"{pool}: {SNAPSHOT_POOL_LIMIT}, as it was")
        else:
            before = "none of its own" if changed[pool] is None else changed[pool]
            print(f"{pool}: {SNAPSHOT_POOL_LIMIT}, was {before}")
    return 0


def engine_command(action: str, settings: EngineSettings) -> int:
    """`start` and `status` print only the SPARK_REMOTE value on stdout, so scripts can capture it:
    it carries the engine's token, so it goes nowhere else (stderr names the token's file)."""
    if action == "start":
        try:
            state, started = engine.start(settings)
        except engine.EngineError as error:
            print(f"alloy-pipeline engine start: {error}", file=sys.stderr)
            return 1
        verb = "started" if started else "already running"
        print(
            f"Spark engine {verb} (pid {state.pid}, master {state.master}, log {state.log}, token in "
            f"{settings.token_file})",
            file=sys.stderr,
        )
        print(settings.url)
        return 0
    if action == "stop":
        print(engine.stop(settings).message, file=sys.stderr)
        return 0
    state = engine.status(settings)
    if state is None:
        print(f"no Spark engine is running from {settings.home}", file=sys.stderr)
        return 1
    print(
        f"Spark engine running (pid {state.pid}, master {state.master}, log {state.log}, token in "
        f"{settings.token_file})",
        file=sys.stderr,
    )
    print(settings.url)
    return 0


def _master(value: str) -> str:
    try:
        return engine.spark_master(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


MASTER_HELP = (
    "Spark master: a standalone cluster's spark://host:port makes the engine its driver; default: local Spark "
    f"({engine.LOCAL_MASTER}), or the engine already running whatever its master"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alloy-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    engine_parser = commands.add_parser("engine", help="start, stop or inspect the local Spark engine")
    engine_parser.add_argument("action", choices=["start", "stop", "status"])
    engine_parser.add_argument(
        "--data", type=Path, default=Path("data"), help="folder of the engine's state and catalog"
    )
    engine_parser.add_argument("--port", type=int, default=engine.DEFAULT_PORT, help="loopback port of the server")
    engine_parser.add_argument("--memory", default="4g", help="heap of the engine's JVM, e.g. 8g")
    engine_parser.add_argument("--master", type=_master, default=None, help=MASTER_HELP)
    engine_parser.add_argument(
        "--executor-memory", default=None, help="heap of each executor on a cluster (spark.executor.memory), e.g. 4g"
    )
    engine_parser.add_argument(
        "--cores-max", type=int, default=None, help="cores the engine takes of a cluster in all (spark.cores.max)"
    )
    demo_parser = commands.add_parser("demo", help="run the pipeline for a few days against the local simulator")
    demo_parser.add_argument(
        "--data", type=Path, default=Path("data"), help="folder for the demo lake (its zones are wiped)"
    )
    demo_parser.add_argument("--days", type=int, default=3, help="consecutive days to materialise")
    demo_parser.add_argument(
        "--aqs-dir",
        type=Path,
        default=None,
        help="folder of AQS files to run (default ALLOY_AQS_DIR, else the checkout's aqs_queries); designs the simulator "
        "does not know are made up from the files",
    )
    demo_parser.add_argument(
        "--engine-port", type=int, default=engine.DEFAULT_PORT, help="loopback port of the data folder's engine"
    )
    dev_parser = commands.add_parser(
        "dev", help="dagster dev on a data folder's instance (the demo's), its engine and the simulator"
    )
    dev_parser.add_argument(
        "--data", type=Path, default=Path("data"), help="data folder: instance in <data>/dagster_home, lake, engine"
    )
    dev_parser.add_argument("--port", type=int, default=3000, help="loopback port of the Dagster UI")
    dev_parser.add_argument("--simulator-port", type=int, default=8765, help="loopback port of the Alloy simulator")
    dev_parser.add_argument(
        "--engine-port", type=int, default=engine.DEFAULT_PORT, help="loopback port of the data folder's engine"
    )
    dev_parser.add_argument("--master", type=_master, default=None, help=MASTER_HELP)
    rebuild_parser = commands.add_parser("rebuild", help="rebuild snapshot partitions in date order")
    rebuild_parser.add_argument("--from", dest="first", type=dt.date.fromisoformat, required=True, help="YYYY-MM-DD")
    rebuild_parser.add_argument("--to", dest="last", type=dt.date.fromisoformat, required=True, help="YYYY-MM-DD")
    sql_parser = commands.add_parser("sql", help="run Spark SQL against the configured catalog")
    sql_parser.add_argument("query", help='e.g. "SHOW TABLES IN alloy_refined"')
    sql_parser.add_argument(
        "--data", type=Path, default=Path("data"), help="folder of the engine (without SPARK_REMOTE)"
    )
    commands.add_parser(
        "mappings", help="list each table with the mapping file that renames it, and files that rename nothing"
    )
    commands.add_parser(
        "pools",
        help="limit each query's snapshot pool to one step at a time on the instance under DAGSTER_HOME",
    )
    args = parser.parse_args(argv)
    if args.command == "engine":
        settings = EngineSettings.under(
            args.data.resolve(),
            port=args.port,
            driver_memory=args.memory,
            master=args.master,
            executor_memory=args.executor_memory,
            cores_max=args.cores_max,
        )
        return engine_command(args.action, settings)
    if args.command in ("demo", "sql"):
        # Their `finally` blocks release the engine: SIGTERM must unwind them as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.command == "demo":
            return demo(args.data, args.days, args.aqs_dir, args.engine_port)
        if args.command == "dev":
            return dev(args.data, args.port, args.simulator_port, args.engine_port, args.master)
    except FileNotFoundError as error:
        print(f"alloy-pipeline {args.command}: {error}", file=sys.stderr)
        return 2
    except engine.EngineError as error:
        print(f"alloy-pipeline {args.command}: {error}", file=sys.stderr)
        return 1
    if args.command == "sql":
        return sql(args.query, args.data.resolve())
    if args.command == "mappings":
        return mappings()
    if args.command == "pools":
        return pools()
    return rebuild(args.first, args.last)


if __name__ == "__main__":
    sys.exit(main())
