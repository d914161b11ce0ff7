"""The daily run and the weekly full refresh, both at DAILY_RUN_AT (03:00) London time for the day just ended."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg

from alloy_pipeline.assets.raw import RawExtractConfig
from alloy_pipeline.naming import raw_key
from alloy_pipeline.partitions import DAILY_RUN_AT, LONDON

ALLOY_ASSETS = dg.AssetSelection.groups("alloy_raw", "alloy_snapshot")

# Raw assets take one day per run and snapshots take ranges in backfills, as intended; Dagster
# would warn of the difference whenever it builds a job of both (these, or `--select '*'`).
warnings.filterwarnings("ignore", message=r"Asset job \S+ materializes assets with varying BackfillPolicies")


def _yesterday_schedule(
    name: str,
    job: dg.UnresolvedAssetJobDefinition,
    cron: str,
    partitions: dg.DailyPartitionsDefinition,
    *,
    description: str,
    running: bool,
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=LONDON,
        description=description
        + ("" if running else " Off until turned on: here in the UI, or for every deployment with ALLOY_SCHEDULES=on."),
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        yesterday = context.scheduled_execution_time - dt.timedelta(days=1)
        day = partitions.get_partition_key_for_timestamp(yesterday.timestamp())
        if day < partitions.start.strftime("%Y-%m-%d"):
            return dg.SkipReason("no complete day since ALLOY_PARTITIONS_START yet")
        return dg.RunRequest(run_key=f"{name}:{day}", partition_key=day)

    return _schedule


def build_schedules(
    queries: list[str], partitions: dg.DailyPartitionsDefinition, *, running: bool = False
) -> dg.Definitions:
    """Daily incremental runs Monday to Saturday; on Sunday a full refresh takes their place.
    `running` (ALLOY_SCHEDULES=on) starts both running by default; else they wait to be turned on.

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
    at = f"{DAILY_RUN_AT.minute} {DAILY_RUN_AT.hour}"
    return dg.Definitions(
        jobs=[daily, weekly],
        schedules=[
            _yesterday_schedule(
                "alloy_daily_schedule",
                daily,
                f"{at} * * 1-6",
                partitions,
                description=f"Monday to Saturday at {DAILY_RUN_AT:%H:%M} London time: alloy_daily for the day "
                "just ended (each query's edits since its previous extract, then its snapshot).",
                running=running,
            ),
            _yesterday_schedule(
                "alloy_weekly_full_refresh_schedule",
                weekly,
                f"{at} * * 0",
                partitions,
                description=f"Sundays at {DAILY_RUN_AT:%H:%M} London time, in place of the daily run: "
                "alloy_weekly_full_refresh for the day just ended (every item re-exported, so items deleted in "
                "Alloy leave the snapshots).",
                running=running,
            ),
        ],
    )
