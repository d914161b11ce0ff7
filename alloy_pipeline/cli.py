"""`alloy-pipeline`: the local Spark engine, the demo (the real pipeline against the local Alloy
simulator), snapshot rebuilds, Spark SQL against the catalog, and which mapping file renames each table."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import BaseModel, ConfigDict, ValidationError
from pyspark.sql import DataFrame, SparkSession

from alloy_pipeline import engine
from alloy_pipeline.aqs import load_queries
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.lake import RAW, REFINED, LakeResource
from alloy_pipeline.mapping import MappingError, MappingNames, MappingResource, unmatched_files
from alloy_pipeline.naming import table_slug
from alloy_pipeline.partitions import LONDON, Day, ranged_run_tags
from alloy_pipeline.spark import connected
from alloy_pipeline.tables import read_table

DEMO_API_KEY = "demo-key"
INSTANCE_FOLDER = "dagster_home"
"""The Dagster instance of a data folder, `<data>/dagster_home`: the demo records its runs there and
`dev` serves it, whatever DAGSTER_HOME says (the demo wipes it, so it must be the demo's own)."""
DEMO_RECORD = "alloy-demo.json"
"""The demo's record in its instance folder: its calendar, for `dev`, and the mark that the folder
is the demo's to wipe."""
TELEMETRY_FOLDER = ".telemetry"
"""Dagster's id of an instance, kept when the demo wipes its instance: a new one would print
Dagster's telemetry notice and welcome on every demo."""
DEV_STOP_SECONDS = 10.0
"""How long `dev` lets `dagster dev` shut down in order before it kills what is left of it."""
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


class DemoRecord(BaseModel):
    """What a demo leaves beside its runs, in `<data>/dagster_home/alloy-demo.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partitions_start: dt.date
    """The demo's first day: `dev` starts the calendar there, so the UI shows the demo's days as all
    of the partitions, not 3 of a thousand since 2024."""
    days: list[dt.date]


def project_root() -> Path:
    """The checkout the package is installed from (editable, `make install`): `deploy/` and
    `workspace.yaml` live there, beside the package, and are not part of it."""
    return Path(__file__).resolve().parent.parent


def instance_config() -> Path:
    """The project's `deploy/dagster.yaml`, which the demo's and `dev`'s instances run with."""
    path = project_root() / "deploy" / "dagster.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"the instance configuration {path} is missing: `alloy-pipeline demo` and `dev` run from a checkout "
            "of the repository, installed with `pip install -e .` (`make install`)"
        )
    return path


def example_queries() -> Path:
    """The checkout's `aqs_queries/`: the demo's and `dev`'s AQS files when ALLOY_AQS_DIR is unset,
    from whatever folder they are run."""
    return project_root() / "aqs_queries"


def demo_record(home: Path) -> DemoRecord | None:
    """The record of the demo whose instance `home` is, or None when no demo made it."""
    path = home / DEMO_RECORD
    if home.is_symlink() or not path.is_file():
        return None
    try:
        return DemoRecord.model_validate_json(path.read_text())
    except ValidationError as error:
        raise ValueError(f"{path} is not a demo's record ({error.error_count()} errors): remove it") from error


def _make_data(data: Path) -> str:
    """The `DATA=` a make command needs to name the data folder `data` (none for the default)."""
    return "" if data == Path("data").resolve() else f" DATA={data}"


def _fresh_demo_instance(home: Path, record: DemoRecord) -> None:
    """Make `home` a new, empty instance with the project's configuration and `record`.

    Only a folder a demo made (it holds the demo's record) is wiped. Anything else found there (a
    folder `make dev` used before demos had records, a link to someone's DAGSTER_HOME) is moved
    aside, never deleted, and the demo says where.
    """
    config = instance_config()
    if demo_record(home) is not None:
        for entry in home.iterdir():
            if entry.name == TELEMETRY_FOLDER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif home.is_dir() and not home.is_symlink() and not any(home.iterdir()):
        home.rmdir()
    elif home.exists() or home.is_symlink():
        aside = home.with_name(f"{home.name}.before-demo-{dt.datetime.now():%Y%m%d-%H%M%S}")
        home.rename(aside)
        print(f"Moved {home}, which no demo made, to {aside}: the demo starts its instance afresh")
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, home / "dagster.yaml")
    (home / DEMO_RECORD).write_text(record.model_dump_json(indent=2) + "\n")


def dev_environment(data: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment `dev` gives `dagster dev`, less the engine and the simulator: `environ`, with
    the instance, lake and AQS folder of `data` and the calendar of the demo recorded there.

    The instance is always `<data>/dagster_home`. The others are defaults: a variable set in
    `environ` (a user's own ALLOY_PARTITIONS_START, say) wins. Paths are absolute, since the
    code server and run workers need not share the caller's working directory.
    """
    home = data / INSTANCE_FOLDER
    defaults = {"ALLOY_RAW_ZONE": str(data / "raw-zone"), "ALLOY_REFINED_ZONE": str(data / "refined-zone")}
    record = demo_record(home)
    if record is not None:
        defaults["ALLOY_PARTITIONS_START"] = record.partitions_start.isoformat()
    aqs_dir = Path(environ.get("ALLOY_AQS_DIR") or example_queries()).resolve()
    return defaults | dict(environ) | {"ALLOY_AQS_DIR": str(aqs_dir), "DAGSTER_HOME": str(home)}


def _days(first: dt.date, last: dt.date) -> list[str]:
    return [(first + dt.timedelta(days=offset)).isoformat() for offset in range((last - first).days + 1)]


def _ranges(days: list[str], size: int) -> list[list[str]]:
    return [days[start : start + size] for start in range(0, len(days), size)]


def rebuild_snapshots(definitions: dg.Definitions, days: list[str], instance: dg.DagsterInstance) -> None:
    """Re-materialise every snapshot asset for `days` in date order, as an asset backfill does.

    Each run covers as many days as the snapshot assets' backfill policy allows (31 by
    default); within a run, each day is built on the one before it and committed in turn.
    """
    job = definitions.resolve_implicit_global_asset_job_def()
    snapshots = [key for key in definitions.resolve_all_asset_keys() if key.path[1] == "snapshot"]
    policy = definitions.resolve_assets_def(snapshots[0]).backfill_policy
    size = (policy.max_partitions_per_run if policy else None) or len(days)
    for chunk in _ranges(days, size):
        job.execute_in_process(
            instance=instance,
            asset_selection=snapshots,
            run_config=QUIET,
            tags=ranged_run_tags(chunk[0], chunk[-1]),
        )


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
    make_data = _make_data(data)
    calendar = [dt.date.fromisoformat(key) for key in keys]
    _fresh_demo_instance(home, DemoRecord(partitions_start=calendar[0], days=calendar))
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


def dev(data: Path, port: int, simulator_port: int, engine_port: int) -> int:
    """`make dev`: `dagster dev` on the instance and calendar of `data` (the demo's, see
    `dev_environment`), against its engine and the simulator, until Ctrl-C or SIGTERM.

    The engine runs in a session of its own (`engine.start`), so it outlives this. The simulator is
    served from this process. `dagster dev` runs in a session of its own too, and this process
    stops it: a signal to make's process group would reach dagster dev and each of its children at
    once, racing dagster dev's own ordered shutdown (it restarts a code server it finds exited, for
    instance). So a signal here becomes one SIGTERM to dagster dev, which stops its webserver,
    daemon and code servers in turn; what is left of its session after that, or after
    `DEV_STOP_SECONDS`, is killed.
    """
    from alloy_pipeline.alloy.simulator import AlloySimulator, dataset_for_queries, demo_dataset

    data = data.resolve()
    environment = dev_environment(data, os.environ)
    home = Path(environment["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(instance_config(), home / "dagster.yaml")
    aqs_dir = Path(environment["ALLOY_AQS_DIR"])
    dataset = dataset_for_queries((query.request.to_body() for query in load_queries(aqs_dir)), demo_dataset())
    settings = EngineSettings.under(data, port=engine_port)
    engine.start(settings)
    # A plain list, not a threading.Event: a second signal (make forwards its SIGTERM to this
    # process, which had one of its own) would find Event.set's lock held by the first, forever.
    received: list[int] = []
    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, lambda signum, frame: received.append(signum))
    with AlloySimulator(dataset, api_key=DEMO_API_KEY, port=simulator_port, task_seconds=2.0) as simulator:
        print(
            f"Instance {home} (partitions from {environment.get('ALLOY_PARTITIONS_START', 'the default start')}); "
            f"Alloy simulator at {simulator.url} (key {DEMO_API_KEY}); dagster dev steps are clients of the Spark "
            f"engine at {settings.endpoint}, which stays running afterwards (make engine-stop{_make_data(data)})",
            flush=True,
        )
        environment |= {"SPARK_REMOTE": settings.url, "ALLOY_API_URL": simulator.url, "ALLOY_API_KEY": DEMO_API_KEY}
        command = [sys.executable, "-m", "dagster", "dev", "--host", "127.0.0.1", "--port", str(port)]
        workspace = ["--workspace", str(project_root() / "workspace.yaml")]
        process = subprocess.Popen([*command, *workspace], env=environment, start_new_session=True)
        try:
            while process.poll() is None and not received:
                time.sleep(0.2)
        finally:
            _stop_dagster(process)
    return 0 if received else process.returncode


def _stop_dagster(process: subprocess.Popen[bytes]) -> None:
    """End `dagster dev` (`process`, the leader of its own session) and everything left in its
    process group: run workers, a code server restarted mid-shutdown."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(DEV_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"dagster dev did not stop within {DEV_STOP_SECONDS:g} s: killing it", file=sys.stderr)
    for each, patience in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        deadline = time.monotonic() + patience
        try:
            os.killpg(process.pid, each)
            while time.monotonic() < deadline:
                process.poll()
                os.killpg(process.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            break
    process.wait()


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
    """Rebuild the snapshots of every query from `first` to `last` with the configured resources."""
    from alloy_pipeline.definitions import build_definitions

    if last < first:
        print(f"--to {last} is before --from {first}", file=sys.stderr)
        return 2
    rebuild_snapshots(build_definitions(), _days(first, last), _instance())
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


def engine_command(action: str, settings: EngineSettings) -> int:
    """`start` and `status` print only the SPARK_REMOTE value on stdout, so scripts can capture it:
    it carries the engine's token, so it goes nowhere else (stderr names the token's file)."""
    if action == "start":
        state, started = engine.start(settings)
        verb = "started" if started else "already running"
        print(
            f"Spark engine {verb} (pid {state.pid}, log {state.log}, token in {settings.token_file})", file=sys.stderr
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
    print(f"Spark engine running (pid {state.pid}, log {state.log}, token in {settings.token_file})", file=sys.stderr)
    print(settings.url)
    return 0


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
    args = parser.parse_args(argv)
    if args.command == "engine":
        settings = EngineSettings.under(args.data.resolve(), port=args.port, driver_memory=args.memory)
        return engine_command(args.action, settings)
    if args.command in ("demo", "sql"):
        # Their `finally` blocks release the engine: SIGTERM must unwind them as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.command == "demo":
            return demo(args.data, args.days, args.aqs_dir, args.engine_port)
        if args.command == "dev":
            return dev(args.data, args.port, args.simulator_port, args.engine_port)
    except FileNotFoundError as error:
        print(f"alloy-pipeline {args.command}: {error}", file=sys.stderr)
        return 2
    if args.command == "sql":
        return sql(args.query, args.data.resolve())
    if args.command == "mappings":
        return mappings()
    return rebuild(args.first, args.last)


if __name__ == "__main__":
    sys.exit(main())
