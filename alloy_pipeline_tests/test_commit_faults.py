"""A failed commit never costs the committed version: failures injected at every step of it and
in the middle of each (a move that copied part of its objects, a write that landed before its
caller failed).

Three levels. The commit protocol itself, on a local folder and on moto's S3 with the Glue
catalog: Spark cannot write `s3a://` here (the pyspark wheel has no hadoop-aws, and Maven is out
of reach), so its tables are small files. The real raw asset, on a local lake through the test
engine and its Hive catalog, failing at each step in turn. And a snapshot run killed with SIGKILL
in the middle of its commit. Until the manifest write lands, the previous version must still be
what the manifest and the catalog name, complete; once it has landed, the new version is the
committed one, complete, whatever the catalog still names; the next run clears what was left.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import boto3
import dagster as dg
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from alloy_pipeline import catalog as catalog_module
from alloy_pipeline.assets.publication import Publisher, runs_alive
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.commit import ConcurrentCommitError, PartitionCommit, PendingCommit, StagingOwner
from alloy_pipeline.lake import PENDING, RAW, STAGING, LakeResource, RawManifest, TableOutput, landing_dir
from alloy_pipeline.partitions import Day
from alloy_pipeline.s3_uri import for_spark
from alloy_pipeline.zone import VERSION_PREFIX, Zone
from alloy_pipeline_tests.harness import REPO, Pipeline, failure_text, rows_of

QUERY = "dw_container_job"
DAY = Day.from_key("2024-03-01")
TABLES = ("jobs", "streets_1")
PARTS = ("part-0", "part-1")
"""Each staged table's files: two, so that a move can fail having copied only some of them."""


class Injected(RuntimeError):
    """The failure a test injects; nothing in the pipeline raises it."""


@dataclass(frozen=True)
class Fault:
    """A failure in the `nth` call, made by a commit, of `owner.method` whose first argument after
    its owner contains `matching`: before the call runs, after it returned (what it wrote has
    landed), or inside it (a move: on S3, once its copy has copied one object, before it deletes
    any; locally, where a move is one rename, once the rename is done)."""

    owner: Any
    method: str
    nth: int = 1
    matching: str = ""
    when: Literal["before", "after", "inside"] = "before"
    landed: bool = False
    """Whether the manifest write has landed when the failure fires: the new version is then the
    committed one."""


FAULTS = {
    "pending record": Fault(Zone, "write_text", matching=PENDING),
    "pending record written": Fault(Zone, "write_text", matching=PENDING, when="after"),
    "a table's move half done": Fault(Zone, "move_dir", matching="/parquet/", when="inside"),
    "second move": Fault(Zone, "move_dir", nth=2),
    "manifest write": Fault(Zone, "write_text_if", matching="/manifests/"),
    "manifest written": Fault(Zone, "write_text_if", matching="/manifests/", when="after", landed=True),
    "catalog half done": Fault(catalog_module, "register_in_glue", nth=2, landed=True),
    "old version delete": Fault(Zone, "delete_version", landed=True),
    "old version half deleted": Fault(Zone, "delete_version", nth=2, landed=True),
}
"""Each step of a commit in order (the pending record, the moves, the manifest write, the catalog,
the old version's deletion), failing before it, in its middle or once it is done: each leaves a
different state. (Failing before the first move leaves what failing once the pending record is
written does, and failing before the catalog what failing once the manifest is written does.)"""


def inject(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    """Arm `fault` for the commits (`Publisher.publish`) made while `monkeypatch` holds; the
    recovery a run does before its commit neither counts nor fails."""
    original = getattr(fault.owner, fault.method)
    publish = Publisher.publish
    armed, calls = [False], [0]

    def publishing(self: Publisher, *args: Any, **kwargs: Any) -> None:
        armed[0] = True
        try:
            publish(self, *args, **kwargs)
        finally:
            armed[0] = False

    def failing(owner: Any, first: Any, *args: Any, **kwargs: Any) -> Any:
        if not (armed[0] and fault.matching in str(first)):
            return original(owner, first, *args, **kwargs)
        calls[0] += 1
        if calls[0] != fault.nth:
            return original(owner, first, *args, **kwargs)
        message = f"injected failure {fault.when} {fault.method} #{fault.nth}"
        if fault.when == "before":
            raise Injected(message)
        if fault.when == "inside" and not owner.local:
            with pytest.MonkeyPatch.context() as inside:
                inside.setattr(pafs, "copy_files", copying_one_object_then_failing(pafs.copy_files, message))
                return original(owner, first, *args, **kwargs)
        original(owner, first, *args, **kwargs)
        raise Injected(message)

    monkeypatch.setattr(Publisher, "publish", publishing)
    monkeypatch.setattr(fault.owner, fault.method, failing)


def copying_one_object_then_failing(copy_files: Callable[..., None], message: str) -> Callable[..., None]:
    """pyarrow's `copy_files` of a folder, stopped once it has really copied the folder's first object."""

    def copy_one(
        source: str, destination: str, *, source_filesystem: pafs.FileSystem, destination_filesystem: pafs.FileSystem
    ) -> None:
        selector = pafs.FileSelector(source, recursive=True)
        files = sorted(info.path for info in source_filesystem.get_file_info(selector) if info.is_file)
        assert len(files) > 1, "a move that stops half-way needs a folder of several objects"
        copy_files(
            files[0],
            destination + files[0].removeprefix(source),
            source_filesystem=source_filesystem,
            destination_filesystem=destination_filesystem,
        )
        raise Injected(f"{message}, after copying 1 of {len(files)} objects")

    return copy_one


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


def publisher(lake: LakeResource, catalog: CatalogResource, alive: Callable[[str], bool] = no_run_alive) -> Publisher:
    """A publisher registering in Glue, which needs no Spark session."""
    return Publisher(lake, catalog, None, RAW, QUERY, logging.getLogger("test"), alive)  # type: ignore[arg-type]


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
        for part in PARTS:
            zone.write_text(f"{commit.staging}/parquet/{table}/{part}", f"{table} {part} {label}")
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


def assert_table_whole(lake: LakeResource, location: str, table: str, label: str) -> None:
    """The folder at `location` holds exactly `table`'s files of `label`'s version."""
    folder = lake.raw.relative_of(location)
    assert lake.raw.list_names(folder) == list(PARTS)
    assert [lake.raw.read_text(f"{folder}/{part}") for part in PARTS] == [f"{table} {part} {label}" for part in PARTS]


def assert_whole(lake: LakeResource, manifest: RawManifest, label: str) -> None:
    """Every file of `manifest`'s version is there and is `label`'s."""
    for table, entry in manifest.tables.items():
        assert_table_whole(lake, entry.path, table, label)
    assert lake.raw.read_text(f"{landing_dir(QUERY, DAY, manifest.version)}/Jobs.csv") == f"csv {label}"


def day_folders(tables: Iterable[str]) -> list[str]:
    """DAY's folders that hold one version folder per materialisation: its CSVs' and each table's."""
    hive = DAY.segments(RAW.partition_prefix)
    return [landing_dir(QUERY, DAY), *(f"{RAW.table_root(QUERY, table)}/{hive}" for table in tables)]


def versions_on_disk(lake: LakeResource, tables: Iterable[str] = TABLES) -> set[str]:
    return {name for folder in day_folders(tables) for name in lake.raw.list_names(folder)}


def assert_nothing_pending(lake: LakeResource) -> None:
    for leftover in (f"{PENDING}/{QUERY}", f"{STAGING}/{QUERY}"):
        assert lake.raw.list_names(leftover) == [], f"{leftover} is cleared"


@pytest.mark.parametrize("step", list(FAULTS))
def test_a_failure_at_any_step_of_a_commit_keeps_a_whole_committed_version(
    step: str, lake: LakeResource, glue: CatalogResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = FAULTS[step]
    pub = publisher(lake, glue)
    old = publish_version(pub, "old")
    new = stage_version(pub, "new")
    with monkeypatch.context() as patched:
        inject(patched, fault)
        with pytest.raises(Exception, match="injected failure"):
            new.publish(pub)

    committed, label = (new.manifest, "new") if fault.landed else (old, "old")
    assert lake.raw_manifests(QUERY) == [committed]
    assert_whole(lake, committed, label)
    for table in TABLES:
        location = glue_location(glue, table)
        if location == old.tables[table].path:
            assert_table_whole(lake, location, table, "old")
        else:
            assert fault.landed and location == new.manifest.tables[table].path, "the catalog names old or committed"
            assert_table_whole(lake, location, table, "new")

    pub.recover()
    assert versions_on_disk(lake) == {committed.version}
    assert [glue_location(glue, table) for table in TABLES] == [committed.tables[table].path for table in TABLES]
    assert_nothing_pending(lake)


def test_recovery_waits_for_the_grace_period(
    tmp_path: Path, glue: CatalogResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = LakeResource(
        raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=60
    )
    pub = publisher(lake, glue)
    old = publish_version(pub, "old")
    with monkeypatch.context() as patched:
        inject(patched, FAULTS["manifest write"])
        with pytest.raises(Injected):
            publish_version(pub, "new")
    pub.recover()
    assert len(versions_on_disk(lake)) == 2, "a commit younger than the grace period may still be running"
    assert lake.raw.list_names(f"{PENDING}/{QUERY}")
    assert lake.raw_manifests(QUERY) == [old]


def test_recovery_never_touches_the_staging_or_commit_of_a_run_still_alive(
    tmp_path: Path, glue: CatalogResource, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that polled Alloy for hours began its version long ago; another run's recovery, with
    no grace at all, runs while it stages, and again between its last move and its manifest write."""
    lake = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=0)
    other = publisher(lake, glue, alive=runs_alive(instance, "another-run"))
    old = publish_version(other, "old")
    moved: list[str] = []
    move_dir, write_text = Zone.move_dir, Zone.write_text

    def recovering_after_each_move(zone: Zone, source: str, target: str) -> None:
        move_dir(zone, source, target)
        moved.append(target)
        other.recover()

    def recovering_once_staged(zone: Zone, relative: str, text: str) -> None:
        write_text(zone, relative, text)
        if relative.startswith(STAGING) and relative.endswith("/csv/Jobs.csv"):
            other.recover()
            assert zone.read_text(relative) == text, "the staging of a live run is left alone"

    @dg.asset
    def long_raw_run(context) -> None:  # noqa: ANN001 (dagster resolves the annotation, which this module defers)
        mine = publisher(lake, glue, alive=runs_alive(context.instance, context.run.run_id))
        with monkeypatch.context() as patched:
            patched.setattr(Zone, "write_text", recovering_once_staged)
            patched.setattr(Zone, "move_dir", recovering_after_each_move)
            publish_version(mine, context.run.run_id)

    result = dg.materialize([long_raw_run], instance=instance)
    [committed] = lake.raw_manifests(QUERY)
    assert committed != old and len(moved) == len(TABLES) + 1
    assert_whole(lake, committed, result.run_id)
    assert versions_on_disk(lake) == {committed.version}


def test_grace_is_measured_from_the_commit_not_from_the_run_start(
    tmp_path: Path, glue: CatalogResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit of a run the instance does not know, recorded a minute ago by a run that began hours ago."""
    lake = LakeResource(
        raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"), cleanup_grace_minutes=60
    )
    pub = publisher(lake, glue)
    old = publish_version(pub, "old")
    hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
    monkeypatch.setattr(
        "alloy_pipeline.commit.new_version", lambda: f"{VERSION_PREFIX}{hours_ago:%Y%m%dT%H%M%SZ}_0a1b2c3d4e5f"
    )
    with monkeypatch.context() as patched:
        inject(patched, FAULTS["manifest write"])
        with pytest.raises(Injected):
            publish_version(pub, "new")
    pub.recover()
    assert len(versions_on_disk(lake)) == 2, "recorded a moment ago: the commit may still be running"
    no_grace = lake.model_copy(update={"cleanup_grace_minutes": 0})
    publisher(no_grace, glue).recover()
    assert versions_on_disk(lake) == {old.version}, "once the grace has passed, the dead run's commit is undone"


def test_a_failed_commit_beside_a_damaged_manifest_does_not_block_the_days_repair(
    lake: LakeResource,
    glue: CatalogResource,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pub = publisher(lake, glue)
    publish_version(pub, "old")
    with monkeypatch.context() as patched:
        inject(patched, FAULTS["manifest write"])
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
    lake: LakeResource, glue: CatalogResource
) -> None:
    pub = publisher(lake, glue)
    publish_version(pub, "old")
    slow = pub.begin(DAY, run_id="slow")
    fast = publish_version(pub, "fast")
    lake.raw.write_text(f"{slow.staging}/parquet/jobs/part-0", "jobs slow")
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
    pub = publisher(lake, glue)
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
    assert_only_the_winner_committed(lake, glue, b)


def test_a_run_that_commits_between_the_others_moves_and_its_manifest_write_makes_it_withdraw(
    lake: LakeResource, glue: CatalogResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B commits the day the moment A's last move returns: A's check after its moves finds the
    manifest changed, so A withdraws before it even tries its (conditional) manifest write."""
    pub = publisher(lake, glue)
    publish_version(pub, "old")
    a, b = stage_version(pub, "A"), stage_version(pub, "B")
    move_dir, write_text_if = Zone.move_dir, Zone.write_text_if
    manifest_writers: list[str] = []

    def b_commits_once_a_has_moved(zone: Zone, source: str, target: str) -> None:
        move_dir(zone, source, target)
        if target == list(a.moves.values())[-1]:
            b.publish(pub)

    def recording_manifest_writes(zone: Zone, relative: str, text: str, expected: object) -> bool:
        manifest_writers.append(RawManifest.model_validate_json(text).run_id)
        return write_text_if(zone, relative, text, expected)

    monkeypatch.setattr(Zone, "move_dir", b_commits_once_a_has_moved)
    monkeypatch.setattr(Zone, "write_text_if", recording_manifest_writes)
    with pytest.raises(ConcurrentCommitError, match=f"query {QUERY}, partition {DAY.key}: another run committed"):
        a.publish(pub)

    assert manifest_writers == ["B"], "A withdrew at its check after the moves, before any manifest write"
    assert_only_the_winner_committed(lake, glue, b)


def assert_only_the_winner_committed(lake: LakeResource, glue: CatalogResource, winner: Staged) -> None:
    """The day is `winner`'s version alone, whole and in the catalog; nothing of the loser is left."""
    assert lake.raw_manifests(QUERY) == [winner.manifest]
    assert_whole(lake, winner.manifest, winner.manifest.run_id)
    assert [glue_location(glue, table) for table in TABLES] == [winner.manifest.tables[t].path for t in TABLES]
    assert versions_on_disk(lake) == {winner.commit.version}, (
        "the loser removed its folders; the winner retired the old"
    )
    assert_nothing_pending(lake)


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


ASSET_FAULTS = {
    "pending record": FAULTS["pending record"],
    "second move": FAULTS["second move"],
    "manifest write": FAULTS["manifest write"],
    "manifest written": FAULTS["manifest written"],
    "catalog half done": Fault(catalog_module, "register_in_session", nth=2, landed=True),
    "old version half deleted": FAULTS["old version half deleted"],
}
"""A failure at each step of the raw asset's commit, each leaving a different state: a staging
alone, some folders moved, all moved, the manifest written, the catalog half pointed, the old
version half deleted."""


def leftovers(zone: Zone) -> tuple[set[str], list[PendingCommit]]:
    """The runs that own a staging folder, and the commits recorded as in progress."""
    folder = f"{STAGING}/{QUERY}"
    owners = {
        StagingOwner.model_validate_json(zone.read_text(f"{folder}/{name}")).run_id
        for name in zone.list_names(folder)
        if name.endswith(".json")
    }
    records = f"{PENDING}/{QUERY}"
    return owners, [
        PendingCommit.model_validate_json(zone.read_text(f"{records}/{n}")) for n in zone.list_names(records)
    ]


def assert_whole_and_catalogued(jobs: Pipeline, committed: RawManifest, replaced: RawManifest | None = None) -> None:
    """Each table of `committed` holds all its rows (counted from its parquet files' footers), and the
    catalog names that table's version, or the one it `replaced` (still whole), which the catalog
    may name until the next run."""
    for table, entry in committed.tables.items():
        location = local(catalog_location(jobs, table, DAY))
        versions = {local(m.tables[table].path): m.tables[table] for m in (committed, replaced) if m is not None}
        assert location in versions, f"{table}: the catalog names {location}, neither committed nor replaced"
        named = versions[location]
        for path, rows in {entry.path: entry.rows, named.path: named.rows}.items():
            assert pads.dataset(local(path), format="parquet").count_rows() == rows, f"{path} is whole"


def test_a_raw_day_rerun_failing_at_each_step_of_its_commit_keeps_the_day(
    jobs: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-runs of a day on a local lake through the real raw asset, each failing at the next step of
    its commit: each run's recovery first clears what the failure before it left."""
    jobs.run(DAY.key, group="alloy_raw")
    committed = jobs.raw_manifest(QUERY, DAY.key)
    for step, fault in ASSET_FAULTS.items():
        before = committed
        with monkeypatch.context() as patched:
            inject(patched, fault)
            result = jobs.run(DAY.key, group="alloy_raw", raise_on_error=False)
        assert not result.success and "injected failure" in failure_text(result), step

        owners, pending = leftovers(jobs.lake.raw)
        assert owners == {result.run_id}, f"{step}: the staging the failure before left is cleared"
        assert [commit.run_id for commit in pending] == ([] if step == "pending record" else [result.run_id]), step
        committed = jobs.raw_manifest(QUERY, DAY.key)
        if fault.landed:
            assert committed.run_id == result.run_id, f"{step}: the manifest write landed, the new version is committed"
        else:
            assert committed == before, f"{step}: the version before is still the committed one"
        assert_whole_and_catalogued(jobs, committed, before if fault.landed else None)
        mine = {commit.version for commit in pending}
        assert versions_on_disk(jobs.lake, committed.tables) <= {before.version, *mine}, f"{step}: the rest is cleared"

    jobs.run(DAY.key, group="alloy_raw")
    final = jobs.raw_manifest(QUERY, DAY.key)
    assert_whole_and_catalogued(jobs, final)
    assert [jobs.lake.raw.list_names(folder) for folder in day_folders(final.tables)] == [[final.version]] * (
        1 + len(final.tables)
    ), "the last run cleared the rest"
    assert_nothing_pending(jobs.lake)


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
