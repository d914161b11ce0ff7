"""Which materialization a check evaluation judges, so the UI counts it for that day.

Dagster shows a partitioned check's status per day only for evaluations that name the day's
latest materialization; an `AssetCheckResult` names it by itself in a single-day run, but an
evaluation reported by a ranged run or a sensor names none, and the day then reads "missing"
however its history reads. Dagster 1.13 has no public name for that pointer, hence the one
private import, held here (dagster is pinned; the check-status tests catch a change).
"""

from __future__ import annotations

from collections.abc import Collection

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as TargetMaterialization,
)

__all__ = ["TargetMaterialization", "latest_materialization", "latest_materializations"]


def _target(record: dg.EventLogRecord) -> TargetMaterialization:
    return TargetMaterialization(storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp)


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> TargetMaterialization | None:
    """The newest materialization of `key`'s `partition`, as an evaluation's target (None: never materialized)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return _target(records[0]) if records else None


def latest_materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Collection[str]
) -> dict[str, TargetMaterialization]:
    """`latest_materialization` of each of `partitions` (one never materialized has none), in two
    instance queries however many they are: a sensor flagging years of days has 60 s for all of it."""
    if not partitions:
        return {}
    newest = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(partitions)
    )
    if not newest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(newest.values())), limit=len(newest)
    ).records
    return {record.partition_key: _target(record) for record in records if record.partition_key}
