"""The lake: zone paths, Hive-style partitions, manifests and the atomic commit of a partition.

A partition is visible to the pipeline only once its manifest exists, and the manifest is written
last. Data is written under a staging folder first and moved into place at commit, so a run that
fails at any step leaves the previous version of the day (and every other day) as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar

import dagster as dg
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

ALLOY_PREFIX = "env-services/alloy"
RAW_DOWNLOADS = f"{ALLOY_PREFIX}/alloy_api_downloads"
RAW_PARQUET = f"{ALLOY_PREFIX}/parquet_files"
RAW_MANIFESTS = f"{ALLOY_PREFIX}/manifests/raw"
STAGING = f"{ALLOY_PREFIX}/_staging"
SNAPSHOTS = f"{ALLOY_PREFIX}/snapshots"
SNAPSHOT_MANIFESTS = f"{ALLOY_PREFIX}/manifests/snapshot"


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


@dataclass(frozen=True)
class Zone:
    """One zone of the lake, addressed both by Spark (`uri`) and by Python (`fs` + `root`)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def parse(cls, location: str) -> Zone:
        """Accept a local path, `file://…`, `s3://…` or `s3a://…` (Spark's S3 scheme)."""
        location = location.rstrip("/")
        if location.startswith(("s3a://", "s3://")):
            bucket_path = location.split("://", 1)[1]
            filesystem, root = pafs.FileSystem.from_uri(f"s3://{bucket_path}")
            return cls(uri=f"s3a://{bucket_path}", fs=filesystem, root=root)
        if location.startswith("file://"):
            location = location[len("file://") :]
        absolute = Path(location).expanduser().resolve()
        return cls(uri=absolute.as_uri(), fs=pafs.LocalFileSystem(), root=str(absolute))

    def uri_of(self, relative: str) -> str:
        return f"{self.uri}/{relative}"

    def path_of(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path_of(relative)).type != pafs.FileType.NotFound

    def read_text(self, relative: str) -> str:
        with self.fs.open_input_stream(self.path_of(relative)) as stream:
            return stream.read().decode("utf-8")

    def write_text(self, relative: str, text: str) -> None:
        """Write via a temporary name and a move, so readers never see half a file."""
        path = self.path_of(relative)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        temporary = f"{path}.tmp"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(text.encode("utf-8"))
        self.fs.move(temporary, path)

    def delete(self, relative: str) -> None:
        info = self.fs.get_file_info(self.path_of(relative))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    def upload(self, local_file: Path, relative: str) -> None:
        self.fs.create_dir(self.path_of(relative).rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(
            str(local_file),
            self.path_of(relative),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )

    def move_dir(self, source: str, target: str) -> None:
        """Replace `target` with `source` (a rename locally; copy and delete on object stores)."""
        self.delete(target)
        target_path = self.path_of(target)
        self.fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.move(self.path_of(source), target_path)
        else:
            pafs.copy_files(self.path_of(source), target_path, source_filesystem=self.fs, destination_filesystem=self.fs)
            self.delete(source)

    def list_names(self, relative: str) -> list[str]:
        selector = pafs.FileSelector(self.path_of(relative), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))


class TableOutput(BaseModel):
    """One table of a partition: where its parquet is and what it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    rows: int
    column_types: tuple[tuple[str, str], ...]
    source_file: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.column_types)


class RawManifest(BaseModel):
    """The record that makes raw partition `day` visible: written last, read by every later step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str
    day: dt.date
    kind: Literal["full", "incremental"]
    watermark: dt.datetime | None
    requested_at: dt.datetime
    task_id: str
    run_id: str
    main_table: str
    tables: dict[str, TableOutput]


class SnapshotTable(TableOutput):
    """A snapshot table, with the renames that were applied to it (raw name → stored name)."""

    mapping_source: str | None = None
    renames: dict[str, str] = {}


class SnapshotManifest(BaseModel):
    """The record that makes snapshot `day` visible, and what it was built from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str
    day: dt.date
    run_id: str
    main_table: str
    base_day: dt.date | None
    raw_days: tuple[dt.date, ...]
    inserted: int
    replaced: int
    carried_forward: int
    removed: int
    tables: dict[str, SnapshotTable]


class Lake(dg.ConfigurableResource):
    """The raw and refined zones, laid out as in DESIGN.md, with manifest-based visibility."""

    raw_zone: str = Field(
        default="data/raw-zone", description="Root of the raw zone: a path, file://… or s3a://bucket/prefix."
    )
    refined_zone: str = Field(
        default="data/refined-zone", description="Root of the refined zone: a path, file://… or s3a://…"
    )

    @cached_property
    def raw(self) -> Zone:
        """Parsed once: on S3 this builds a filesystem client, which resolves credentials."""
        return Zone.parse(self.raw_zone)

    @cached_property
    def refined(self) -> Zone:
        return Zone.parse(self.refined_zone)

    @staticmethod
    def landing_dir(query: str, day: Day) -> str:
        return f"{RAW_DOWNLOADS}/{query}/{day.segments('import')}"

    @staticmethod
    def raw_table_root(query: str, table: str) -> str:
        return f"{RAW_PARQUET}/{query}/{table}"

    @classmethod
    def raw_table_dir(cls, query: str, table: str, day: Day) -> str:
        return f"{cls.raw_table_root(query, table)}/{day.segments('import')}"

    @staticmethod
    def snapshot_table_root(query: str, table: str) -> str:
        return f"{SNAPSHOTS}/{query}/{table}"

    @classmethod
    def snapshot_table_dir(cls, query: str, table: str, day: Day) -> str:
        return f"{cls.snapshot_table_root(query, table)}/{day.segments('snapshot')}"

    @staticmethod
    def staging_dir(run_id: str, query: str) -> str:
        return f"{STAGING}/{run_id}/{query}"

    def raw_manifests(self, query: str) -> list[RawManifest]:
        """Every committed raw partition of `query`, oldest first."""
        return _read_manifests(self.raw, f"{RAW_MANIFESTS}/{query}", RawManifest)

    def snapshot_manifests(self, query: str) -> list[SnapshotManifest]:
        """Every committed snapshot partition of `query`, oldest first."""
        return _read_manifests(self.refined, f"{SNAPSHOT_MANIFESTS}/{query}", SnapshotManifest)

    def commit_raw(self, manifest: RawManifest, moves: dict[str, str]) -> None:
        day = Day(manifest.day)
        _commit(
            self.raw,
            f"{RAW_MANIFESTS}/{manifest.query}/{day.compact}.json",
            manifest,
            moves,
            lambda table: self.raw_table_dir(manifest.query, table, day),
        )

    def commit_snapshot(self, manifest: SnapshotManifest, moves: dict[str, str]) -> None:
        day = Day(manifest.day)
        _commit(
            self.refined,
            f"{SNAPSHOT_MANIFESTS}/{manifest.query}/{day.compact}.json",
            manifest,
            moves,
            lambda table: self.snapshot_table_dir(manifest.query, table, day),
        )


_Manifest = TypeVar("_Manifest", RawManifest, SnapshotManifest)


def _read_manifests(zone: Zone, folder: str, model: type[_Manifest]) -> list[_Manifest]:
    return [
        model.model_validate_json(zone.read_text(f"{folder}/{name}"))
        for name in zone.list_names(folder)
        if name.endswith(".json")
    ]


def _commit(
    zone: Zone,
    manifest_path: str,
    manifest: RawManifest | SnapshotManifest,
    moves: dict[str, str],
    table_dir: Callable[[str], str],
) -> None:
    """Hide the day's old version, move the staged folders into place, then write the manifest.

    Tables the old version had and this one lacks are removed, so the folders match the manifest.
    """
    if zone.exists(manifest_path):
        previous = type(manifest).model_validate_json(zone.read_text(manifest_path))
        zone.delete(manifest_path)
        for table in previous.tables.keys() - manifest.tables.keys():
            zone.delete(table_dir(table))
    for source, target in moves.items():
        zone.move_dir(source, target)
    zone.write_text(manifest_path, manifest.model_dump_json(indent=2))
