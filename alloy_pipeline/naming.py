"""Names that users and scripts rely on: query and table slugs, asset keys (README, "Adding a query")."""

from __future__ import annotations

import re
from pathlib import PurePath

import dagster as dg

_JOINED_PREFIX = re.compile(r"(?i)^joineddesign_")


def slugify(name: str) -> str:
    """Lower-case `name` and turn every run of non-alphanumerics into `_`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower())


def table_slug(csv_name: str) -> str:
    """`JoinedDesign_Waste Container_1.csv` → `waste_container_1`; the main CSV keeps its name."""
    return slugify(_JOINED_PREFIX.sub("", PurePath(csv_name).stem))


def raw_key(query: str) -> dg.AssetKey:
    return dg.AssetKey(["alloy", "raw", query])


def snapshot_key(query: str) -> dg.AssetKey:
    return dg.AssetKey(["alloy", "snapshot", query])
