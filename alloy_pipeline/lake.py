"""The lake's layout and its manifests: where each query's tables and partitions live, and the
manifest that makes a partition visible.

Each version of a partition lives in a folder of its own under the day's Hive folder
(`…/snapshot_date=YYYYMMDD/v_<time>_<id>/`, see `zone.py`), and the day's manifest names the
version that is current. How a version replaces another without ever losing it is in `commit.py`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal, TypeVar

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from alloy_pipeline.columns import RenamedHeader
from alloy_pipeline.lineage import Lineage
from alloy_pipeline.partitions import Day
from alloy_pipeline.resource_environment import held_environment
from alloy_pipeline.zone import Zone

ALLOY_PREFIX = "env-services/alloy"
RAW_DOWNLOADS = f"{ALLOY_PREFIX}/alloy_api_downloads"
RAW_PARQUET = f"{ALLOY_PREFIX}/parquet_files"
RAW_MANIFESTS = f"{ALLOY_PREFIX}/manifests/raw"
STAGING = f"{ALLOY_PREFIX}/_staging"
PENDING = f"{ALLOY_PREFIX}/_pending"
SNAPSHOTS = f"{ALLOY_PREFIX}/snapshots"
SNAPSHOT_MANIFESTS = f"{ALLOY_PREFIX}/manifests/snapshot"
MANIFEST_NAME = re.compile(r"^(\d{8})\.json$")


class ManifestError(RuntimeError):
    """A manifest file the pipeline cannot read; the message names it and how to repair it."""

    def __init__(self, message: str, day: dt.date) -> None:
        super().__init__(message)
        self.day = day


def landing_dir(query: str, day: Day, version: str | None = None) -> str:
    """Where a raw partition's CSVs land as received: the day's folder, or one version in it."""
    folder = f"{RAW_DOWNLOADS}/{query}/{day.segments('import')}"
    return f"{folder}/{version}" if version else folder


class TableOutput(BaseModel):
    """One table of a partition: where its parquet is and what it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    rows: int
    column_types: tuple[tuple[str, str], ...]
    source_file: str | None = None
    renamed_headers: tuple[RenamedHeader, ...] = ()
    """Columns the naming rule named differently from the established cleaning (`columns.py`)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.column_types)


class RawManifest(BaseModel):
    """The record that makes raw partition `day` visible: written last, read by every later step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str
    day: dt.date
    version: str | None = None
    """The version folder of this partition's data; None for a partition written before versions."""
    kind: Literal["full", "incremental"]
    watermark: dt.datetime | None
    requested_at: dt.datetime
    extracted_until: dt.datetime | None = None
    """The last edit time this extract asked for, when it was bounded (a re-run of a day that has
    later days); None when it asked for everything up to its request."""
    task_id: str
    run_id: str
    main_table: str
    tables: dict[str, TableOutput]

    @property
    def covered_until(self) -> dt.datetime:
        """The latest edit this partition can hold: its bound, or its request time."""
        return self.extracted_until or self.requested_at

    def data_dirs(self, zone: Zone) -> tuple[str, ...]:
        """The zone-relative folders that hold this partition's files: its tables and its CSVs."""
        tables = tuple(zone.relative_of(entry.path) for entry in self.tables.values())
        return (*tables, landing_dir(self.query, Day(self.day), self.version))


class SnapshotTable(TableOutput):
    """A snapshot table, with the renames that were applied to it (raw name → stored name)."""

    mapping_source: str | None = None
    renames: dict[str, str] = {}


class SnapshotManifest(BaseModel):
    """The record that makes snapshot `day` visible, and what it was built from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str
    day: dt.date
    version: str | None = None
    """The version folder of this partition's data; None for a partition written before versions."""
    run_id: str
    main_table: str
    base_day: dt.date | None
    raw_days: tuple[dt.date, ...]
    inserted: int
    replaced: int
    carried_forward: int
    removed: int
    tables: dict[str, SnapshotTable]
    inputs: Lineage | None = None
    """The versions this snapshot was built on; None for a snapshot written before lineage."""

    def data_dirs(self, zone: Zone) -> tuple[str, ...]:
        """The zone-relative folders that hold this partition's files: its tables."""
        return tuple(zone.relative_of(entry.path) for entry in self.tables.values())


@dataclass(frozen=True)
class Layer:
    """One layer of the lake, raw or refined: the same idea twice, told apart by these values."""

    partition_prefix: str
    """The Hive keys of its partitions: `import_*` or `snapshot_*`."""
    table_folder: str
    manifests: str
    manifest_model: type[RawManifest] | type[SnapshotManifest]

    def table_root(self, query: str, table: str) -> str:
        return f"{self.table_folder}/{query}/{table}"

    def table_dir(self, query: str, table: str, day: Day, version: str) -> str:
        return f"{self.table_root(query, table)}/{day.segments(self.partition_prefix)}/{version}"

    def manifest_folder(self, query: str) -> str:
        return f"{self.manifests}/{query}"

    def manifest_path(self, query: str, day: Day) -> str:
        return f"{self.manifest_folder(query)}/{day.compact}.json"


RAW = Layer("import", RAW_PARQUET, RAW_MANIFESTS, RawManifest)
REFINED = Layer("snapshot", SNAPSHOTS, SNAPSHOT_MANIFESTS, SnapshotManifest)


class LakeResource(dg.ConfigurableResource):
    """The raw and refined zones, laid out as in the README's "Lake layout", with manifest-based visibility."""

    raw_zone: str = Field(
        default="data/raw-zone", description="Root of the raw zone: a path, file://… or s3a://bucket/prefix."
    )
    refined_zone: str = Field(
        default="data/refined-zone", description="Root of the refined zone: a path, file://… or s3a://…"
    )

    cleanup_grace_minutes: float = Field(
        default=360.0,
        ge=0,
        description="Age after which a run clears what a failed commit of the same query left behind "
        "(its staging, and the version it wrote or replaced). Longer than any commit takes.",
    )

    ENVIRONMENT: ClassVar[dict[str, str]] = {"raw_zone": "ALLOY_RAW_ZONE", "refined_zone": "ALLOY_REFINED_ZONE"}
    """The fields the code location sets from the environment (README, "Configuration")."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        held_environment(self, self.ENVIRONMENT)

    @cached_property
    def raw(self) -> Zone:
        """Parsed once: on S3 this builds a filesystem client, which resolves credentials."""
        return Zone.parse(self.raw_zone)

    @cached_property
    def refined(self) -> Zone:
        return Zone.parse(self.refined_zone)

    def zone(self, layer: Layer) -> Zone:
        return self.raw if layer is RAW else self.refined

    def raw_days(self, query: str) -> list[dt.date]:
        """The days of `query`'s committed raw partitions, oldest first, from one listing."""
        return manifest_days(self.raw, RAW.manifest_folder(query))

    def snapshot_days(self, query: str) -> list[dt.date]:
        """The days of `query`'s committed snapshots, oldest first, from one listing."""
        return manifest_days(self.refined, REFINED.manifest_folder(query))

    def raw_manifests(
        self, query: str, replacing: Collection[Day] = (), days: Collection[dt.date] | None = None
    ) -> list[RawManifest]:
        """The committed raw partitions of `query`, oldest first; see `read_manifests`."""
        return read_manifests(self.raw, RAW.manifest_folder(query), RawManifest, replacing, days)

    def snapshot_manifests(
        self, query: str, replacing: Collection[Day] = (), days: Collection[dt.date] | None = None
    ) -> list[SnapshotManifest]:
        """The committed snapshot partitions of `query`, oldest first; see `read_manifests`."""
        return read_manifests(self.refined, REFINED.manifest_folder(query), SnapshotManifest, replacing, days)


Manifest = TypeVar("Manifest", RawManifest, SnapshotManifest)
MANIFEST_READERS = 8
"""Manifests read at once from an object store. Each is a small object, so reading one is mostly
waiting on its GET, and a query with years of history has thousands: the cascade sensor's first
check of a query reads them all (docs/benchmarks.md, "The cascade sensor")."""


def _manifest_names(zone: Zone, folder: str) -> list[str]:
    return [name for name in zone.list_names(folder) if MANIFEST_NAME.match(name)]


def _day_of(name: str) -> dt.date:
    return dt.datetime.strptime(name.removesuffix(".json"), "%Y%m%d").date()


def manifest_days(zone: Zone, folder: str) -> list[dt.date]:
    """The days of the manifests in `folder` (files named `YYYYMMDD.json`), oldest first."""
    return [_day_of(name) for name in _manifest_names(zone, folder)]


def _read_manifest(read: Callable[[str], str], relative: str, model: type[Manifest]) -> Manifest | ValueError | OSError:
    """One manifest, or what reading or parsing it raised, so that the caller decides in date order."""
    try:
        return model.model_validate_json(read(relative))
    except (ValueError, OSError) as error:
        return error


def read_manifests(
    zone: Zone,
    folder: str,
    model: type[Manifest],
    replacing: Collection[Day] = (),
    days: Collection[dt.date] | None = None,
) -> list[Manifest]:
    """The manifests in `folder`, oldest first: only files named `YYYYMMDD.json` count, and with
    `days`, only those days' (days listed beforehand, `manifest_days`: this lists nothing).

    A manifest that cannot be read stops the query with its path, because every later partition
    depends on it, except those of the days in `replacing`: the run that replaces a day needs
    nothing from its manifest, so re-running a day is how a damaged manifest is repaired. On an
    object store they are read `MANIFEST_READERS` at a time, with one GET each.
    """
    replaced = {day.compact for day in replacing}
    names = _manifest_names(zone, folder) if days is None else [f"{Day(day).compact}.json" for day in sorted(days)]
    read = zone.text_reader()
    with ThreadPoolExecutor(max_workers=1 if zone.local else MANIFEST_READERS, thread_name_prefix="manifest") as pool:
        outcomes = list(pool.map(lambda name: _read_manifest(read, f"{folder}/{name}", model), names))
    manifests = []
    for name, outcome in zip(names, outcomes, strict=True):
        if not isinstance(outcome, ValueError | OSError):
            manifests.append(outcome)
            continue
        location, compact = zone.uri_of(f"{folder}/{name}"), name.removesuffix(".json")
        if compact in replaced:
            dg.get_dagster_logger().warning(f"manifest {location} cannot be read; this run replaces it")
            continue
        day = _day_of(name)
        raise ManifestError(
            f"manifest {location} cannot be read ({type(outcome).__name__}); "
            f"re-run partition {day.isoformat()} of this asset to rewrite it",
            day,
        ) from outcome
    return manifests
