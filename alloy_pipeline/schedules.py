"""The daily run and the weekly full refresh, both at 03:00 London time for the day just ended."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg

from alloy_pipeline.assets.raw import RawExtractConfig
from alloy_pipeline.naming import raw_key
from alloy_pipeline.partitions import LONDON

ALLOY_ASSETS = dg.AssetSelection.groups("alloy_raw", "alloy_snapshot")

# Raw assets take one day per run and snapshots take ranges in backfills, as intended; Dagster
# would warn of the difference whenever it builds a job of both (these, or `--select '*'`).
warnings.filterwarnings("ignore", message=r"Asset job \S+ materializes assets with varying BackfillPolicies")


def _yesterday_schedule(
    name: str, job: dg.UnresolvedAssetJobDefinition, cron: str, partitions: dg.DailyPartitionsDefinition
) -> dg.ScheduleDefinition:
    @dg.schedule(name=name, job=job, cron_schedule=cron, execution_timezone=LONDON)
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        yesterday = context.scheduled_execution_time - dt.timedelta(days=1)
        day = partitions.get_partition_key_for_timestamp(yesterday.timestamp())
        if day < partitions.start.strftime("%Y-%m-%d"):
            return dg.SkipReason("no complete day since ALLOY_PARTITIONS_START yet")
        return dg.RunRequest(run_key=f"{name}:{day}", partition_key=day)

    return _schedule


def build_schedules(queries: list[str], partitions: dg.DailyPartitionsDefinition) -> dg.Definitions:
    """Daily incremental runs Monday to Saturday; on Sunday a full refresh takes their place.

    The full refresh re-exports every item, so items deleted in Alloy leave the snapshot within
    a week; running both on Sunday would only write the same partition twice.
    """
    daily = dg.define_asset_job("alloy_daily", selection=ALLOY_ASSETS, description="Raw extracts, then snapshots.")
    weekly = dg.define_asset_job(
        "alloy_weekly_full_refresh",
        selection=ALLOY_ASSETS,
        description="Full raw extracts (full_refresh), then snapshots: drops items deleted upstream.",
        config=dg.RunConfig(
            ops={raw_key(query).to_python_identifier(): RawExtractConfig(full_refresh=True) for query in queries}
        ),
    )
    return dg.Definitions(
        jobs=[daily, weekly],
        schedules=[
            _yesterday_schedule("alloy_daily_schedule", daily, "0 3 * * 1-6", partitions),
            _yesterday_schedule("alloy_weekly_full_refresh_schedule", weekly, "0 3 * * 0", partitions),
        ],
    )
