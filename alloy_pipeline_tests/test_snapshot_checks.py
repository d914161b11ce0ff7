"""The snapshot's checks measure the main table as written, so a broken merge fails them.

Gully Inspections alone (one table, 100 items): each broken merge is the real asset run with
the merge's frame function replaced, over the same committed day 1 and raw day 2; then a raw
day 2 that repeats an item.
"""

from collections.abc import Callable
from typing import NoReturn

import dagster as dg
import pytest
from pyspark.sql import DataFrame

from alloy_pipeline import snapshot_audit, snapshot_merge
from alloy_pipeline.lake import STAGING
from alloy_pipeline_tests.harness import Pipeline, failure_text

QUERY = "gully_inspections"
GULLIES = "designs_gullyInspection"
DAYS = ["2024-03-01", "2024-03-02"]
Upsert = Callable[[DataFrame, DataFrame, DataFrame, str], DataFrame]


def keeping_old_rows(current: DataFrame, increment: DataFrame, changed: DataFrame, key: str) -> DataFrame:
    """Replaced items keep their old row; only new items come from the increment."""
    fresh = increment.join(current.select(key), key, "left_anti")
    return current.unionByName(fresh, allowMissingColumns=True)


def dropping_carried_forward(current: DataFrame, increment: DataFrame, changed: DataFrame, key: str) -> DataFrame:
    """The increment alone: the items it does not hold are lost."""
    return increment


def duplicating_keys(current: DataFrame, increment: DataFrame, changed: DataFrame, key: str) -> DataFrame:
    """Old and new rows of every replaced item (an anti-join that removes nothing)."""
    return current.unionByName(increment, allowMissingColumns=True)


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, dict]]:
    return {
        e.check_name: (e.passed, {key: value.value for key, value in e.metadata.items()})
        for e in result.get_asset_check_evaluations()
    }


def counted_exactly(*args: object) -> NoReturn:
    raise AssertionError("a correct table is proven by its count and digest, without the shuffle of every id")


def test_the_checks_catch_a_broken_merge(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    gullies = pipeline.keep_only("Gully Inspections")
    dataset = gullies.simulator.dataset
    total = dataset.count(GULLIES)
    with monkeypatch.context() as patch:
        patch.setattr(snapshot_audit, "_measure", counted_exactly)
        first = evaluations(gullies.run(DAYS[0]))
        edited = set(dataset.edit(GULLIES, 3))
        dataset.insert(GULLIES, 2)
        correct = gullies.run(DAYS[1])
    assert first["unique_item_id"] == (
        True,
        {"rows": total, "distinct_keys": total, "duplicated_keys": 0, "examples": []},
    )
    assert first["row_count_reconciles"][1]["expected_rows"] == total

    total += 2
    reconciled = {
        "rows": total,
        "distinct_keys": total,
        "expected_rows": total,
        "missing_keys": 0,
        "unexpected_keys": 0,
        "stale_keys": 0,
        "replaced": 3,
    }
    assert evaluations(correct)["row_count_reconciles"] == (True, reconciled)
    assert evaluations(correct)["unique_item_id"][0]
    committed = gullies.snapshot_manifest(QUERY, DAYS[1])
    assert (committed.inserted, committed.replaced, committed.carried_forward) == (2, 3, total - 5)

    def snapshot_with(upsert: Upsert, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        with monkeypatch.context() as patch:
            patch.setattr(snapshot_merge, "upsert_root_items", upsert)
            return gullies.run(DAYS[1], group="alloy_snapshot", raise_on_error=raise_on_error)

    blocked = snapshot_with(duplicating_keys, raise_on_error=False)
    assert not blocked.success
    passed, metadata = evaluations(blocked)["unique_item_id"]
    assert not passed and metadata["duplicated_keys"] == 3 and set(metadata["examples"]) == edited
    assert "row_count_reconciles" not in evaluations(blocked), "nothing was committed to reconcile"
    message = failure_text(blocked, "snapshot")
    assert f"query {QUERY}, partition {DAYS[1]}: the main table as written repeats 3 item ids" in message
    assert "no raw main table repeats one, so the merge did" in message and "not committed" in message
    assert gullies.snapshot_manifest(QUERY, DAYS[1]) == committed
    assert gullies.snapshot_table(QUERY, QUERY, DAYS[1]).count() == total
    assert not any((gullies.root / "refined-zone" / STAGING / QUERY).glob("*")), "the staging was removed"

    stale = evaluations(snapshot_with(keeping_old_rows))
    assert stale["unique_item_id"][0]
    assert stale["row_count_reconciles"] == (False, reconciled | {"stale_keys": 3})

    lost = evaluations(snapshot_with(dropping_carried_forward))
    assert lost["unique_item_id"][0]
    assert lost["row_count_reconciles"] == (
        False,
        reconciled | {"rows": 5, "distinct_keys": 5, "missing_keys": total - 5},
    )

    # A raw partition that repeats an item: the merge is right, and the message says where the repeat came from.
    committed = gullies.snapshot_manifest(QUERY, DAYS[1])
    raw = gullies.raw_manifest(QUERY, DAYS[1]).tables[QUERY].path
    gullies.spark.read.parquet(raw).limit(1).write.mode("append").parquet(raw)
    repeated = gullies.run(DAYS[1], group="alloy_snapshot", raise_on_error=False)
    [unique] = [e for e in repeated.get_asset_check_evaluations() if e.check_name == "unique_item_id"]
    assert not unique.passed and unique.blocking and unique.metadata["duplicated_keys"].value == 1
    message = failure_text(repeated, "snapshot")
    assert "a raw main table repeats 1 item ids" in message and "(check unique_item_id)" in message
    assert gullies.snapshot_manifest(QUERY, DAYS[1]) == committed
