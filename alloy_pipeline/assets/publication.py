"""Publishing a partition, the same way for raw and snapshot: commit, register, retire.

Both assets hand their staged tables and manifest to a `Publisher`, which runs the commit of
`commit.py`, points the catalog at the new version in between, and before anything else clears
what an earlier failed commit of the query left behind.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dagster as dg
from pyspark.sql import SparkSession

from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.commit import PartitionCommit, PendingCommit, recover
from alloy_pipeline.lake import LakeResource, Layer, RawManifest, SnapshotManifest
from alloy_pipeline.partitions import Day
from alloy_pipeline.zone import Zone


def runs_alive(instance: dg.DagsterInstance, own_run_id: str) -> Callable[[str], bool]:
    """Whether a run is still alive, as the instance knows it: queued, starting, started or canceling.

    The asking run's own id counts as dead: a step retried within its run may clear what its
    earlier attempt left.
    """

    def alive(run_id: str) -> bool:
        if run_id == own_run_id:
            return False
        run = instance.get_run_by_id(run_id)
        return run is not None and not run.is_finished

    return alive


@dataclass(frozen=True)
class Publisher:
    """Commits and registers the partitions of one query in one layer of the lake."""

    lake: LakeResource
    catalog: CatalogResource
    spark: SparkSession
    layer: Layer
    query: str
    log: logging.Logger | dg.DagsterLogManager
    alive: Callable[[str], bool]
    """Whether a run is still alive (`runs_alive`): recovery leaves such a run's commit alone."""

    @property
    def zone(self) -> Zone:
        return self.lake.zone(self.layer)

    def _manifest(self, text: str) -> RawManifest | SnapshotManifest:
        return self.layer.manifest_model.model_validate_json(text)

    def recover(self) -> None:
        """Finish or undo this query's commits that stopped half-way (see `commit.recover`)."""
        for line in recover(
            self.zone,
            self.query,
            dt.timedelta(minutes=self.lake.cleanup_grace_minutes),
            alive=self.alive,
            committed_dirs=self._committed_dirs,
            register=lambda pending: self.register(self._manifest(self.zone.read_text(pending.manifest_path))),
            warn=lambda message: self.log.warning(f"{self.query}: {message}"),
        ):
            self.log.info(f"{self.query}: after a failed commit, {line}")

    def _committed_dirs(self, pending: PendingCommit) -> frozenset[str]:
        text = self.zone.read_text_if_exists(pending.manifest_path)
        return frozenset(self._manifest(text).data_dirs(self.zone)) if text else frozenset()

    def begin(self, day: Day, run_id: str) -> PartitionCommit:
        """Start replacing `day`: stage under `.staging`, name folders after `.version`."""
        return PartitionCommit.begin(self.zone, self.query, day, run_id, self.layer.manifest_path(self.query, day))

    def register(self, manifest: RawManifest | SnapshotManifest) -> None:
        self.catalog.register_tables(
            self.spark,
            self.layer,
            self.query,
            Day(manifest.day),
            manifest.tables,
            root=lambda table: self.zone.uri_of(self.layer.table_root(self.query, table)),
        )

    def publish(
        self, commit: PartitionCommit, manifest: RawManifest | SnapshotManifest, moves: Mapping[str, str]
    ) -> None:
        """Commit `manifest` with its staged folders, register it, then delete the version it replaced."""
        commit.apply(manifest.model_dump_json(indent=2), moves, self._replaced_dirs(commit))
        self.register(manifest)
        commit.finish()

    def _replaced_dirs(self, commit: PartitionCommit) -> tuple[str, ...]:
        if commit.read is None:
            return ()
        try:
            return self._manifest(commit.read.text).data_dirs(self.zone)
        except ValueError:
            self.log.warning(
                f"{self.query} {commit.day.key}: the manifest being replaced cannot be read, so the folders of "
                "its version are left in place"
            )
            return ()
