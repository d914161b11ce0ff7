"""`make demo` as a user runs it: `alloy-pipeline demo` in a subprocess, which starts and stops an
engine of its own on port 15002, timed by the lines it prints. The bench times it before its own
engine starts, so nothing else runs meanwhile.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import BIN, REPO, clean_environment

DEMO_MILESTONES = {
    "engine up": re.compile(r"^Spark engine at "),
    "first day": re.compile(r"^\d{4}-\d{2}-\d{2}: materialising"),
    "rebuild": re.compile(r"^Rebuilding every snapshot"),
    "rebuilt": re.compile(r"^Rebuilt "),
    "done": re.compile(r"^Browse the runs"),
}
"""Lines of the demo's output that end its phases: first match of each, timed as it is printed."""


@dataclass(frozen=True)
class DemoRun:
    """The demo's wall time, when each milestone line was printed, and whether its rebuild matched."""

    wall: float
    milestones: dict[str, float]
    identical: bool

    def phases(self) -> dict[str, float]:
        """Engine start, setup, the days, the rebuild and its comparison, the query and engine stop,
        and the process's exit after its last line."""
        at = self.milestones
        return {
            "engine start": at["engine up"],
            "setup": at["first day"] - at["engine up"],
            "days": at["rebuild"] - at["first day"],
            "rebuild": at["rebuilt"] - at["rebuild"],
            "query, engine stop": at["done"] - at["rebuilt"],
            "exit": self.wall - at["done"],
        }


def measure_demo(root: Path) -> DemoRun:
    """`make demo` as a user runs it: its own engine in `root/engine` on port 15002, and the simulator."""
    (root / "dagster_home").mkdir(parents=True)
    environment = clean_environment(DAGSTER_HOME=str(root / "dagster_home"), PYTHONUNBUFFERED="1")
    milestones: dict[str, float] = {}
    started = time.perf_counter()
    demo = subprocess.Popen(
        [str(BIN / "alloy-pipeline"), "demo", "--data", str(root)],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    assert demo.stdout is not None
    for line in demo.stdout:
        output.append(line)
        for name, pattern in DEMO_MILESTONES.items():
            if name not in milestones and pattern.match(line):
                milestones[name] = time.perf_counter() - started
    returncode = demo.wait()
    wall = time.perf_counter() - started
    text = "".join(output)
    if set(milestones) != set(DEMO_MILESTONES):
        raise RuntimeError(f"the demo failed (exit {returncode}):\n{text[-4000:]}")
    return DemoRun(wall=wall, milestones=milestones, identical="identical to the originals" in text)


def demo_table(demo: DemoRun) -> str:
    phases = demo.phases()
    return "\n".join(
        [
            "| `alloy-pipeline demo` (s) | " + " | ".join(f"{name} (s)" for name in phases) + " | rebuild identical |",
            "|---:|" + "---:|" * len(phases) + "---|",
            f"| {demo.wall:.1f} | "
            + " | ".join(f"{value:.1f}" for value in phases.values())
            + f" | {'yes' if demo.identical else 'NO'} |",
        ]
    )
