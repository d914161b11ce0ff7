"""How soon the export client notices that an Alloy export finished (its polling's delay)."""

from __future__ import annotations

import logging
import time

from harness import API_KEY, REPO

from alloy_pipeline.alloy.client import AlloyClient
from alloy_pipeline.alloy.simulator import AlloySimulator, demo_dataset
from alloy_pipeline.aqs import load_query


def measure_notice_delay(task_seconds: float) -> float:
    """Seconds between a task completing in the simulator and the client noticing it."""
    request = load_query(REPO / "aqs_queries" / "Gully Inspections.json").request
    with AlloySimulator(dataset=demo_dataset(), api_key=API_KEY, task_seconds=task_seconds) as simulator:
        with AlloyClient(simulator.url, API_KEY, logger=logging.getLogger("bench")) as client:
            started = time.monotonic()
            task_id = client.start_export(request)
            client.wait_for(task_id)
            return time.monotonic() - started - task_seconds


def notice_table(delays: dict[float, float]) -> str:
    lines = ["| export task takes (s) | noticed after completion (s) |", "|---:|---:|"]
    return "\n".join(lines + [f"| {task:g} | {delay:.2f} |" for task, delay in delays.items()])
