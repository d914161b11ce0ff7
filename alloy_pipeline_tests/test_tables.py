"""Running a day's tables' operations together: every one has ended before a failure is raised."""

import threading
import time

import pytest

from alloy_pipeline.tables import run_together


def test_writes_run_together_and_a_failure_waits_for_the_others() -> None:
    started, finished = threading.Barrier(2, timeout=5), threading.Event()

    def failing() -> None:
        started.wait()
        raise ValueError("disk full")

    def slow() -> str:
        started.wait()
        time.sleep(0.3)
        finished.set()
        return "written"

    with pytest.raises(ValueError, match="disk full"):
        run_together({"main": failing, "joined": slow})
    assert finished.is_set(), "the other write had ended before the failure was raised"
    assert run_together({"main": lambda: 1, "joined": lambda: 2}) == {"main": 1, "joined": 2}
