"""The synthetic query, as the rebuild and the per-size steps run it: a workspace under one folder
(its AQS file, lake and catalog databases), runs of its assets in process, and the baseline every
snapshot is held against, a plain Spark copy of one.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from harness import API_KEY, Window, timed
from pyspark.sql import SparkSession

from alloy_pipeline.alloy.client import API_URL_VARIABLE, AlloyResource
from alloy_pipeline.alloy.simulator import synthetic_request
from alloy_pipeline.aqs import load_queries
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.definitions import DEFAULT_SNAPSHOT_DAYS_PER_RUN, build_query_definitions
from alloy_pipeline.lake import LakeResource, SnapshotManifest
from alloy_pipeline.mapping import MappingResource
from alloy_pipeline.partitions import daily_partitions, ranged_run_tags
from alloy_pipeline.spark import SparkResource

QUERY = "synthetic_records"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass(frozen=True)
class Workspace:
    """The synthetic query's AQS folder, lake and catalog databases, under one folder.

    The bench and its child processes rebuild the same assets and resources from the folder alone.
    """

    root: Path

    @classmethod
    def create(cls, root: Path) -> Workspace:
        (root / "aqs").mkdir(parents=True)
        (root / "aqs" / "Synthetic Records.json").write_text(json.dumps(synthetic_request()))
        return cls(root)

    @property
    def lake(self) -> LakeResource:
        return LakeResource(raw_zone=str(self.root / "lake" / "raw"), refined_zone=str(self.root / "lake" / "refined"))

    def assets(self) -> list[dg.AssetsDefinition]:
        """The query's assets, with as many snapshot days a backfill run as the code location gives them."""
        [query] = load_queries(self.root / "aqs")
        days_per_run = int(os.environ.get("ALLOY_SNAPSHOT_DAYS_PER_RUN", DEFAULT_SNAPSHOT_DAYS_PER_RUN))
        definitions = build_query_definitions(query, daily_partitions("2024-01-01"), days_per_run=days_per_run)
        return list(definitions.assets or ())

    def resources(self, alloy_url: str, remote: str) -> dict[str, object]:
        """The pipeline's resources, its steps thin clients of the engine at `remote`; the environment names
        `alloy_url` as the Alloy API, as an operator's would (the key goes nowhere else)."""
        os.environ[API_URL_VARIABLE] = alloy_url
        return {
            "alloy": AlloyResource(base_url=alloy_url, api_key=API_KEY),
            "lake": self.lake,
            "mappings": MappingResource(location=str(self.mappings)),
            "catalog": self.catalog,
            "pyspark": SparkResource(remote=remote),
        }

    @property
    def mappings(self) -> Path:
        return self.root / "lake" / "mappings"

    @property
    def database(self) -> str:
        """The prefix of the workspace's own databases in the engine's catalog, named after its folder."""
        return "bench_" + re.sub(r"\W", "_", self.root.name).lower()

    @property
    def catalog(self) -> CatalogResource:
        return CatalogResource(
            backend="spark", raw_database=f"{self.database}_raw", refined_database=f"{self.database}_refined"
        )

    def snapshot(self, day: str) -> SnapshotManifest:
        return next(manifest for manifest in self.lake.snapshot_manifests(QUERY) if manifest.day.isoformat() == day)


@dataclass
class Materializer:
    """In-process runs of one group of the workspace's assets on one instance, timed."""

    workspace: Workspace
    alloy_url: str
    remote: str
    instance: dg.DagsterInstance

    def run(
        self, group: str, *, day: str | None = None, days: Sequence[str] = (), config: dict | None = None
    ) -> tuple[Window, dg.ExecuteInProcessResult]:
        """One run of `day`, or one ranged run over `days` (as a backfill under the assets' policy)."""
        tags = ranged_run_tags(days[0], days[-1]) if days else None
        assets, resources = self.workspace.assets(), self.workspace.resources(self.alloy_url, self.remote)
        return timed(
            lambda: dg.materialize(
                assets,
                selection=dg.AssetSelection.groups(f"alloy_{group}"),
                partition_key=day,
                resources=resources,
                instance=self.instance,
                run_config=QUIET | (config or {}),
                tags=tags,
            )
        )


def plain_copies(spark: SparkSession, manifest: SnapshotManifest, target: Path, times: int = 1) -> Window:
    """Read and write every table of a snapshot, `times` over: the least that writing a day's snapshot costs."""
    started = time.time()
    for number in range(times):
        for table, entry in manifest.tables.items():
            spark.read.parquet(entry.path).write.mode("overwrite").parquet(str(target / str(number) / table))
    return Window(started, time.time())
