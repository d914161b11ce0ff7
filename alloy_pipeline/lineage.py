"""Which versions a snapshot was built on, and whether they are still the committed ones.

Snapshot D is built on the snapshot before it and the raw partitions after that one. When a user
re-runs one of those, D is out of date, and so is every snapshot built on D in turn: Dagster does
not cascade through a self-dependent asset, so the pipeline tracks it itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from pydantic import BaseModel, ConfigDict


class _Committed(Protocol):
    day: dt.date
    run_id: str
    version: str | None


class PartitionVersion(BaseModel):
    """One committed partition, as a later snapshot read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: dt.date
    run_id: str
    version: str | None

    @classmethod
    def of(cls, manifest: _Committed) -> PartitionVersion:
        return cls(day=manifest.day, run_id=manifest.run_id, version=manifest.version)

    def describe(self) -> str:
        return f"{self.day.isoformat()} ({self.version or 'run ' + self.run_id})"


class Lineage(BaseModel):
    """What a snapshot was built on: a base snapshot (or none) and the raw partitions applied to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: PartitionVersion | None
    raws: tuple[PartitionVersion, ...]


def differences(built_on: Lineage, current: Lineage) -> list[str]:
    """What changed between the inputs a snapshot was built on and the committed ones, in words."""
    changes = []
    if built_on.base != current.base:
        before = built_on.base.describe() if built_on.base else "none"
        now = current.base.describe() if current.base else "none"
        changes.append(f"base snapshot {before} is now {now}")
    built = {raw.day: raw for raw in built_on.raws}
    committed = {raw.day: raw for raw in current.raws}
    for day in sorted(built.keys() | committed.keys()):
        if day not in committed:
            changes.append(f"raw partition {built[day].describe()} is no longer applied")
        elif day not in built:
            changes.append(f"raw partition {committed[day].describe()} is new")
        elif built[day] != committed[day]:
            changes.append(f"raw partition {built[day].describe()} was replaced by {committed[day].version}")
    return changes
