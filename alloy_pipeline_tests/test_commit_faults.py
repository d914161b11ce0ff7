"""A failed commit never costs the committed version: failures injected at every step of it.

Three levels. The commit protocol itself, on a local folder and on moto's S3 with the Glue
catalog (Spark cannot write to S3 here, so the tables are small files). The real raw asset,
re-running a day through the test engine with its Hive catalog. And a snapshot run killed with
SIGKILL in the middle of its commit. After every failure the previous version must still be
what the manifest and the catalog name, complete; the next run clears what was left.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import dagster as dg
import pytest

from alloy_pipeline.assets.publication import Publisher, runs_alive
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.commit import ConcurrentCommitError, PartitionCommit
from alloy_pipeline.lake import PENDING, RAW, STAGING, LakeResource, RawManifest, TableOutput, landing_dir
from alloy_pipeline.partitions import Day
from alloy_pipeline.s3_uri import for_spark
from alloy_pipeline.zone import VERSION_PREFIX, Zone
from alloy_pipeline_tests.harness import REPO, Pipeline, failure_text, rows_of

QUERY = "dw_container_job"
DAY = Day.from_key("2024-03-01")
TABLES = ("jobs", "streets_1")


class Injected(RuntimeError):
    """The failure a test injects; nothing in the pipeline raises it."""


@dataclass
class FailAt:
    """Raises `Injected` on the `nth` call of one method whose first argument contains `matching`."""

    nth: int
    matching: str = ""
    calls: int = 0

    def wrap(self, original: Callable[..., object]) -> Callable[..., object]:
        def wrapped(owner: object, first: object, *args: object, **kwargs: object) -> object:
            if self.matching in str(first):
                self.calls += 1
                if self.calls == self.nth:
                    raise Injected(f"injected failure in {original.__name__}")
            return original(owner, first, *args, **kwargs)

        return wrapped


STEPS = {
    "pending record": ("write_text", FailAt(1, PENDING)),
    "first move": ("move_dir", FailAt(1)),
    "second move": ("move_dir", FailAt(2)),
    "manifest write": ("write_text_if", FailAt(1, "/manifests/")),
    "catalog": ("register", FailAt(1)),
    "old version delete": ("delete_version", FailAt(1)),
}
"""Each step of a commit: the method that does it, and which of its calls to fail."""
BEFORE_MANIFEST = ("pending record", "first move", "second move", "manifest write")


def inject(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    method, template = STEPS[step]
    owner = CatalogResource if method == "register" else Zone
    monkeypatch.setattr(owner, method, FailAt(template.nth, template.matching).wrap(getattr(owner, method)))


def local(location: str) -> Path:
    """A `file:` URI as the catalog or the manifest writes it, as a path."""
    return Path("/" + re.sub(r"^file:/*", "", location).rstrip("/"))


# -- the protocol, local and on S3 ------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeResource:
    if request.param == "s3":
        bucket = request.getfixturevalue("bucket")
        return LakeResource(
            raw_zone=f"s3a://{bucket}/raw", refined_zone=f"s3a://{bucket}/refined", cleanup_grace_minutes=0
        )
    return LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=0)


@pytest.fixture
def glue(aws: str) -> CatalogResource:
    suffix = uuid.uuid4().hex[:8]
    return CatalogResource(backend="glue", raw_database=f"raw_{suffix}", refined_database=f"refined_{suffix}")


def no_run_alive(run_id: str) -> bool:
    return False


def publisher(
    lake: LakeResource, catalog: CatalogResource, spark, alive: Callable[[str], bool] = no_run_alive
) -> Publisher:
    return Publisher(lake, catalog, spark, RAW, QUERY, logging.getLogger("test"), alive)


@dataclass
class Staged:
    """A run that has begun DAY and staged its version, ready to publish it."""

    commit: PartitionCommit
    manifest: RawManifest
    moves: dict[str, str]

    def publish(self, pub: Publisher) -> RawManifest:
        pub.publish(self.commit, self.manifest, self.moves)
        return self.manifest


def publish_version(pub: Publisher, label: str) -> RawManifest:
    """Stage both tables and the CSV, each file holding `label`, and publish them as a new version of DAY."""
    return stage_version(pub, label).publish(pub)


def stage_version(pub: Publisher, label: str) -> Staged:
    """Begin DAY as run `label` and stage both tables and the CSV, each file holding `label`."""
    zone = pub.zone
    commit = pub.begin(DAY, run_id=label)
    for table in TABLES:
        zone.write_text(f"{commit.staging}/parquet/{table}/part-0.parquet", f"{table} {label}")
    zone.write_text(f"{commit.staging}/csv/Jobs.csv", f"csv {label}")
    manifest = RawManifest(
        query=QUERY,
        day=DAY.date,
        version=commit.version,
        kind="full",
        watermark=None,
        requested_at=dt.datetime(2024, 3, 2, tzinfo=dt.UTC),
        task_id=label,
        run_id=label,
        main_table="jobs",
        tables={
            table: TableOutput(
                path=zone.uri_of(RAW.table_dir(QUERY, table, DAY, commit.version)),
                rows=1,
                column_types=(("item_id", "string"),),
            )
            for table in TABLES
        },
    )
    moves = {f"{commit.staging}/csv": landing_dir(QUERY, DAY, commit.version)} | {
        f"{commit.staging}/parquet/{table}": RAW.table_dir(QUERY, table, DAY, commit.version) for table in TABLES
    }
    return Staged(commit, manifest, moves)


def glue_location(catalog: CatalogResource, table: str) -> str:
    [partition] = boto3.client("glue").get_partitions(DatabaseName=catalog.raw_database, TableName=f"{QUERY}_{table}")[
        "Partitions"
    ]
    return for_spark(partition["StorageDescriptor"]["Location"])


def assert_whole(lake: LakeResource, manifest: RawManifest, label: str) -> None:
    """Every file of `manifest`'s version is there and is `label`'s."""
    zone = lake.raw
    for table, entry in manifest.tables.items():
        assert zone.read_text(f"{zone.relative_of(entry.path)}/part-0.parquet") == f"{table} {label}"
    assert zone.read_text(f"{landing_dir(QUERY, DAY, manifest.version)}/Jobs.csv") == f"csv {label}"


def versions_on_disk(lake: LakeResource) -> set[str]:
    zone = lake.raw
    folders = [landing_dir(QUERY, DAY)] + [RAW.table_dir(QUERY, table, DAY, "x").rsplit("/", 1)[0] for table in TABLES]
    return {name for folder in folders for name in zone.list_names(folder)}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_any_step_of_a_commit_keeps_a_whole_committed_version(
    step: str, lake: LakeResource, glue: CatalogResource, spark, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = publisher(lake, glue, spark)
    old = publish_version(pub, "old")
    with monkeypatch.context() as patched:
        inject(patched, step)
        with pytest.raises(Injected):
            publish_version(pub, "new")

    [committed] = lake.raw_manifests(QUERY)
    if step in BEFORE_MANIFEST:
        assert committed == old
    assert_whole(lake, committed, "old" if committed == old else "new")
    for table in TABLES:
        location = glue_location(glue, table)
        assert location in (old.tables[table].path, committed.tables[table].path)
        assert lake.raw.read_text(f"{lake.raw.relative_of(location)}/part-0.parquet").startswith(table), (
            "the catalog names a version that is whole"
        )

    pub.recover()
    assert versions_on_disk(lake) == {committed.version}
    assert [glue_location(glue, table) for table in TABLES] == [committed.tables[table].path for table in TABLES]
    for leftover in (f"{PENDING}/{QUERY}", f"{STAGING}/{QUERY}"):
        assert lake.raw.list_names(leftover) == []

    newest = publish_version(pub, "newest")
    assert versions_on_disk(lake) == {newest.version}
    assert_whole(lake, newest, "newest")


def test_recovery_waits_for_the_grace_period(tmp_path: Path, glue: CatalogResource, spark, monkeypatch) -> None:
    lake = LakeResource(
        raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=60
    )
    pub = publisher(lake, glue, spark)
    old = publish_version(pub, "old")
    with monkeypatch.context() as patched:
        inject(patched, "manifest write")
        with pytest.raises(Injected):
            publish_version(pub, "new")
    pub.recover()
    assert len(versions_on_disk(lake)) == 2, "a commit younger than the grace period may still be running"
    assert lake.raw.list_names(f"{PENDING}/{QUERY}")
    assert lake.raw_manifests(QUERY) == [old]


def test_recovery_never_touches_the_staging_or_commit_of_a_run_still_alive(
    tmp_path: Path, glue: CatalogResource, spark, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that polled Alloy for hours began its version long ago; another run's recovery, with
    no grace at all, runs while it stages, and again between its last move and its manifest write."""
    lake = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=0)
    other = publisher(lake, glue, spark, alive=runs_alive(instance, "another-run"))
    old = publish_version(other, "old")
    moves = FailAt(0)
    move_dir, write_text = Zone.move_dir, Zone.write_text

    def recovering_after_each_move(zone: Zone, source: str, target: str) -> None:
        move_dir(zone, source, target)
        moves.calls += 1
        other.recover()

    def recovering_once_staged(zone: Zone, relative: str, text: str) -> None:
        write_text(zone, relative, text)
        if relative.startswith(STAGING) and relative.endswith("/csv/Jobs.csv"):
            other.recover()
            assert zone.read_text(relative) == text, "the staging of a live run is left alone"

    @dg.asset
    def long_raw_run(context) -> None:  # noqa: ANN001 (dagster resolves the annotation, which this module defers)
        mine = publisher(lake, glue, spark, alive=runs_alive(context.instance, context.run.run_id))
        with monkeypatch.context() as patched:
            patched.setattr(Zone, "write_text", recovering_once_staged)
            patched.setattr(Zone, "move_dir", recovering_after_each_move)
            publish_version(mine, context.run.run_id)

    result = dg.materialize([long_raw_run], instance=instance)
    [committed] = lake.raw_manifests(QUERY)
    assert committed != old and moves.calls == len(TABLES) + 1
    assert_whole(lake, committed, result.run_id)
    assert versions_on_disk(lake) == {committed.version}


def test_grace_is_measured_from_the_commit_not_from_the_run_start(
    tmp_path: Path, glue: CatalogResource, spark, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit of a run the instance does not know, recorded a minute ago by a run that began hours ago."""
    lake = LakeResource(
        raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=60
    )
    pub = publisher(lake, glue, spark)
    old = publish_version(pub, "old")
    hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
    monkeypatch.setattr(
        "alloy_pipeline.commit.new_version", lambda: f"{VERSION_PREFIX}{hours_ago:%Y%m%dT%H%M%SZ}_0a1b2c3d4e5f"
    )
    with monkeypatch.context() as patched:
        inject(patched, "manifest write")
        with pytest.raises(Injected):
            publish_version(pub, "new")
    pub.recover()
    assert len(versions_on_disk(lake)) == 2, "recorded a moment ago: the commit may still be running"
    no_grace = lake.model_copy(update={"cleanup_grace_minutes": 0})
    publisher(no_grace, glue, spark).recover()
    assert versions_on_disk(lake) == {old.version}, "once the grace has passed, the dead run's commit is undone"


def test_a_failed_commit_beside_a_damaged_manifest_does_not_block_the_days_repair(
    lake: LakeResource,
    glue: CatalogResource,
    spark,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pub = publisher(lake, glue, spark)
    publish_version(pub, "old")
    with monkeypatch.context() as patched:
        inject(patched, "manifest write")
        with pytest.raises(Injected):
            publish_version(pub, "failed")
    manifest_path = RAW.manifest_path(QUERY, DAY)
    lake.raw.write_text(manifest_path, '{"query": "dw_container_job", "day": "2024-03-')

    with caplog.at_level(logging.WARNING):
        pub.recover()
    assert f"its manifest {lake.raw.uri_of(manifest_path)} cannot be read" in caplog.text
    assert f"re-run partition {DAY.date.isoformat()}" in caplog.text

    repaired = publish_version(pub, "repair")
    pub.recover()
    assert lake.raw_manifests(QUERY) == [repaired]
    assert_whole(lake, repaired, "repair")
    assert lake.raw.list_names(f"{PENDING}/{QUERY}") == [], "the failed commit is cleared once the day is repaired"


def test_a_second_run_that_committed_meanwhile_wins_and_the_first_commits_nothing(
    lake: LakeResource, glue: CatalogResource, spark
) -> None:
    pub = publisher(lake, glue, spark)
    publish_version(pub, "old")
    slow = pub.begin(DAY, run_id="slow")
    fast = publish_version(pub, "fast")
    lake.raw.write_text(f"{slow.staging}/parquet/jobs/part-0.parquet", "jobs slow")
    with pytest.raises(ConcurrentCommitError, match=f"partition {DAY.key}.*another run committed"):
        slow.apply("{}", {f"{slow.staging}/parquet/jobs": RAW.table_dir(QUERY, "jobs", DAY, slow.version)}, ())
    assert lake.raw_manifests(QUERY) == [fast]
    assert_whole(lake, fast, "fast")
    assert lake.raw.list_names(f"{STAGING}/{QUERY}") == [], "the loser removed its staging"


@pytest.mark.parametrize("first_commit", [False, True], ids=["replacing", "first commit"])
def test_two_runs_past_the_last_check_together_commit_exactly_one_version(
    first_commit: bool, lake: LakeResource, glue: CatalogResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs A and B begin the day (empty, or holding a version) and stage theirs; A passes its last
    check before the manifest write, and there, before A writes, B commits. A's write must fail."""
    pub = publisher(lake, glue, spark=None)
    if not first_commit:
        publish_version(pub, "old")
    a, b = stage_version(pub, "A"), stage_version(pub, "B")
    checks: dict[str, int] = {}
    require_unchanged = PartitionCommit._require_unchanged

    def b_commits_once_a_passed_its_last_check(commit: PartitionCommit) -> None:
        require_unchanged(commit)
        checks[commit.run_id] = checks.get(commit.run_id, 0) + 1
        if commit is a.commit and checks["A"] == 2:
            b.publish(pub)

    monkeypatch.setattr(PartitionCommit, "_require_unchanged", b_commits_once_a_passed_its_last_check)
    with pytest.raises(ConcurrentCommitError, match=f"query {QUERY}, partition {DAY.key}: another run committed"):
        a.publish(pub)

    assert checks == {"A": 2, "B": 2}, "B committed between A's last check and A's manifest write"
    assert lake.raw_manifests(QUERY) == [b.manifest]
    assert_whole(lake, b.manifest, "B")
    assert [glue_location(glue, table) for table in TABLES] == [b.manifest.tables[table].path for table in TABLES]
    assert versions_on_disk(lake) == {b.commit.version}, "A removed its version folders; B retired the old one"
    for leftover in (f"{PENDING}/{QUERY}", f"{STAGING}/{QUERY}"):
        assert lake.raw.list_names(leftover) == [], "nothing of A's commit is left"


def test_a_conditional_write_refuses_a_changed_file_and_counts_its_own_landed_write(lake: LakeResource) -> None:
    """`write_text_if` against the version read, against none, and resent after its write landed
    (as botocore resends a PUT whose response was lost)."""
    zone, path = lake.raw, "alloy/manifests/raw/q/20240301.json"
    assert zone.write_text_if(path, "one", None)
    one = zone.read_revision(path)
    assert one is not None and one.text == "one"
    assert not zone.write_text_if(path, "two", None), "the file exists: a first write must not replace it"
    assert zone.write_text_if(path, "two", one)
    assert not zone.write_text_if(path, "three", one), "the file is no longer the version read"
    assert zone.write_text_if(path, "two", one), "the same write again finds its own text in place"
    assert zone.read_text(path) == "two"
    zone.delete(path)
    assert zone.read_revision(path) is None
    assert not zone.write_text_if(path, "four", one), "the version read is gone"


# -- the real raw asset, through the engine and its Hive catalog -----------------------------


@pytest.fixture
def jobs(simulator, engine, spark, instance, tmp_path: Path) -> Iterator[Pipeline]:
    pipeline = Pipeline.create(simulator, engine.url, spark, instance, tmp_path, ["DW Container Job"]).keep_joins(
        "DW Container Job", "root.attributes_jobAssignedContainer."
    )
    pipeline.cleanup_grace_minutes = 0
    yield pipeline


def catalog_location(jobs: Pipeline, table: str, day: Day) -> str:
    catalog = jobs.session_catalog()
    spec = ", ".join(f"{key} = '{value}'" for key, value in day.fields("import").items())
    rows = jobs.spark.sql(f"DESCRIBE FORMATTED {catalog.raw_database}.{QUERY}_{table} PARTITION ({spec})").collect()
    return next(row["data_type"] for row in rows if row["col_name"] == "Location")


def table_rows(jobs: Pipeline, manifest: RawManifest) -> dict[str, list[tuple]]:
    return {table: rows_of(jobs.spark.read.parquet(entry.path)) for table, entry in manifest.tables.items()}


@pytest.mark.parametrize("step", ["second move", "catalog"])
def test_a_raw_day_rerun_that_fails_mid_commit_keeps_the_day(
    step: str, jobs: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.run(DAY.key, group="alloy_raw")
    old = jobs.raw_manifest(QUERY, DAY.key)
    old_rows = table_rows(jobs, old)
    jobs.simulator.dataset.simulate_day(seed=1)

    with monkeypatch.context() as patched:
        inject(patched, step)
        result = jobs.run(DAY.key, group="alloy_raw", raise_on_error=False)
    assert not result.success and "injected failure" in failure_text(result)

    committed = jobs.raw_manifest(QUERY, DAY.key)
    if step in BEFORE_MANIFEST:
        assert committed == old and table_rows(jobs, committed) == old_rows
    location = local(catalog_location(jobs, QUERY, DAY))
    assert location in (local(old.tables[QUERY].path), local(committed.tables[QUERY].path))
    assert jobs.spark.read.parquet(str(location)).count() > 0, "the catalog's partition is readable"

    jobs.run(DAY.key, group="alloy_raw")
    rerun = jobs.raw_manifest(QUERY, DAY.key)
    assert local(catalog_location(jobs, QUERY, DAY)) == local(rerun.tables[QUERY].path)
    day_folder = local(rerun.tables[QUERY].path).parent
    assert [path.name for path in day_folder.iterdir()] == [rerun.version], "the next run cleared the rest"


# -- a process killed in the middle of a commit ------------------------------------------------


def test_a_snapshot_run_killed_mid_commit_keeps_the_day(jobs: Pipeline, tmp_path: Path) -> None:
    jobs.run(DAY.key)
    old = jobs.snapshot_manifest(QUERY, DAY.key)
    old_rows = {table: rows_of(jobs.spark.read.parquet(entry.path)) for table, entry in old.tables.items()}
    marker = tmp_path / "between-moves"
    catalog = jobs.session_catalog()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alloy_pipeline_tests.commit_child",
            str(jobs.root),
            jobs.remote,
            catalog.raw_database,
            catalog.refined_database,
            DAY.key,
            str(marker),
        ],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.stdout.read().decode()[-3000:] if child.stdout else ""
        assert time.monotonic() < deadline, "the child never reached its commit"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert jobs.snapshot_manifest(QUERY, DAY.key) == old
    assert {table: rows_of(jobs.spark.read.parquet(entry.path)) for table, entry in old.tables.items()} == old_rows
    [count] = jobs.spark.sql(
        f"SELECT count(*) AS n FROM {catalog.refined_database}.{QUERY}_{QUERY} WHERE snapshot_date = '{DAY.compact}'"
    ).collect()
    assert count["n"] == old.tables[QUERY].rows

    jobs.run(DAY.key, group="alloy_snapshot")
    rebuilt = jobs.snapshot_manifest(QUERY, DAY.key)
    assert {table: rows_of(jobs.spark.read.parquet(entry.path)) for table, entry in rebuilt.tables.items()} == old_rows
    day_folder = local(rebuilt.tables[QUERY].path).parent
    assert [path.name for path in day_folder.iterdir()] == [rebuilt.version]


def test_a_damaged_manifest_is_named_and_rerunning_its_day_repairs_it(jobs: Pipeline) -> None:
    jobs.run(DAY.key, group="alloy_raw")
    damaged = local(jobs.lake.raw.uri_of(RAW.manifest_path(QUERY, DAY)))
    damaged.write_text('{"query": "dw_contai')

    result = jobs.run("2024-03-02", group="alloy_raw", raise_on_error=False)
    assert not result.success
    assert f"{damaged}" in failure_text(result) and f"re-run partition {DAY.key}" in failure_text(result)

    jobs.run(DAY.key, group="alloy_raw")
    jobs.run("2024-03-02", group="alloy_raw")
    assert [manifest.day.isoformat() for manifest in jobs.lake.raw_manifests(QUERY)] == [DAY.key, "2024-03-02"]


def test_a_lake_written_before_versions_is_read_and_replaced_cleanly(jobs: Pipeline) -> None:
    """A day written before version folders has its files in the day's folder, perhaps with a newer
    version folder that a failed commit left inside it: the day reads as its own files, and
    replacing it removes those files and nothing else."""
    jobs.run(DAY.key, group="alloy_raw")
    manifest = jobs.raw_manifest(QUERY, DAY.key)
    legacy_tables = {}
    for table, entry in manifest.tables.items():
        version_folder = local(entry.path)
        for part in version_folder.iterdir():
            part.rename(version_folder.parent / part.name)
        version_folder.rename(version_folder.parent / "v_20240301T000000Z_orphan")
        (version_folder.parent / "v_20240301T000000Z_orphan" / "extra.parquet").write_bytes(
            next(version_folder.parent.glob("*.parquet")).read_bytes()
        )
        legacy_tables[table] = entry.model_copy(update={"path": entry.path.rsplit("/", 1)[0]})
    legacy = manifest.model_copy(update={"version": None, "tables": legacy_tables})
    local(jobs.lake.raw.uri_of(RAW.manifest_path(QUERY, DAY))).write_text(legacy.model_dump_json())

    jobs.run(DAY.key, group="alloy_snapshot")
    snapshot = jobs.snapshot_manifest(QUERY, DAY.key)
    assert snapshot.tables[QUERY].rows == manifest.tables[QUERY].rows, "only the day's own files were read"

    jobs.run(DAY.key, group="alloy_raw")
    rerun = jobs.raw_manifest(QUERY, DAY.key)
    day_folder = local(rerun.tables[QUERY].path).parent
    assert not list(day_folder.glob("*.parquet")), "the replaced legacy files are gone"
    assert {path.name for path in day_folder.iterdir()} == {rerun.version, "v_20240301T000000Z_orphan"}
