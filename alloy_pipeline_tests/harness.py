"""A small driver for end-to-end tests: the real assets, configured resources, one instance."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pyspark.sql import DataFrame, SparkSession

from alloy_pipeline.alloy.client import AlloyResource
from alloy_pipeline.alloy.simulator import AlloySimulator
from alloy_pipeline.aqs import load_queries
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.cli import failure_messages
from alloy_pipeline.definitions import build_query_definitions
from alloy_pipeline.lake import LakeResource, RawManifest, SnapshotManifest
from alloy_pipeline.mapping import MappingResource
from alloy_pipeline.naming import raw_key
from alloy_pipeline.partitions import daily_partitions, ranged_run_tags
from alloy_pipeline.spark import SparkResource

REPO = Path(__file__).resolve().parents[1]
API_KEY = "e2e-secret-key"
RUN_TIME_COLUMNS = ("import_datetime", "import_timestamp")
PARTITIONS = daily_partitions("2024-01-01")


@dataclass
class Pipeline:
    """The pipeline as a user runs it, over a private lake and AQS folder, through the test engine."""

    simulator: AlloySimulator
    remote: str
    spark: SparkSession
    instance: dg.DagsterInstance
    root: Path
    mapping_location: str
    api_key_secret_id: str | None = None
    catalog: CatalogResource | None = None
    cleanup_grace_minutes: float | None = None

    @property
    def aqs_dir(self) -> Path:
        return self.root / "aqs"

    @property
    def lake(self) -> LakeResource:
        grace = {} if self.cleanup_grace_minutes is None else {"cleanup_grace_minutes": self.cleanup_grace_minutes}
        return LakeResource(raw_zone=str(self.root / "raw-zone"), refined_zone=str(self.root / "refined-zone"), **grace)

    @classmethod
    def create(
        cls,
        simulator: AlloySimulator,
        remote: str,
        spark: SparkSession,
        instance: dg.DagsterInstance,
        root: Path,
        queries: list[str],
        mapping_location: str | None = None,
    ) -> Pipeline:
        (root / "aqs").mkdir(parents=True)
        for name in queries:
            shutil.copy(REPO / "aqs_queries" / f"{name}.json", root / "aqs")
        return cls(simulator, remote, spark, instance, root, mapping_location or str(root / "mappings"))

    def keep_only(self, *names: str) -> Pipeline:
        """Remove every AQS file but `names`: a test about one query need not export the others."""
        for aqs_file in self.aqs_dir.glob("*.json"):
            if aqs_file.stem not in names:
                aqs_file.unlink()
        return self

    def keep_joins(self, name: str, prefix: str) -> Pipeline:
        """Drop the join attributes of AQS file `name` that do not begin with `prefix`: a test that
        follows one link need not export and merge the tables of the others."""
        aqs_file = self.aqs_dir / f"{name}.json"
        request = json.loads(aqs_file.read_text())
        properties = request["aqs"]["properties"]
        properties["joinAttributes"] = [path for path in properties["joinAttributes"] if path.startswith(prefix)]
        aqs_file.write_text(json.dumps(request))
        return self

    def resources(self) -> dict[str, object]:
        return {
            "alloy": AlloyResource(
                base_url=self.simulator.url,
                api_key=None if self.api_key_secret_id else API_KEY,
                api_key_secret_id=self.api_key_secret_id,
                poll_initial_seconds=0.05,
            ),
            "lake": self.lake,
            "mappings": MappingResource(location=self.mapping_location),
            "catalog": self.catalog or self.session_catalog(),
            "pyspark": SparkResource(remote=self.remote),
        }

    def session_catalog(self) -> CatalogResource:
        """Registration in the test engine's catalog, under databases of this test's own. Workers share
        the engine, and each names its folders alike (a module's `cascade0`), so the worker is named too."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        suffix = f"{worker}_{self.root.name}".lower().replace("-", "_")[-40:]
        return CatalogResource(backend="spark", raw_database=f"raw_{suffix}", refined_database=f"refined_{suffix}")

    def assets(self) -> list[dg.AssetsDefinition]:
        """Built from the AQS folder as it is now, as the code location would on reload."""
        return [
            asset
            for query in load_queries(self.aqs_dir)
            for asset in build_query_definitions(query, PARTITIONS).assets or ()
        ]

    def check_status_by_day(self, key: dg.AssetKey, check: str) -> dict[str, str]:
        """Each day's status of `check`, as the check's Partitions tab shows it: the per-partition state the
        UI reads (`SUCCEEDED`, `FAILED`, …), where a day whose evaluation judged an older materialization
        than the day's latest does not appear."""
        check_key = dg.AssetCheckKey(key, check)
        state = self.instance.event_log_storage.get_asset_check_state([(check_key, PARTITIONS)])[check_key]
        return {
            day: status.value
            for status, subset in state.subsets.items()
            for day in subset.subset_value.get_partition_keys()
        }

    def run(
        self, day: str, *, group: str | None = None, full_refresh: bool = False, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        assets = self.assets()
        run_config = (
            {
                "ops": {
                    raw_key(query.slug).to_python_identifier(): {"config": {"full_refresh": True}}
                    for query in load_queries(self.aqs_dir)
                }
            }
            if full_refresh
            else None
        )
        return dg.materialize(
            assets,
            selection=dg.AssetSelection.groups(group) if group else None,
            resources=self.resources(),
            partition_key=day,
            run_config=run_config,
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def rebuild(self, first: str, last: str, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """One run of the snapshot assets over `first`..`last`, as a backfill under their policy launches it."""
        return dg.materialize(
            self.assets(),
            selection=dg.AssetSelection.groups("alloy_snapshot"),
            resources=self.resources(),
            instance=self.instance,
            tags=ranged_run_tags(first, last),
            raise_on_error=raise_on_error,
        )

    def launch(self, request: dg.RunRequest, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """The run a sensor's `request` asks for: its assets and tags, in this pipeline's instance."""
        return dg.materialize(
            self.assets(),
            selection=request.asset_selection,
            tags=request.tags,
            resources=self.resources(),
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def stored_snapshots(self, query: str) -> dict[str, tuple[dict, dict[str, list[tuple]]]]:
        """What a reader of the lake gets for each snapshot day: its manifest, less what names the run
        and its inputs' runs, and every table's rows."""
        run_specific = {"run_id": True, "version": True, "inputs": True, "tables": {"__all__": {"path"}}}
        return {
            manifest.day.isoformat(): (
                manifest.model_dump(exclude=run_specific),
                {table: rows_of(self.spark.read.parquet(entry.path)) for table, entry in manifest.tables.items()},
            )
            for manifest in self.lake.snapshot_manifests(query)
        }

    def raw_manifest(self, query: str, day: str) -> RawManifest | None:
        return next((m for m in self.lake.raw_manifests(query) if m.day.isoformat() == day), None)

    def snapshot_manifest(self, query: str, day: str) -> SnapshotManifest | None:
        return next((m for m in self.lake.snapshot_manifests(query) if m.day.isoformat() == day), None)

    def raw_table(self, query: str, table: str, day: str) -> DataFrame:
        manifest = self.raw_manifest(query, day)
        assert manifest is not None, f"no raw partition {day} of {query}"
        return self.spark.read.parquet(manifest.tables[table].path)

    def snapshot_table(self, query: str, table: str, day: str) -> DataFrame:
        manifest = self.snapshot_manifest(query, day)
        assert manifest is not None, f"no snapshot partition {day} of {query}"
        return self.spark.read.parquet(manifest.tables[table].path)


def rows_of(frame: DataFrame, drop: tuple[str, ...] = ()) -> list[tuple]:
    """The frame's rows as sorted tuples of strings, for exact comparisons."""
    kept = [column for column in frame.columns if column not in drop]
    return sorted(
        tuple("<null>" if value is None else str(value) for value in row) for row in frame.select(*kept).collect()
    )


def failure_text(result: dg.ExecuteInProcessResult, step_key_part: str = "") -> str:
    """Every failed step's error, causes included, as one text to search (as `alloy-pipeline rebuild`
    reports them)."""
    return "\n".join(failure_messages(result, step_key_part))


def wait_until(condition: Callable[[], bool], what: str, seconds: float, poll: float = 0.2) -> None:
    """Poll `condition` every `poll` s until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(poll)
