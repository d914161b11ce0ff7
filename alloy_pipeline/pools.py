"""The Dagster concurrency pools the assets are in, and the limits an instance must give them.

A pool's limit lives in the instance, not in the code location: `dagster.yaml` sets one default
for every pool, so the per-query snapshot pools need setting one by one (`alloy-pipeline pools`).
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

ALLOY_POOL = "alloy_api"
"""The pool of every raw asset: it bounds Alloy exports in flight across runs, since Alloy
rate-limits per API key. `deploy/dagster.yaml`'s `default_limit` (4) is its limit."""
SNAPSHOT_POOL_LIMIT = 1


def snapshot_pool(query: str) -> str:
    """The Dagster concurrency pool of `query`'s snapshot asset, one per query.

    With its limit set to 1 (docs/production.md, section 7), one step at a time builds the query's
    snapshots, whichever runs the steps are in: a ranged backfill or cascade run and a single-day run
    of a day inside its range as well, which run tag limits cannot keep apart, since a ranged run
    carries no `dagster/partition` tag.
    """
    return f"alloy_snapshot_{query}"


def limit_snapshot_pools(instance: dg.DagsterInstance, queries: Iterable[str]) -> dict[str, int | None]:
    """Give each query's snapshot pool its limit of 1 on `instance`; idempotent.

    Returns the pools it changed, each with its limit before: None when the pool had none of its
    own (the instance's default, if any, applied).
    """
    storage = instance.event_log_storage
    pools = [snapshot_pool(query) for query in queries]
    changed: dict[str, int | None] = {}
    for pool, info in storage.get_concurrency_infos(pools).items():
        own = None if info.using_default_limit else info.limit
        if own != SNAPSHOT_POOL_LIMIT:
            storage.set_concurrency_slots(pool, SNAPSHOT_POOL_LIMIT)
            changed[pool] = own
    return changed
