"""Which materialization a check evaluation judges, so the UI counts it for that day.

Dagster shows a partitioned check's status per day only for evaluations that name the day's
latest materialization; an `AssetCheckResult` names it by itself in a single-day run, but an
evaluation reported by a ranged run or a sensor names none, and the day then reads "missing"
however its history reads. Dagster 1.13 has no public name for that pointer, hence the one
private import, held here (dagster is pinned; the check-status tests catch a change).
"""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as TargetMaterialization,
)

__all__ = ["TargetMaterialization", "latest_materialization"]


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> TargetMaterialization | None:
    """The newest materialization of `key`'s `partition`, as an evaluation's target (None: never materialized)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    return TargetMaterialization(
        storage_id=records[0].storage_id, run_id=records[0].run_id, timestamp=records[0].timestamp
    )
