"""What a snapshot day is built from: the snapshot before it and the raw partitions after that one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from alloy_pipeline.lake import RawManifest, SnapshotManifest
from alloy_pipeline.lineage import Lineage, PartitionVersion, differences
from alloy_pipeline.partitions import Day

CURRENT_INPUTS_CHECK = "built_on_current_inputs"


class SnapshotError(RuntimeError):
    """A snapshot that cannot be built from what is stored."""


@dataclass(frozen=True)
class SnapshotPlan:
    """What snapshot D is built from: a base snapshot (or nothing) and raw partitions, in date order."""

    day: Day
    previous: SnapshotManifest | None
    base: SnapshotManifest | None
    raws: tuple[RawManifest, ...]

    @property
    def lineage(self) -> Lineage:
        """The versions this plan reads, as the snapshot's manifest records them."""
        return Lineage(
            base=PartitionVersion.of(self.base) if self.base else None,
            raws=tuple(PartitionVersion.of(raw) for raw in self.raws),
        )


def plan_snapshot(query: str, day: Day, snapshots: list[SnapshotManifest], raws: list[RawManifest]) -> SnapshotPlan:
    """Start from the latest snapshot before D; apply raw partitions after it up to D.

    A full extract among them makes everything before it irrelevant, deletions included.
    """
    earlier = [manifest for manifest in snapshots if manifest.day < day.date]
    previous = max(earlier, key=lambda manifest: manifest.day) if earlier else None
    pending = sorted(
        (raw for raw in raws if raw.day <= day.date and (previous is None or raw.day > previous.day)),
        key=lambda raw: raw.day,
    )
    fulls = [index for index, raw in enumerate(pending) if raw.kind == "full"]
    base = previous
    if fulls:
        pending, base = pending[fulls[-1] :], None
    if base is None and not pending:
        raise SnapshotError(
            f"query {query}, partition {day.key}: no raw partition on or before this day; "
            f"materialise alloy/raw/{query} first"
        )
    return SnapshotPlan(day=day, previous=previous, base=base, raws=tuple(pending))


@dataclass(frozen=True)
class EarlierCheck:
    """What a check of a query can take over from an earlier one: nothing before `since` has been
    materialised since it, so the days before `since` are out of date exactly as it found them
    (`stale`), and only the days from `since` on need their manifests read again."""

    since: dt.date
    stale: Mapping[dt.date, list[str]]

    def manifests_needed(
        self, snapshot_days: Sequence[dt.date], raw_days: Sequence[dt.date]
    ) -> tuple[list[dt.date], list[dt.date]]:
        """The snapshot and raw days that planning each snapshot day from `since` on reads
        (`plan_snapshot`): those days, the snapshot before them and the raw days from after that
        one to the last snapshot (from the first raw day when no snapshot is before `since`)."""
        last = max(snapshot_days, default=None)
        if last is None or last < self.since:
            return [], []
        base = max((day for day in snapshot_days if day < self.since), default=dt.date.min)
        return [day for day in snapshot_days if day >= base], [day for day in raw_days if base < day <= last]


def out_of_date(
    query: str,
    snapshots: list[SnapshotManifest],
    raws: list[RawManifest],
    earlier: EarlierCheck | None = None,
) -> dict[dt.date, list[str]]:
    """The committed snapshot days whose inputs are no longer the committed versions, with what changed.

    In date order, so that a day built on an out-of-date day is out of date too, though its own
    inputs stand: it was built on content that a rebuild will change. Snapshots written before
    lineage was recorded are taken as current. With `earlier`, only the days from `earlier.since`
    are checked, from at least the manifests it names as needed, and the days before are taken
    from it; a later day built on one of those is still out of date.
    """
    stale: dict[dt.date, list[str]] = (
        {day: changes for day, changes in earlier.stale.items() if day < earlier.since} if earlier else {}
    )
    for manifest in sorted(snapshots, key=lambda snapshot: snapshot.day):
        if manifest.inputs is None or (earlier and manifest.day < earlier.since):
            continue
        try:
            plan = plan_snapshot(query, Day(manifest.day), snapshots, raws)
        except SnapshotError:
            stale[manifest.day] = ["no raw partition on or before this day is committed any more"]
            continue
        changes = differences(manifest.inputs, plan.lineage)
        if plan.base is not None and plan.base.day in stale:
            changes.append(f"base snapshot {plan.base.day.isoformat()} is itself out of date")
        if changes:
            stale[manifest.day] = changes
    return stale
