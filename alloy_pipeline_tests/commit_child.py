"""A snapshot run that stops in the middle of its commit, for test_commit_faults to kill.

Run as `python -m alloy_pipeline_tests.commit_child ROOT REMOTE RAW_DB REFINED_DB DAY MARKER`: it
materialises snapshot DAY of the query in ROOT/aqs against the lake under ROOT, and after its
first move into a version folder creates MARKER and waits to be killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg

from alloy_pipeline.alloy.client import AlloyResource
from alloy_pipeline.aqs import load_queries
from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.definitions import build_query_definitions
from alloy_pipeline.lake import LakeResource
from alloy_pipeline.mapping import MappingResource
from alloy_pipeline.partitions import daily_partitions
from alloy_pipeline.spark import SparkResource
from alloy_pipeline.zone import Zone


def main(root: Path, remote: str, raw_database: str, refined_database: str, day: str, marker: Path) -> None:
    move_dir = Zone.move_dir

    def move_then_wait(zone: Zone, source: str, target: str) -> None:
        move_dir(zone, source, target)
        marker.touch()
        time.sleep(600)

    Zone.move_dir = move_then_wait  # type: ignore[method-assign]
    assets = [
        asset
        for query in load_queries(root / "aqs")
        for asset in build_query_definitions(query, daily_partitions("2024-01-01")).assets or ()
    ]
    with dg.instance_for_test() as instance:
        dg.materialize(
            assets,
            selection=dg.AssetSelection.groups("alloy_snapshot"),
            partition_key=day,
            instance=instance,
            resources={
                "alloy": AlloyResource(api_key="unused: the snapshot assets make no export"),
                "lake": LakeResource(raw_zone=str(root / "raw-zone"), refined_zone=str(root / "refined-zone")),
                "mappings": MappingResource(location=str(root / "mappings")),
                "catalog": CatalogResource(raw_database=raw_database, refined_database=refined_database),
                "pyspark": SparkResource(remote=remote),
            },
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], Path(sys.argv[6]))
