"""Replacing one partition so that a failure at any instant loses nothing.

A run that replaces day D of a query:

1. reads D's manifest when it begins, with what identifies that version of it (its ETag on S3,
   a digest of its bytes locally), and writes its tables under a staging folder of its own,
   outside every table root;
2. checks that D's manifest is still the one it read (another run may have committed D
   meanwhile: then this run removes its staging and stops with `ConcurrentCommitError`, having
   committed nothing);
3. records what it is about to do in a pending record: the folders it will create and the
   folders of the version it replaces;
4. moves the staged tables into new version folders under D's Hive folders, beside the old
   version, which nothing touches;
5. replaces D's manifest in one write, conditional on its still being the version read in 1
   (`Zone.write_text_if`): from here the new version is the committed one. Of two runs that
   passed the checks together, only one write succeeds; the other run removes its new folders,
   its pending record and its staging, and stops with `ConcurrentCommitError`;
6. (the caller) points the catalog's partition at the new folders;
7. deletes the old version, the staging folder and the pending record.

Up to 5 the old version is the committed one, in the manifest and in the catalog. Between 5 and
6 the manifest names the new version and the catalog the old; both are complete. What a commit
that stopped half-way left behind is cleared by a later run of the same query (`recover`): if the
manifest names the new version, the catalog is pointed at it and the old version goes; if not,
the new folders go. Recovery never touches the staging or the commit of a run that is still
alive (the Dagster instance says so), and waits a grace period measured from when the commit
recorded itself, for a run the instance does not know.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from pydantic import BaseModel, ConfigDict

from alloy_pipeline.lake import PENDING, STAGING
from alloy_pipeline.partitions import Day
from alloy_pipeline.zone import Revision, Zone, new_version, version_time


class ConcurrentCommitError(RuntimeError):
    """Another run committed the same partition while this one was building it."""


class PendingCommit(BaseModel):
    """What a commit in progress creates and replaces, written before it moves anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str
    day: dt.date
    version: str
    run_id: str
    manifest_path: str
    staging: str
    new_dirs: tuple[str, ...]
    old_dirs: tuple[str, ...]
    recorded_at: dt.datetime | None = None
    """When the record was written; None in a record written before this field existed."""


class StagingOwner(BaseModel):
    """Which run a staging folder belongs to, written when the run begins its partition.

    A raw run may poll Alloy for hours before it writes its staging, so the folder's version
    (stamped at the start) says nothing about whether its run is still writing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    started_at: dt.datetime


def _pending_path(query: str, version: str) -> str:
    return f"{PENDING}/{query}/{version}.json"


def _owner_path(query: str, version: str) -> str:
    return f"{STAGING}/{query}/{version}.json"


@dataclass
class PartitionCommit:
    """One run's replacement of one partition, from the manifest it read to the cleanup after it."""

    zone: Zone
    query: str
    day: Day
    run_id: str
    manifest_path: str
    version: str
    read: Revision | None
    """The manifest as this run found it when it began (None when the day had none): the version
    this run replaces, on which its manifest write is conditional."""
    _pending: PendingCommit | None = field(default=None, init=False)

    @classmethod
    def begin(cls, zone: Zone, query: str, day: Day, run_id: str, manifest_path: str) -> PartitionCommit:
        commit = cls(zone, query, day, run_id, manifest_path, new_version(), zone.read_revision(manifest_path))
        owner = StagingOwner(run_id=run_id, started_at=dt.datetime.now(dt.UTC))
        zone.write_text(_owner_path(query, commit.version), owner.model_dump_json())
        return commit

    @property
    def staging(self) -> str:
        return f"{STAGING}/{self.query}/{self.version}"

    def _require_unchanged(self) -> None:
        """Withdraw if the day's manifest is no longer the version this run read."""
        if self.zone.read_revision(self.manifest_path) != self.read:
            self._withdraw()

    def _withdraw(self) -> NoReturn:
        """Remove everything of this run's commit and stop: another run committed the day.

        Only this run's own version is touched (its staging, the new folders named after it and its
        pending record, which goes last, so a crash half-way leaves it for `recover`); the version it
        meant to replace belongs to the winner's commit now, which retires it.
        """
        if self._pending is None:
            self.abandon()
        else:
            _retire(self.zone, self._pending, keep=frozenset(self._pending.old_dirs))
        raise ConcurrentCommitError(
            f"query {self.query}, partition {self.day.key}: another run committed this partition while "
            f"this run ({self.run_id}) was building it; this run committed nothing and removed what it had "
            "written, and the other run's version stands. Allow one run per partition (see docs/production.md)."
        )

    def apply(self, manifest_json: str, moves: Mapping[str, str], old_dirs: Iterable[str]) -> None:
        """Steps 2 to 5: after this returns, the new version is committed.

        The check before the moves spares a run that has already lost the moves; the check after
        them stops most losers with a read. Neither makes check-and-write one step, which is why the
        manifest write itself is conditional: two runs may pass the last check together.
        """
        self._require_unchanged()
        new_dirs = tuple(moves.values())
        self._pending = PendingCommit(
            query=self.query,
            day=self.day.date,
            version=self.version,
            run_id=self.run_id,
            manifest_path=self.manifest_path,
            staging=self.staging,
            new_dirs=new_dirs,
            old_dirs=tuple(folder for folder in old_dirs if folder not in new_dirs),
            recorded_at=dt.datetime.now(dt.UTC),
        )
        self.zone.write_text(_pending_path(self.query, self.version), self._pending.model_dump_json(indent=2))
        for source, target in moves.items():
            self.zone.move_dir(source, target)
        self._require_unchanged()
        if not self.zone.write_text_if(self.manifest_path, manifest_json, self.read):
            self._withdraw()

    def finish(self) -> None:
        """Step 7, once the catalog points at the new version."""
        if self._pending is None:
            raise RuntimeError("finish() before apply()")
        _retire(self.zone, self._pending, keep=frozenset(self._pending.new_dirs))

    def abandon(self) -> None:
        """Clear the staging of a run that failed before `apply`; nothing else of it exists yet."""
        if self._pending is None:
            self.zone.delete(self.staging)
            self.zone.delete(_owner_path(self.query, self.version))


def _retire(zone: Zone, pending: PendingCommit, keep: frozenset[str]) -> None:
    for folder in (*pending.new_dirs, *pending.old_dirs):
        if folder not in keep:
            zone.delete_version(folder)
    zone.delete(pending.staging)
    zone.delete(_owner_path(pending.query, pending.version))
    zone.delete(_pending_path(pending.query, pending.version))


def _older_than(made: dt.datetime | None, grace: dt.timedelta, now: dt.datetime) -> bool:
    return made is not None and now - made >= grace


def recover(
    zone: Zone,
    query: str,
    grace: dt.timedelta,
    *,
    alive: Callable[[str], bool],
    committed_dirs: Callable[[PendingCommit], frozenset[str]],
    register: Callable[[PendingCommit], None],
    warn: Callable[[str], None],
    now: dt.datetime | None = None,
) -> list[str]:
    """Finish or undo the commits of `query` that stopped half-way, and remove abandoned stagings.

    Nothing of a run for which `alive(run_id)` holds is touched, however old; the rest waits until
    `grace` has passed since the commit recorded itself (or its run began, for a staging), so a
    run the instance does not know (another instance, a deleted run) is given that long.
    `committed_dirs` gives the folders that the pending commit's day's manifest names now: they
    are kept and everything else the commit made or replaced goes. When the manifest names the
    pending commit's own version, `register` first points the catalog at it. Returns one line
    per thing cleared, for the step's log.

    A pending record, or the manifest it must be judged against, that cannot be read is left
    alone with a warning (`warn`) naming the file and the fix: one damaged day must not stop
    every run of the query, the re-run that repairs that day included.
    """
    now = now or dt.datetime.now(dt.UTC)
    cleared: list[str] = []
    in_progress: set[str] = set()
    for name in zone.list_names(f"{PENDING}/{query}"):
        if not name.endswith(".json"):
            continue
        version = name.removesuffix(".json")
        record = f"{PENDING}/{query}/{name}"
        try:
            pending = PendingCommit.model_validate_json(zone.read_text(record))
        except (ValueError, OSError) as error:
            in_progress.add(version)
            warn(
                f"the record {zone.uri_of(record)} of a failed commit cannot be read ({type(error).__name__}); "
                "it and its version are left in place: delete the record once no run of this query is running"
            )
            continue
        if alive(pending.run_id) or not _older_than(pending.recorded_at or version_time(version), grace, now):
            in_progress.add(version)
            continue
        try:
            keep = committed_dirs(pending)
        except (ValueError, OSError) as error:
            in_progress.add(version)
            warn(
                f"partition {pending.day.isoformat()}: the failed commit of {version} is left in place, because "
                f"its manifest {zone.uri_of(pending.manifest_path)} cannot be read ({type(error).__name__}); "
                f"re-run partition {pending.day.isoformat()} to rewrite the manifest, and the next run clears it"
            )
            continue
        committed = bool(keep) and set(pending.new_dirs) <= keep
        if committed:
            register(pending)
        _retire(zone, pending, keep)
        cleared.append(
            f"partition {pending.day.isoformat()}: "
            + (f"finished the commit of {version}" if committed else f"removed the uncommitted {version}")
        )
    names = zone.list_names(f"{STAGING}/{query}")
    for version in {name.removesuffix(".json") for name in names} - in_progress:
        owner_text = zone.read_text_if_exists(_owner_path(query, version))
        owner = StagingOwner.model_validate_json(owner_text) if owner_text else None
        if owner is not None and alive(owner.run_id):
            continue
        if _older_than(owner.started_at if owner else version_time(version), grace, now):
            zone.delete(f"{STAGING}/{query}/{version}")
            zone.delete(_owner_path(query, version))
            cleared.append(f"removed the staging of {version}")
    return sorted(cleared)
