"""Replacing one partition so that a failure at any instant loses nothing.

A run that replaces day D of a query:

1. reads D's manifest when it begins, and writes its tables under a staging folder of its own,
   outside every table root;
2. checks that D's manifest is still the one it read (another run may have committed D
   meanwhile: then this run stops with `ConcurrentCommitError` and commits nothing);
3. records what it is about to do in a pending record: the folders it will create and the
   folders of the version it replaces;
4. moves the staged tables into new version folders under D's Hive folders, beside the old
   version, which nothing touches;
5. replaces D's manifest in one write: from here the new version is the committed one;
6. (the caller) points the catalog's partition at the new folders;
7. deletes the old version, the staging folder and the pending record.

Up to 5 the old version is the committed one, in the manifest and in the catalog. Between 5 and
6 the manifest names the new version and the catalog the old; both are complete. What a commit
that stopped half-way left behind is cleared by a later run of the same query, once it is older
than a grace period (`recover`): if the manifest names the new version, the catalog is pointed
at it and the old version goes; if not, the new folders go.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from alloy_pipeline.lake import PENDING, STAGING
from alloy_pipeline.partitions import Day
from alloy_pipeline.zone import Zone, new_version, version_time


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


def _pending_path(query: str, version: str) -> str:
    return f"{PENDING}/{query}/{version}.json"


@dataclass
class PartitionCommit:
    """One run's replacement of one partition, from the manifest it read to the cleanup after it."""

    zone: Zone
    query: str
    day: Day
    run_id: str
    manifest_path: str
    version: str
    read: str | None
    """The manifest's text when this run began; None when the day had none."""
    _pending: PendingCommit | None = field(default=None, init=False)

    @classmethod
    def begin(cls, zone: Zone, query: str, day: Day, run_id: str, manifest_path: str) -> PartitionCommit:
        return cls(zone, query, day, run_id, manifest_path, new_version(), zone.read_text_if_exists(manifest_path))

    @property
    def staging(self) -> str:
        return f"{STAGING}/{self.query}/{self.version}"

    def _require_unchanged(self) -> None:
        if self.zone.read_text_if_exists(self.manifest_path) != self.read:
            raise ConcurrentCommitError(
                f"query {self.query}, partition {self.day.key}: another run committed this partition while "
                f"this run ({self.run_id}) was building it; this run committed nothing, and the other run's "
                "version stands. Allow one run per partition (see docs/production.md)."
            )

    def apply(self, manifest_json: str, moves: Mapping[str, str], old_dirs: Iterable[str]) -> None:
        """Steps 2 to 5: after this returns, the new version is committed."""
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
        )
        self.zone.write_text(_pending_path(self.query, self.version), self._pending.model_dump_json(indent=2))
        for source, target in moves.items():
            self.zone.move_dir(source, target)
        self._require_unchanged()
        self.zone.write_text(self.manifest_path, manifest_json)

    def finish(self) -> None:
        """Step 7, once the catalog points at the new version."""
        if self._pending is None:
            raise RuntimeError("finish() before apply()")
        _retire(self.zone, self._pending, keep=frozenset(self._pending.new_dirs))

    def abandon(self) -> None:
        """Clear the staging of a run that failed before `apply`; nothing else of it exists yet."""
        if self._pending is None:
            self.zone.delete(self.staging)


def _retire(zone: Zone, pending: PendingCommit, keep: frozenset[str]) -> None:
    for folder in (*pending.new_dirs, *pending.old_dirs):
        if folder not in keep:
            zone.delete_version(folder)
    zone.delete(pending.staging)
    zone.delete(_pending_path(pending.query, pending.version))


def _older_than(version: str, grace: dt.timedelta, now: dt.datetime) -> bool:
    made = version_time(version)
    return made is not None and now - made >= grace


def recover(
    zone: Zone,
    query: str,
    grace: dt.timedelta,
    *,
    committed_dirs: Callable[[PendingCommit], frozenset[str]],
    register: Callable[[PendingCommit], None],
    now: dt.datetime | None = None,
) -> list[str]:
    """Finish or undo the commits of `query` that stopped half-way and are older than `grace`.

    `committed_dirs` gives the folders that the pending commit's day's manifest names now: they
    are kept and everything else the commit made or replaced goes. When the manifest names the
    pending commit's own version, `register` first points the catalog at it. Returns one line
    per thing cleared, for the step's log.
    """
    now = now or dt.datetime.now(dt.UTC)
    cleared: list[str] = []
    for name in zone.list_names(f"{PENDING}/{query}"):
        version = name.removesuffix(".json")
        if not name.endswith(".json") or not _older_than(version, grace, now):
            continue
        pending = PendingCommit.model_validate_json(zone.read_text(f"{PENDING}/{query}/{name}"))
        keep = committed_dirs(pending)
        committed = bool(keep) and set(pending.new_dirs) <= keep
        if committed:
            register(pending)
        _retire(zone, pending, keep)
        cleared.append(
            f"partition {pending.day.isoformat()}: "
            + (f"finished the commit of {version}" if committed else f"removed the uncommitted {version}")
        )
    for version in zone.list_names(f"{STAGING}/{query}"):
        if _older_than(version, grace, now):
            zone.delete(f"{STAGING}/{query}/{version}")
            cleared.append(f"removed the staging of {version}")
    return cleared
