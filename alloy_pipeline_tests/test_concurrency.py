"""All queries in one run, in parallel processes, with a bound on exports in flight against Alloy."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline_tests.harness import API_KEY, REPO


def step_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = record.timestamp
    return {step: (starts[step], ends[step]) for step in starts}


def overlap(first: tuple[float, float], second: tuple[float, float]) -> bool:
    return first[0] < second[1] and second[0] < first[1]


def test_one_run_materialises_every_query_with_exports_bounded(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, task_seconds=1.0) as simulator:
        completed = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
                "-m", "alloy_pipeline.definitions", "--select", "*", "--partition", "2024-03-01",
            ],
            env={
                **os.environ,
                "ALLOY_API_URL": simulator.url,
                "ALLOY_API_KEY": API_KEY,
                "ALLOY_AQS_DIR": str(REPO / "aqs_queries"),
                "ALLOY_RAW_ZONE": str(tmp_path / "raw"),
                "ALLOY_REFINED_ZONE": str(tmp_path / "refined"),
                "ALLOY_MAX_CONCURRENT_EXPORTS": "1",
                "ALLOY_CATALOG_METASTORE": str(tmp_path / "catalog"),
                "DAGSTER_HOME": str(home),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        windows = step_windows(instance, run.run_id)
    raw = [window for step, window in windows.items() if "__raw__" in step]
    snapshots = [window for step, window in windows.items() if "__snapshot__" in step]
    assert len(raw) == len(snapshots) == 3
    assert not any(overlap(a, b) for i, a in enumerate(raw) for b in raw[i + 1 :]), "one export at a time"
    assert any(overlap(a, b) for a in raw for b in snapshots), "other steps run alongside the export"
    assert (tmp_path / "catalog" / "metastore_db").is_dir(), "parallel steps shared the local metastore"
