"""The partition calendar: one partition per London day, the hour its schedules run, and its Hive-style
path segments."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import dagster as dg

LONDON = "Europe/London"
"""Alloy's councils work in London time: a day's partition is a London day, and schedules run on it."""
DAILY_RUN_AT = dt.time(3, 0)
"""When the schedules run, London time, for the day just ended (`schedules.py`)."""
DAYS_TAG = "alloy_pipeline/days"
"""On a ranged run: its days, where the runs list shows it (Dagster's own range tags it keeps out of sight)."""


def daily_partitions(start: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start, timezone=LONDON)


def ranged_run_tags(first: str, last: str) -> dict[str, str]:
    """The tags of a run over the days `first` to `last`: Dagster's, which make it one ranged run, and a label."""
    count = (dt.date.fromisoformat(last) - dt.date.fromisoformat(first)).days + 1
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
        DAYS_TAG: f"{first}..{last} ({count} day{'s' if count != 1 else ''})",
    }


@dataclass(frozen=True)
class Day:
    """A daily partition and the Hive-style path segments the lake layout uses for it."""

    date: dt.date

    @classmethod
    def from_key(cls, partition_key: str) -> Day:
        try:
            return cls(dt.date.fromisoformat(partition_key))
        except ValueError as error:
            raise ValueError(f"partition key {partition_key!r} is not a YYYY-MM-DD day") from error

    @property
    def key(self) -> str:
        return self.date.isoformat()

    @property
    def compact(self) -> str:
        return self.date.strftime("%Y%m%d")

    def fields(self, prefix: str) -> dict[str, str]:
        """`{prefix}_year`, `_month`, `_day`, `_date` as the strings stored in the lake."""
        return {
            f"{prefix}_year": f"{self.date.year:04d}",
            f"{prefix}_month": f"{self.date.month:02d}",
            f"{prefix}_day": f"{self.date.day:02d}",
            f"{prefix}_date": self.compact,
        }

    def segments(self, prefix: str) -> str:
        return "/".join(f"{name}={value}" for name, value in self.fields(prefix).items())
