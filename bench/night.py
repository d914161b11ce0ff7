"""Benchmark "a night": one daily run of many queries whose Alloy exports each take a while.

Alloy lets an API key hold `ALLOY_MAX_CONCURRENT_EXPORTS` exports (4) in flight, and a raw step
spends most of its time waiting for its export, so a night's run should take about
ceil(queries / 4) export waves, whatever the machine's core count; the target allows half as
much again for launching steps, converting and snapshotting. The bench starts its own engine
(`harness.py`, as bench/run.py does, on a free port other than 15002) and a simulator whose
export tasks each take `--export-seconds`, makes the queries by copying an example AQS file
under distinct names (the demo's data, 100 items and one table each, so the Spark work is
small), and runs the `alloy_daily` job for one day as the schedule does, from a user's shell:
`dagster job execute` in a subprocess, its instance a temporary DAGSTER_HOME with the project's
deploy/dagster.yaml (so the `alloy_api` pool of 4 applies too).

It measures the wall time of that command and of the run, the most exports in flight at once (each
raw step's `requested_at` and `wait_seconds`, from the run's event log), the most raw and snapshot
steps running at once (the event log again), and, sampling /proc every half second, the most step
processes alive at once and their memory: the largest RSS of any one, and the largest sum of
RSS and of PSS over those alive together (PSS shares the pages they have in common out among them,
so it is what they cost the machine together).

    python bench/night.py --queries 11 30 --write docs/benchmarks.md --label "…"

`--write` replaces the "A night" section of that file, keeping its rows of other labels (a row is
one label and one query count), so one section can hold a run before a change and one after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from harness import API_KEY, BIN, REPO, BenchEngine, bench_engine, event_time, machine, user_environment

from alloy_pipeline.alloy.simulator import AlloySimulator, dataset_for_queries, demo_dataset
from alloy_pipeline.aqs import load_query

EXAMPLE = REPO / "aqs_queries" / "Gully Inspections.json"
DAY = "2024-03-01"
MAX_EXPORTS = 4
"""Alloy's limit, `ALLOY_MAX_CONCURRENT_EXPORTS`' default, which the bench sets explicitly."""
SLACK = 1.5
SAMPLE_SECONDS = 0.5
TIMEOUT_SECONDS = 1800
SECTION = "## A night"
STEP_PROCESS = b"spawn_main"
"""In the command line of the step processes the multiprocess executor spawns."""
FORK_SERVER = b"multiprocessing.forkserver"
"""In the command line of the fork server that forks them, under `start_method: forkserver`."""


def target_seconds(queries: int, export_seconds: float) -> float:
    """1.5 × the export waves Alloy's limit allows × one export."""
    return SLACK * math.ceil(queries / MAX_EXPORTS) * export_seconds


# ------------------------------------------------------------------------- the step processes


def _children() -> dict[int, list[int]]:
    """Every process's children, by pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _step_processes(run: int) -> list[int]:
    """The step processes the run's process `run` started, not their own children.

    With `spawn` they are its children, each a `spawn_main`; with `forkserver` they are the children
    of its fork server, and have its command line.
    """
    children, steps, todo = _children(), [], [run]
    while todo:
        parent = todo.pop()
        for pid in children.get(parent, []):
            command = _cmdline(pid)
            if STEP_PROCESS in command:
                steps.append(pid)
            elif FORK_SERVER in command:
                steps.extend(children.get(pid, []))
            else:
                todo.append(pid)
    return steps


def _memory_kb(pid: int) -> tuple[int, int] | None:
    """RSS and PSS of `pid` in kB, or None once it has gone."""
    try:
        rss = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
        pss = next(
            line for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:")
        )
    except (OSError, StopIteration):
        return None
    return int(rss.split()[1]), int(pss.split()[1])


@dataclass
class ProcessSampler:
    """The step processes under `root`, sampled from a thread until `stop` is called.

    Sampling misses a process that lives less than `SAMPLE_SECONDS`, which no step does.
    """

    root: int
    most_alive: int = 0
    largest_rss_kb: int = 0
    most_rss_together_kb: int = 0
    most_pss_together_kb: int = 0
    seen: set[int] = field(default_factory=set)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._sample_until_stopped, name="step-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _sample_until_stopped(self) -> None:
        while not self._stopping.wait(SAMPLE_SECONDS):
            steps = _step_processes(self.root)
            memory = [kb for kb in map(_memory_kb, steps) if kb is not None]
            self.seen.update(steps)
            self.most_alive = max(self.most_alive, len(memory))
            self.largest_rss_kb = max([self.largest_rss_kb, *(rss for rss, _ in memory)])
            self.most_rss_together_kb = max(self.most_rss_together_kb, sum(rss for rss, _ in memory))
            self.most_pss_together_kb = max(self.most_pss_together_kb, sum(pss for _, pss in memory))


# ------------------------------------------------------------------------------------ a night


@dataclass(frozen=True)
class Night:
    """One run of `queries` queries, in seconds and MB."""

    queries: int
    export_seconds: float
    wall: float
    """`dagster job execute` from launch to exit."""
    run: float
    """RUN_START to RUN_SUCCESS."""
    exports_in_flight: int
    raw_steps_at_once: int
    snapshot_steps_at_once: int
    step_processes: int
    step_processes_at_once: int
    largest_step_rss_mb: float
    rss_together_mb: float
    pss_together_mb: float

    @property
    def target(self) -> float:
        return target_seconds(self.queries, self.export_seconds)

    @property
    def verdict(self) -> str:
        return "met" if self.wall <= self.target else "missed"


def _night_environment(root: Path, queries: int, alloy_url: str, remote: str) -> dict[str, str]:
    """`queries` copies of the example AQS file and a fresh instance, as a user would set them up."""
    aqs = root / "aqs"
    aqs.mkdir(parents=True)
    for number in range(1, queries + 1):
        shutil.copyfile(EXAMPLE, aqs / f"Night {number:02d}.json")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return user_environment(
        root, alloy_url, remote, f"bench_night_{queries}", ALLOY_MAX_CONCURRENT_EXPORTS=str(MAX_EXPORTS)
    )


def _most_at_once(windows: Iterable[tuple[float, float]]) -> int:
    """The most windows open at one moment (one that ends as another starts does not overlap it)."""
    edges = sorted((moment, step) for start, end in windows for moment, step in ((start, 1), (end, -1)))
    most = alive = 0
    for _, step in edges:
        alive += step
        most = max(most, alive)
    return most


def _step_windows(records: list[dg.EventLogEntry], kind: str) -> list[tuple[float, float]]:
    """STEP_START to STEP_SUCCESS of the steps of `kind` (`raw` or `snapshot`)."""
    starts: dict[str, float] = {}
    windows = []
    for record in records:
        event = record.dagster_event
        if event is None or not event.step_key or f"__{kind}__" not in event.step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            windows.append((starts[event.step_key], record.timestamp))
    return windows


def _export_windows(records: list[dg.EventLogEntry]) -> list[tuple[float, float]]:
    """Each export from its request to the client noticing it was done, from the raw steps' metadata."""
    windows = []
    for record in records:
        event = record.dagster_event
        if event is None or event.event_type != dg.DagsterEventType.ASSET_MATERIALIZATION:
            continue
        metadata = event.step_materialization_data.materialization.metadata
        if "requested_at" in metadata:
            requested = dt.datetime.fromisoformat(metadata["requested_at"].value).timestamp()
            windows.append((requested, requested + metadata["wait_seconds"].value))
    return windows


def measure_night(bench: BenchEngine, root: Path, queries: int, export_seconds: float) -> Night:
    """One `alloy_daily` run of `queries` queries, each export taking `export_seconds`."""
    dataset = dataset_for_queries([load_query(EXAMPLE).request.to_body()], demo_dataset())
    with AlloySimulator(dataset=dataset, api_key=API_KEY, task_seconds=export_seconds) as simulator:
        environment = _night_environment(root, queries, simulator.url, bench.url)
        command = [str(BIN / "dagster"), "job", "execute", "-m", "alloy_pipeline.definitions", "-j", "alloy_daily"]
        command += ["--tags", json.dumps({"dagster/partition": DAY})]
        output = root / "dagster-job-execute.log"
        with output.open("w") as log:
            launched = time.time()
            process = subprocess.Popen(command, env=environment, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            sampler = ProcessSampler(process.pid).start()
            try:
                returncode = process.wait(timeout=TIMEOUT_SECONDS)
            finally:
                sampler.stop()
                if process.poll() is None:
                    process.kill()
            exited = time.time()
    if returncode != 0:
        raise RuntimeError(f"alloy_daily for {queries} queries failed:\n{output.read_text()[-4000:]}")
    with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        [run] = instance.get_runs()
        records = list(instance.all_logs(run.run_id))
    raw, snapshots = _step_windows(records, "raw"), _step_windows(records, "snapshot")
    if len(raw) != queries or len(snapshots) != queries:
        raise RuntimeError(f"expected {queries} raw and snapshot steps, found {len(raw)} and {len(snapshots)}")
    return Night(
        queries=queries,
        export_seconds=export_seconds,
        wall=exited - launched,
        run=event_time(records, dg.DagsterEventType.RUN_SUCCESS) - event_time(records, dg.DagsterEventType.RUN_START),
        exports_in_flight=_most_at_once(_export_windows(records)),
        raw_steps_at_once=_most_at_once(raw),
        snapshot_steps_at_once=_most_at_once(snapshots),
        step_processes=len(sampler.seen),
        step_processes_at_once=sampler.most_alive,
        largest_step_rss_mb=sampler.largest_rss_kb / 1024,
        rss_together_mb=sampler.most_rss_together_kb / 1024,
        pss_together_mb=sampler.most_pss_together_kb / 1024,
    )


# ------------------------------------------------------------------------------- the section

HEADER = (
    "| executor | queries | export (s) | target (s) | measured: wall / run (s) | exports in flight, max "
    "| steps at once, raw / snapshot | step processes at once / in all | step RSS, largest / all at once (MB) "
    "| step PSS, all at once (MB) | verdict | run of |"
)
RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"


def _row(label: str, night: Night, today: str) -> str:
    return (
        f"| {label} | {night.queries} | {night.export_seconds:g} | {night.target:.0f} "
        f"| {night.wall:.1f} / {night.run:.1f} | {night.exports_in_flight} "
        f"| {night.raw_steps_at_once} / {night.snapshot_steps_at_once} "
        f"| {night.step_processes_at_once} / {night.step_processes} "
        f"| {night.largest_step_rss_mb:.0f} / {night.rss_together_mb:.0f} | {night.pss_together_mb:.0f} "
        f"| {night.verdict} | {today} |"
    )


def _section(rows: list[str], machine: str) -> str:
    return (
        "\n".join(
            [
                SECTION,
                "",
                textwrap.fill(
                    "`python bench/night.py`: one run of the `alloy_daily` job for one day, as the schedule runs it "
                    "(`dagster job execute` in a subprocess, the engine up), of N copies of an example query whose "
                    "(simulated) Alloy exports each take the export time. Alloy allows "
                    f"`ALLOY_MAX_CONCURRENT_EXPORTS` = {MAX_EXPORTS} exports in flight, so the target is "
                    f"{SLACK:g} × ceil(N / {MAX_EXPORTS}) × the export time, on the wall time. Exports in flight "
                    "and steps at once come from the run's event log; step processes and their memory from /proc, "
                    "sampled every 0.5 s (RSS counts the pages step processes share in each of them, PSS shares "
                    f"them out). Machine: {machine}. Rows are replaced by label and N, so the table keeps the "
                    "runs before a change beside those after it.",
                    width=100,
                    break_on_hyphens=False,
                ),
                "",
                HEADER,
                RULE,
                *rows,
            ]
        )
        + "\n"
    )


def _key(row: str) -> tuple[str, int] | None:
    """A result row's label and query count; None for any other line."""
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    return (cells[0], int(cells[1])) if row.startswith("| ") and len(cells) > 2 and cells[1].isdigit() else None


def write_section(path: Path, label: str, nights: list[Night]) -> None:
    """Put the "A night" section into `path`, before its first run, replacing this label's rows.

    Only the heading, the paragraph and the table are the bench's: what follows the table, up to
    the next section, is discussion of the figures, and stays.
    """
    text = path.read_text()
    today = dt.date.today().isoformat()
    new = {(label, night.queries): _row(label, night, today) for night in nights}
    found = re.search(
        rf"^{re.escape(SECTION)}\n.*?^{re.escape(RULE)}\n(?:\|[^\n]*\n)*", text, flags=re.MULTILINE | re.DOTALL
    )
    kept = [line for line in found[0].splitlines() if _key(line) and _key(line) not in new] if found else []
    rows = kept + list(new.values())
    labels = list(dict.fromkeys(_key(row)[0] for row in rows))
    rows.sort(key=lambda row: (labels.index(_key(row)[0]), _key(row)[1]))
    section = _section(rows, machine())
    if found:
        text = text[: found.start()] + section + text[found.end() :]
    else:
        first_run = re.search(r"^## ", text, flags=re.MULTILINE)
        at = first_run.start() if first_run else len(text)
        text = text[:at] + section + "\n" + text[at:]
    path.write_text(text)


# ---------------------------------------------------------------------------------------- main


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, nargs="+", default=[11, 30], help="the query counts measured")
    parser.add_argument("--export-seconds", type=float, default=40.0, help="how long each export task takes")
    parser.add_argument("--label", default="this checkout", help="the executor column: what was measured")
    parser.add_argument("--write", type=Path, help="put the results in the 'A night' section of this Markdown file")
    parser.add_argument("--folder", type=Path, help="work in this new folder and keep it (default: a temporary one)")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    nights = []
    with ExitStack() as stack:
        folder = args.folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alloy-night-")))
        print("starting the bench's Spark engine ...", flush=True)
        with bench_engine(folder / "engine") as bench:
            for queries in args.queries:
                print(f"a night of {queries} queries, exports of {args.export_seconds:g} s ...", flush=True)
                nights.append(measure_night(bench, folder / f"night-{queries}", queries, args.export_seconds))
                print(_row(args.label, nights[-1], dt.date.today().isoformat()), flush=True)
    today = dt.date.today().isoformat()
    print("\n" + "\n".join([HEADER, RULE, *(_row(args.label, night, today) for night in nights)]), flush=True)
    if args.write:
        write_section(args.write, args.label, nights)


if __name__ == "__main__":
    main()
