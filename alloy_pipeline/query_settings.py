"""Per-query settings beside the AQS files: who owns each query's assets, their tags, and by when
(London time) its daily snapshot is due.

They live in `pipeline.toml` in the AQS folder, so a council keeps them with the queries they
describe and reviews both together. The file is optional; without it every query has no owners or
tags, and its snapshot is due by 07:00.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from alloy_pipeline.aqs import AqsQuery
from alloy_pipeline.partitions import DAILY_RUN_AT, LONDON

SETTINGS_FILE = "pipeline.toml"


class SettingsError(ValueError):
    """A settings file that cannot be used; the message names the file and the query."""


class QuerySettings(BaseModel):
    """One query's settings, after the file's `[defaults]` are applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owners: tuple[str, ...] = ()
    """Dagster owners of both assets: e-mail addresses or `team:<name>`."""
    tags: dict[str, str] = {}
    """Dagster tags of both assets, e.g. `{service = "waste"}`, for filtering the asset catalog."""
    fresh_by: dt.time = dt.time(7, 0)
    """London time by which the snapshot of the day just ended is expected, each day."""

    @field_validator("fresh_by")
    @classmethod
    def _after_the_daily_run(cls, value: dt.time) -> dt.time:
        if value <= DAILY_RUN_AT:
            raise ValueError(f"must be after the daily run at {DAILY_RUN_AT:%H:%M} London time, not {value:%H:%M}")
        return value

    @property
    def freshness(self) -> dg.FreshnessPolicy:
        """Due by `fresh_by` each day, built since the daily run: a snapshot built the evening before,
        or days ago, is overdue at the deadline, until today's run builds it."""
        window = dt.datetime.combine(dt.date.min, self.fresh_by) - dt.datetime.combine(dt.date.min, DAILY_RUN_AT)
        return dg.FreshnessPolicy.cron(
            deadline_cron=f"{self.fresh_by.minute} {self.fresh_by.hour} * * *",
            lower_bound_delta=window,
            timezone=LONDON,
        )


class _Overrides(BaseModel):
    """A query's section: each field set replaces the default (tags are merged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owners: tuple[str, ...] | None = None
    tags: dict[str, str] | None = None
    fresh_by: dt.time | None = None


class _SettingsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: QuerySettings = QuerySettings()
    queries: dict[str, _Overrides] = {}
    """By AQS file name, as in the folder (`"DW Container Job.json"`)."""


def _for_query(file: _SettingsFile, overrides: _Overrides | None) -> QuerySettings:
    if overrides is None:
        return file.defaults
    fields = file.defaults.model_dump() | overrides.model_dump(exclude_none=True)
    fields["tags"] = file.defaults.tags | (overrides.tags or {})
    return QuerySettings.model_validate(fields)


def _accepted_by_dagster(slug: str, settings: QuerySettings) -> None:
    """Dagster's own rules for owners and tags, applied now rather than at the first asset built."""
    dg.AssetSpec(slug, owners=list(settings.owners), tags=settings.tags)


def load_settings(folder: Path, queries: list[AqsQuery]) -> dict[str, QuerySettings]:
    """Each query's settings by slug, from `folder/pipeline.toml` (every default when it is absent)."""
    path = folder / SETTINGS_FILE
    if not path.exists():
        return {query.slug: QuerySettings() for query in queries}
    try:
        file = _SettingsFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError) as error:
        raise SettingsError(f"settings file {path}: {error}") from error
    by_file = {query.path.name: query for query in queries}
    unknown = sorted(set(file.queries) - set(by_file))
    if unknown:
        raise SettingsError(
            f"settings file {path}: [queries] names {', '.join(map(repr, unknown))}, which is no AQS file in "
            f"{folder} (the files: {', '.join(sorted(by_file))})"
        )
    settings: dict[str, QuerySettings] = {}
    for query in queries:
        try:
            settings[query.slug] = _for_query(file, file.queries.get(query.path.name))
            _accepted_by_dagster(query.slug, settings[query.slug])
        except (ValidationError, dg.DagsterInvalidDefinitionError, dg.DagsterInvariantViolationError) as error:
            raise SettingsError(f"settings file {path}, query {query.path.name}: {error}") from error
    return settings
