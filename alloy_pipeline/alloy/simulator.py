"""A local Alloy API: the four export endpoints over real HTTP on loopback, for the demo and tests.

Why a simulator rather than mocks: the hard parts of the pipeline are HTTP behaviour (polling,
429s, 5xx, dropped connections, streamed downloads) and the exact shape of Alloy's CSV export
(join files, duplicate headers, quoted newlines). Both are only tested honestly against a server
that speaks HTTP and writes real zips. The data is derived from a seed, so tests can assert exact
rows, and it can be mutated (edit, insert, delete, relink) so incremental runs have work to do.

    with AlloySimulator(dataset=demo_dataset(), api_key="demo-key") as sim:
        sim.url  # "http://127.0.0.1:<port>"

`python -m alloy_pipeline.alloy.simulator --port 8765 --api-key demo-key` serves the demo dataset
in the foreground, for pointing `dagster dev` at.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hmac
import io
import json
import math
import random
import re
import secrets
import signal
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------

Sampler = Callable[[random.Random], str | None]
"""Draws a realistic value for an attribute: used for new items and for edits."""

_YEAR_2023 = datetime(2023, 1, 1, tzinfo=timezone.utc)
_SECONDS_PER_YEAR = 365 * 24 * 3600
_MAX_ITEMS_PER_DESIGN = 1 << 24  # the 6-hex counter at the end of an item id
_EPOCH_2021 = int(datetime(2021, 1, 1, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class Attribute:
    """A value attribute of a design (`attributes_…` code, display name)."""

    code: str
    name: str
    sample: Sampler = field(repr=False, compare=False)


@dataclass(frozen=True)
class LinkAttribute:
    """An attribute whose value is a list of items of the `target` design."""

    code: str
    name: str
    target: str


@dataclass(frozen=True)
class Design:
    """An Alloy design (`designs_…` code): the schema that items of one kind share."""

    code: str
    name: str
    attributes: tuple[Attribute, ...]
    links: tuple[LinkAttribute, ...] = ()

    def attribute_position(self, code: str) -> int:
        """Index of value attribute `code` in `attributes` (and in every item's `values`)."""
        for position, attribute in enumerate(self.attributes):
            if attribute.code == code:
                return position
        raise KeyError(f"design {self.code} has no attribute {code}")

    def link_position(self, code: str) -> int:
        """Index of link attribute `code` in `links` (and in every item's `links`)."""
        for position, link in enumerate(self.links):
            if link.code == code:
                return position
        raise KeyError(f"design {self.code} has no link attribute {code}")


@dataclass(frozen=True, slots=True)
class Item:
    """One item: values aligned with its design's `attributes`, links with its `links`."""

    id: str
    last_edit_date: datetime
    values: tuple[str | None, ...]
    links: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Changes:
    """What `Dataset.simulate_day` did, as item ids, so tests can assert on it."""

    edited: tuple[str, ...]
    inserted: tuple[str, ...]
    deleted: tuple[str, ...]
    unlinked: tuple[str, ...]


def _now_ms() -> datetime:
    """Now in UTC, to the millisecond: Alloy stores and filters `lastEditDate` at that precision."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _link_count(rng: random.Random) -> int:
    """How many items a new link holds: mostly one, sometimes none, now and then two."""
    return rng.choices((0, 1, 2), weights=(8, 88, 4))[0]


class _ItemTable:
    """The items of one design in creation order: an optional generated base plus overrides.

    Base items are computed from their index on demand, which is what lets a million-item
    benchmark dataset fit in a few megabytes. Edits and inserts are stored in `_overrides`;
    a deletion is an override of `None`. Ids look like MongoDB ObjectIds (a timestamp and a
    random part shared by the design, then a counter), so an id maps back to its index
    without a lookup table.
    """

    _BASE = object()

    def __init__(
        self,
        design: Design,
        rng: random.Random,
        base_count: int = 0,
        make_base: Callable[[int, str], Item] | None = None,
    ) -> None:
        if base_count and make_base is None:
            raise ValueError("a generated base needs a make_base function")
        if base_count > _MAX_ITEMS_PER_DESIGN:
            raise ValueError(f"at most {_MAX_ITEMS_PER_DESIGN:,} items per design")
        self.design = design
        created = _EPOCH_2021 + rng.randrange(2 * _SECONDS_PER_YEAR)
        self.id_prefix = f"{created:08x}{rng.getrandbits(40):010x}"
        self._counter_base = rng.randrange(_MAX_ITEMS_PER_DESIGN)
        self._make = make_base
        self._base_count = base_count
        self._next = base_count
        self._overrides: dict[int, Item | None] = {}
        self._deleted = 0

    def __len__(self) -> int:
        return self._next - self._deleted

    def __iter__(self) -> Iterator[Item]:
        for index in range(self._next):
            item = self._at(index)
            if item is not None:
                yield item

    def id_for(self, index: int) -> str:
        return f"{self.id_prefix}{(self._counter_base + index) % _MAX_ITEMS_PER_DESIGN:06x}"

    def get(self, item_id: str) -> Item | None:
        index = self._index_of(item_id)
        return None if index is None else self._at(index)

    def put(self, item: Item) -> None:
        """Replace an existing item (an edit or a relink)."""
        index = self._index_of(item.id)
        if index is None or self._at(index) is None:
            raise KeyError(f"{item.id} is not a live {self.design.code} item")
        self._overrides[index] = item

    def append(
        self, values: tuple[str | None, ...], links: tuple[tuple[str, ...], ...], last_edit: datetime
    ) -> Item:
        if self._next >= _MAX_ITEMS_PER_DESIGN:
            raise ValueError(f"design {self.design.code} is full")
        item = Item(self.id_for(self._next), last_edit, values, links)
        self._overrides[self._next] = item
        self._next += 1
        return item

    def remove(self, item_id: str) -> None:
        index = self._index_of(item_id)
        if index is None or self._at(index) is None:
            raise KeyError(f"{item_id} is not a live {self.design.code} item")
        self._overrides[index] = None
        self._deleted += 1

    def sample_ids(self, rng: random.Random, k: int) -> list[str]:
        """`k` distinct live ids, chosen at random without materialising the table."""
        if k > len(self):
            raise ValueError(f"cannot pick {k} of the {len(self)} live {self.design.code} items")
        picks = rng.sample(range(self._next), k + self._deleted)
        alive = [index for index in picks if self._overrides.get(index, self._BASE) is not None]
        return [self.id_for(index) for index in alive[:k]]

    def first_from(self, rng: random.Random, wanted: Callable[[Item], bool]) -> Item | None:
        """The first item satisfying `wanted`, scanning from a random position and wrapping."""
        if not self._next:
            return None
        start = rng.randrange(self._next)
        for offset in range(self._next):
            item = self._at((start + offset) % self._next)
            if item is not None and wanted(item):
                return item
        return None

    def _index_of(self, item_id: str) -> int | None:
        if len(item_id) != 24 or not item_id.startswith(self.id_prefix):
            return None
        try:
            index = (int(item_id[18:], 16) - self._counter_base) % _MAX_ITEMS_PER_DESIGN
        except ValueError:
            return None
        return index if index < self._next else None

    def _at(self, index: int) -> Item | None:
        item = self._overrides.get(index, self._BASE)
        if item is self._BASE:
            assert self._make is not None and index < self._base_count
            return self._make(index, self.id_for(index))
        return item  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Dataset: reads and mutations
# --------------------------------------------------------------------------------------------


class Dataset:
    """The items of every design, behind one lock; build one with `demo_dataset()` or
    `synthetic_dataset()`.

    Mutations stamp `lastEditDate = now` on what they change, as Alloy does, so incremental
    exports (`lastEditDate > watermark`) pick them up. Random choices come from a generator
    seeded from the dataset's seed, so a test that repeats the same calls gets the same items.
    """

    def __init__(self, tables: Iterable[_ItemTable], *, seed: int) -> None:
        self._tables = {table.design.code: table for table in tables}
        self._by_prefix = {table.id_prefix: table for table in self._tables.values()}
        if len(self._by_prefix) != len(self._tables):
            raise ValueError("two designs share an id prefix")
        for table in self._tables.values():
            for link in table.design.links:
                if link.target not in self._tables:
                    raise ValueError(f"{table.design.code}.{link.code} links to unknown {link.target}")
        self._lock = threading.RLock()
        self._rng = random.Random(f"{seed}:changes")

    @property
    def lock(self) -> threading.RLock:
        """Hold this while reading with `items()` to see one consistent snapshot."""
        return self._lock

    @property
    def designs(self) -> Mapping[str, Design]:
        return MappingProxyType({code: table.design for code, table in self._tables.items()})

    def design(self, code: str) -> Design:
        return self._table(code).design

    def items(self, design: str) -> Iterator[Item]:
        """Live items of `design` in creation order (lazily; hold `lock` while iterating)."""
        return iter(self._table(design))

    def find(self, item_id: str) -> Item | None:
        """The live item with this id, whatever its design, or None."""
        with self._lock:
            table = self._by_prefix.get(item_id[:18])
            return None if table is None else table.get(item_id)

    def item(self, item_id: str) -> Item:
        found = self.find(item_id)
        if found is None:
            raise KeyError(f"no live item {item_id}")
        return found

    def ids(self, design: str) -> list[str]:
        with self._lock:
            return [item.id for item in self._table(design)]

    def count(self, design: str) -> int:
        with self._lock:
            return len(self._table(design))

    def value(self, item_id: str, attribute: str) -> str | None:
        """The value of attribute code `attribute` on an item."""
        with self._lock:
            item = self.item(item_id)
            return item.values[self._design_of(item_id).attribute_position(attribute)]

    def linked_ids(self, item_id: str, link_attribute: str) -> tuple[str, ...]:
        with self._lock:
            item = self.item(item_id)
            return item.links[self._design_of(item_id).link_position(link_attribute)]

    def edit(self, design: str, items: int | Iterable[str] = 1) -> list[str]:
        """Change one attribute value on `items` (a count picked at random, or ids); their ids."""
        with self._lock:
            return self._edit(self._table(design), items, self._rng)

    def set_value(self, item_id: str, attribute: str, value: str | None) -> None:
        """Set attribute code `attribute` of one item to `value` (an edit with a chosen value)."""
        with self._lock:
            table = self._table(self._design_of(item_id).code)
            position = table.design.attribute_position(attribute)
            table.put(_with_value(self.item(item_id), position, value, _now_ms()))

    def insert(self, design: str, n: int = 1) -> list[str]:
        """Create `n` items with realistic values (and links, if the design has any); their ids."""
        with self._lock:
            return self._insert(self._table(design), n, self._rng)

    def delete(self, design: str, items: int | Iterable[str]) -> list[str]:
        """Delete `items` (a count picked at random, or ids); the deleted ids.

        Items that linked to a deleted item lose that link and count as edited, so no export
        ever holds a link to an item that is gone.
        """
        with self._lock:
            return self._delete(self._table(design), items, self._rng)

    def relink(self, item_id: str, link_attribute: str, new_ids: Sequence[str]) -> None:
        """Point link attribute code `link_attribute` of one item at `new_ids` (empty: clear it)."""
        with self._lock:
            table = self._table(self._design_of(item_id).code)
            position = table.design.link_position(link_attribute)
            target = self._table(table.design.links[position].target)
            for new_id in new_ids:
                if target.get(new_id) is None:
                    raise KeyError(f"{new_id} is not a live {target.design.code} item")
            table.put(_with_links(self.item(item_id), position, tuple(new_ids), _now_ms()))

    def simulate_day(self, seed: int) -> Changes:
        """A small day of council work on every root design (one that nothing links to).

        About 3% of items edited, 1% deleted, 2% inserted (at least one of each), and on each
        design with links one item's link cleared. Linked designs (streets, containers) are left
        alone because editing them would not bump their root items' `lastEditDate` in Alloy
        either, and a demo day should be fully visible to an incremental export.
        """
        rng = random.Random(seed)
        edited: list[str] = []
        inserted: list[str] = []
        deleted: list[str] = []
        unlinked: list[str] = []
        with self._lock:
            for table in self._root_tables():
                size = len(table)
                n_edit, n_delete = max(1, size * 3 // 100), max(1, size // 100)
                picked = table.sample_ids(rng, min(size, n_edit + n_delete))
                deleted += self._delete(table, picked[:n_delete], rng)
                edited += self._edit(table, picked[n_delete:], rng)
                unlinked += self._clear_one_link(table, rng)
                inserted += self._insert(table, max(1, size // 50), rng)
        return Changes(tuple(edited), tuple(inserted), tuple(deleted), tuple(unlinked))

    def _table(self, design: str) -> _ItemTable:
        try:
            return self._tables[design]
        except KeyError:
            raise KeyError(f"unknown design {design}") from None

    def _design_of(self, item_id: str) -> Design:
        table = self._by_prefix.get(item_id[:18])
        if table is None:
            raise KeyError(f"no live item {item_id}")
        return table.design

    def _root_tables(self) -> list[_ItemTable]:
        targets = {link.target for table in self._tables.values() for link in table.design.links}
        return [table for code, table in self._tables.items() if code not in targets]

    def _pick(self, table: _ItemTable, items: int | Iterable[str], rng: random.Random) -> list[Item]:
        if isinstance(items, int):
            ids = table.sample_ids(rng, items)
        else:
            ids = [items] if isinstance(items, str) else list(items)
        picked = [table.get(item_id) for item_id in ids]
        missing = [item_id for item_id, item in zip(ids, picked, strict=True) if item is None]
        if missing:
            raise KeyError(f"not live {table.design.code} items: {', '.join(missing)}")
        return picked  # type: ignore[return-value]

    def _edit(self, table: _ItemTable, items: int | Iterable[str], rng: random.Random) -> list[str]:
        now = _now_ms()
        picked = self._pick(table, items, rng)
        for item in picked:
            position = rng.randrange(len(table.design.attributes))
            value = _different_value(table.design.attributes[position], item.values[position], rng)
            table.put(_with_value(item, position, value, now))
        return [item.id for item in picked]

    def _insert(self, table: _ItemTable, n: int, rng: random.Random) -> list[str]:
        now = _now_ms()
        return [table.append(*self._new_content(table.design, rng), now).id for _ in range(n)]

    def _new_content(
        self, design: Design, rng: random.Random
    ) -> tuple[tuple[str | None, ...], tuple[tuple[str, ...], ...]]:
        values = tuple(attribute.sample(rng) for attribute in design.attributes)
        links = tuple(self._new_link(link, rng) for link in design.links)
        return values, links

    def _new_link(self, link: LinkAttribute, rng: random.Random) -> tuple[str, ...]:
        target = self._tables[link.target]
        return tuple(target.sample_ids(rng, min(len(target), _link_count(rng))))

    def _delete(self, table: _ItemTable, items: int | Iterable[str], rng: random.Random) -> list[str]:
        gone = [item.id for item in self._pick(table, items, rng)]
        for item_id in gone:
            table.remove(item_id)
        self._drop_links_to(table.design.code, frozenset(gone))
        return gone

    def _drop_links_to(self, design: str, gone: frozenset[str]) -> None:
        now = _now_ms()
        for table in self._tables.values():
            positions = [i for i, link in enumerate(table.design.links) if link.target == design]
            if not positions or not gone:
                continue
            stale = [item for item in table if any(gone.intersection(item.links[i]) for i in positions)]
            for item in stale:
                links = tuple(
                    tuple(i for i in ids if i not in gone) if position in positions else ids
                    for position, ids in enumerate(item.links)
                )
                table.put(dataclasses.replace(item, links=links, last_edit_date=now))

    def _clear_one_link(self, table: _ItemTable, rng: random.Random) -> list[str]:
        if not table.design.links:
            return []
        item = table.first_from(rng, lambda candidate: any(candidate.links))
        if item is None:
            return []
        position = rng.choice([i for i, ids in enumerate(item.links) if ids])
        table.put(_with_links(item, position, (), _now_ms()))
        return [item.id]


def _with_value(item: Item, position: int, value: str | None, now: datetime) -> Item:
    values = item.values[:position] + (value,) + item.values[position + 1 :]
    return dataclasses.replace(item, values=values, last_edit_date=now)


def _with_links(item: Item, position: int, ids: tuple[str, ...], now: datetime) -> Item:
    links = item.links[:position] + (ids,) + item.links[position + 1 :]
    return dataclasses.replace(item, links=links, last_edit_date=now)


def _different_value(attribute: Attribute, old: str | None, rng: random.Random) -> str | None:
    """A fresh sample that differs from `old`, so an edit is visible in the export."""
    for _ in range(50):
        value = attribute.sample(rng)
        if value != old:
            return value
    return f"{old or ''} (edited)"


def _moment_in_2023(rng: random.Random) -> datetime:
    return _YEAR_2023 + timedelta(seconds=rng.randrange(_SECONDS_PER_YEAR), milliseconds=rng.randrange(1000))


def _alloy_datetime(moment: datetime) -> str:
    """UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form Alloy uses in exports and DateTime filters."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------
# The demo dataset: a small fictional council
# --------------------------------------------------------------------------------------------

# fmt: off
_STREET_NAMES = (
    "High Street", "Station Road", "Church Lane", "Mill Lane", "Victoria Road", "Park Avenue",
    "London Road", "Queen Street", "King's Road", "The Crescent", "Albert Road", "Manor Way",
    "Orchard Close", "Green Lane", "Bridge Street", "Market Place", "North Street", "School Lane",
    "Chapel Street", "Elm Grove", "St John's Road", "Castle Hill", "Meadow View", "Windmill Rise",
    "Brook Street", "Cherry Tree Walk", "Priory Road", "Kingsway", "Water Lane", "Oak Drive",
)
_TOWNS = ("Ashford", "Maidstone", "Tonbridge", "Sevenoaks", "Dartford", "Faversham")
_STATUS_WEIGHTS = MappingProxyType({"Open": 35, "In Progress": 20, "Closed": 45})
_ROAD_CLASS_WEIGHTS = MappingProxyType({"A Road": 2, "B Road": 3, "Unclassified": 10})
_CONTAINER_TYPE_WEIGHTS = MappingProxyType(
    {"240L Wheelie Bin": 10, "1100L Eurobin": 3, "660L Eurobin": 2, "Recycling Box": 4, "Food Caddy": 4}
)
_PRIORITY_WEIGHTS = MappingProxyType({"Low": 4, "Medium": 6, "High": 3, "Urgent": 1})
_CONDITION_WEIGHTS = MappingProxyType({"Good": 5, "Fair": 4, "Poor": 2, "Blocked": 1})
_JOB_TYPES = (
    "Bin Delivery", "Bin Repair", "Bin Removal", "Missed Collection", "Bin Replacement", "Lid Replacement"
)
_SURFACES = ("Brick wall", "Bus shelter", "Shop shutter", "Bridge", "Road sign", "Telecom cabinet", "Bench")
_JOB_NOTES: tuple[str | None, ...] = (
    None, None, None, None,
    "Bin left at kerbside after collection",
    "Access via rear lane, gate code 4412",
    'Resident reports bin "disappeared" overnight',
    "Lid hinge broken, replace lid only",
    "Called twice.\nNo answer at the door.",
    'Crew note: "blocked by parked van", will retry Thursday',
    "Assisted collection, bin kept in front garden",
    "Contaminated recycling; tag left on bin",
    'Wheel missing, resident says "it has been like this for weeks"',
    "Delivery to flat 3, leave with concierge",
    "Duplicate of an earlier job,\nclosed by supervisor",
)
_GRAFFITI_DESCRIPTIONS: tuple[str | None, ...] = (
    None, None,
    'Tag reads "KZ", approx 2m x 1m, blue spray paint',
    "Offensive wording on bus shelter.\nPriority removal requested.",
    "Small tag on telecom cabinet",
    "Mural-style piece, owner consent unknown",
    "Black marker tags on both sides of the underpass",
    'Caller says it\'s "the third time this month", wants CCTV checked',
    "Etched into glass; needs panel replacement, not cleaning",
    "Paint on listed wall -\ncheck with conservation officer first",
)
_GULLY_INSPECTOR_NOTES: tuple[str | None, ...] = (
    None, None, None,
    "Silt to grating level, jetted",
    "Grating cracked, make safe",
    'Lid "rocking" when driven over',
    "Could not access,\ncar parked over gully",
    "Running freely",
    "Leaf fall, recheck in November",
)
_GULLY_CREW_NOTES: tuple[str | None, ...] = (
    None, None, None, None,
    "Cleansed, 2 bags of silt removed",
    "Tanker full, return tomorrow",
    'Root ingress; refer to "drainage team"',
    "Traffic management needed, busy junction",
    "Connection collapsed?\nCCTV survey booked",
)
# fmt: on


def _pick(*choices: str | None) -> Sampler:
    return lambda rng: rng.choice(choices)


def _weighted(weights: Mapping[str, int]) -> Sampler:
    """Draw a key of `weights`, as often as its weight says (most jobs are not urgent)."""
    choices, counts = list(weights), list(weights.values())
    return lambda rng: rng.choices(choices, weights=counts)[0]


def _reference(prefix: str) -> Sampler:
    return lambda rng: f"{prefix}-{rng.randrange(10**6):06d}"


def _maybe(sampler: Sampler, empty_one_in: int) -> Sampler:
    """`sampler`, but empty (None) about once in `empty_one_in` draws."""
    return lambda rng: None if rng.randrange(empty_one_in) == 0 else sampler(rng)


def _date_2023(rng: random.Random) -> str:
    return _alloy_datetime(_YEAR_2023 + timedelta(minutes=rng.randrange(_SECONDS_PER_YEAR // 60)))


def _location(rng: random.Random) -> str:
    return f"{rng.randrange(1, 160)} {rng.choice(_STREET_NAMES)}, {rng.choice(_TOWNS)}"


def _usrn(rng: random.Random) -> str:
    return str(rng.randrange(10**7, 10**8))


def _serial_number(rng: random.Random) -> str:
    return f"SN{rng.getrandbits(32):08X}"


def _depth_mm(rng: random.Random) -> str:
    return str(rng.randrange(0, 300, 5))


def _design(
    code: str, name: str, attributes: Iterable[tuple[str, str, Sampler]], *links: LinkAttribute
) -> Design:
    return Design(code, name, tuple(Attribute(*attribute) for attribute in attributes), links)


def _demo_designs() -> tuple[Design, ...]:
    """The five designs of the demo council, linked designs first so links can be sampled."""
    title = "attributes_itemsTitle"
    # fmt: off
    street = _design("designs_street", "Street", [
        (title, "Title", _pick(*_STREET_NAMES)),
        ("attributes_streetUsrn", "USRN", _usrn),
        ("attributes_streetTown", "Town", _pick(*_TOWNS)),
        ("attributes_streetRoadClass", "Road Class", _weighted(_ROAD_CLASS_WEIGHTS)),
    ])
    container = _design("designs_wasteContainer", "Waste Container", [
        (title, "Title", _reference("WC")),
        ("attributes_wasteContainerType", "Container Type", _weighted(_CONTAINER_TYPE_WEIGHTS)),
        ("attributes_wasteContainerSerialNumber", "Serial Number", _serial_number),
        ("attributes_wasteContainerLocation", "Location", _location),
        ("attributes_wasteContainerInstalledDate", "Installed Date", _maybe(_date_2023, 5)),
    ])
    job = _design("designs_wasteContainerJob", "Waste Container Job", [
        (title, "Title", _reference("WCJ")),
        ("attributes_jobStatus", "Status", _weighted(_STATUS_WEIGHTS)),
        ("attributes_jobType", "Job Type", _pick(*_JOB_TYPES)),
        ("attributes_jobPriority", "Priority", _weighted(_PRIORITY_WEIGHTS)),
        ("attributes_jobRaisedDate", "Raised Date", _date_2023),
        ("attributes_jobNotes", "Notes", _pick(*_JOB_NOTES)),
    ], LinkAttribute("attributes_jobAssignedContainer", "Assigned Container", container.code))
    graffiti = _design("designs_graffitiReport", "Graffiti Report", [
        (title, "Title", _reference("GR")),
        ("attributes_graffitiStatus", "Status", _weighted(_STATUS_WEIGHTS)),
        ("attributes_graffitiSurface", "Surface", _pick(*_SURFACES)),
        ("attributes_graffitiOffensive", "Offensive?", _weighted({"Yes": 1, "No": 5})),
        ("attributes_graffitiReportedDate", "Reported Date", _date_2023),
        ("attributes_graffitiDescription", "Description", _pick(*_GRAFFITI_DESCRIPTIONS)),
    ], LinkAttribute("attributes_graffitiStreet", "Street", street.code))
    gully = _design("designs_gullyInspection", "Gully Inspection", [
        (title, "Title", _reference("GI")),
        ("attributes_gullyInspectionDate", "Inspection Date", _date_2023),
        ("attributes_gullyStreet", "Street", _pick(*_STREET_NAMES)),
        ("attributes_gullyCondition", "Condition", _weighted(_CONDITION_WEIGHTS)),
        ("attributes_gullySiltDepth", "Depth (mm)", _maybe(_depth_mm, 8)),
        ("attributes_gullyCleansed", "Cleansed?", _pick("Yes", "No")),
        # Two attributes share the display name "Notes": Name-header exports repeat the header.
        ("attributes_gullyInspectorNotes", "Notes", _pick(*_GULLY_INSPECTOR_NOTES)),
        ("attributes_gullyCrewNotes", "Notes", _pick(*_GULLY_CREW_NOTES)),
    ])
    # fmt: on
    return street, container, job, graffiti, gully


_DEMO_SIZES = {
    "designs_street": 60,
    "designs_wasteContainer": 120,
    "designs_wasteContainerJob": 200,
    "designs_graffitiReport": 150,
    "designs_gullyInspection": 100,
}


def demo_dataset(seed: int = 7) -> Dataset:
    """The demo council: waste container jobs → containers, graffiti reports → streets, and
    gully inspections, with every item last edited in 2023. Same seed, same data."""
    rng = random.Random(seed)
    tables: dict[str, _ItemTable] = {}
    for design in _demo_designs():
        table = _ItemTable(design, rng)
        for _ in range(_DEMO_SIZES[design.code]):
            values = tuple(attribute.sample(rng) for attribute in design.attributes)
            links = tuple(
                tuple(tables[link.target].sample_ids(rng, _link_count(rng))) for link in design.links
            )
            table.append(values, links, _moment_in_2023(rng))
        tables[design.code] = table
    return Dataset(tables.values(), seed=seed)


# --------------------------------------------------------------------------------------------
# The synthetic dataset: big, cheap, for benchmarks
# --------------------------------------------------------------------------------------------

SYNTHETIC_ROOT = "designs_syntheticRecord"
_SYNTHETIC_FIELDS = 12
_SYNTHETIC_WORDS = tuple(
    "amber basin cedar delta ember fjord grove harbour inlet juniper kestrel larch meadow nettle "
    "orchard pebble quarry rowan spinney thistle upland verge willow yarrow zephyr".split()
)
# Prime pool sizes: stepping through a pool by any stride visits every value, and columns with
# different sizes don't repeat together, so rows stay varied (and compress realistically).
_POOL_SIZES = (997, 991, 983, 977, 971, 967, 953, 947, 941, 937, 929, 919)


def _value_pool(rng: random.Random, size: int) -> tuple[str | None, ...]:
    """Values for one synthetic attribute: words and numbers, a few empty, a few needing quotes."""

    def one() -> str | None:
        roll = rng.randrange(40)
        if roll == 0:
            return None
        words = " ".join(rng.choice(_SYNTHETIC_WORDS) for _ in range(rng.randrange(1, 4)))
        if roll == 1:
            return f'{words}, "{rng.choice(_SYNTHETIC_WORDS)}"'
        return f"{words} {rng.randrange(10**4)}"

    return tuple(one() for _ in range(size))


def _synthetic_codes(design_code: str, n_attributes: int) -> list[str]:
    """Attribute codes of a synthetic design: the title, then numbered fields."""
    stem = design_code.removeprefix("designs_synthetic").lower()
    return ["attributes_itemsTitle", *(f"attributes_{stem}Field{n:02d}" for n in range(1, n_attributes))]


def _generated_table(
    code: str,
    name: str,
    n_attributes: int,
    count: int,
    rng: random.Random,
    links: tuple[LinkAttribute, ...] = (),
    link_for: Callable[[int, int], tuple[str, ...]] | None = None,
) -> _ItemTable:
    """A table of `count` items computed from their index: value pools stepped through by
    per-attribute strides, and `link_for(link position, index)` for the links."""
    pools = [_value_pool(rng, _POOL_SIZES[n % len(_POOL_SIZES)]) for n in range(n_attributes)]
    codes = _synthetic_codes(code, n_attributes)
    attributes = tuple(
        Attribute(attribute_code, f"Field {n:02d}" if n else "Title", _pick(*pool))
        for n, (attribute_code, pool) in enumerate(zip(codes, pools, strict=True))
    )
    columns = [(pool, len(pool), rng.randrange(1, len(pool)), rng.randrange(len(pool))) for pool in pools]
    edited_offset = rng.randrange(_SECONDS_PER_YEAR)
    link_positions = range(len(links))
    if links and link_for is None:
        raise ValueError("a design with links needs link_for")

    def make(index: int, item_id: str) -> Item:
        values = tuple(pool[(index * step + offset) % size] for pool, size, step, offset in columns)
        edited = _YEAR_2023 + timedelta(seconds=(index * 7919 + edited_offset) % _SECONDS_PER_YEAR)
        item_links = tuple(link_for(position, index) for position in link_positions) if link_for else ()
        return Item(item_id, edited, values, item_links)

    return _ItemTable(Design(code, name, attributes, links), rng, count, make)


def synthetic_dataset(n_items: int, seed: int = 1) -> Dataset:
    """`n_items` synthetic records with 12 string attributes, each linked to one site and (mostly)
    one owner, with `n_items // 10` sites and owners. Items are computed on demand, so a
    million-record dataset costs a few megabytes until it is mutated."""
    if n_items < 1:
        raise ValueError("n_items must be at least 1")
    rng = random.Random(seed)
    n_linked = max(1, n_items // 10)
    site = _generated_table("designs_syntheticSite", "Synthetic Site", 3, n_linked, rng)
    owner = _generated_table("designs_syntheticOwner", "Synthetic Owner", 3, n_linked, rng)
    links = (
        LinkAttribute("attributes_recordSite", "Site", site.design.code),
        LinkAttribute("attributes_recordOwner", "Owner", owner.design.code),
    )

    def link_for(position: int, index: int) -> tuple[str, ...]:
        if position == 0:
            return (site.id_for(index * 40503 % n_linked),)
        return () if index % 11 == 0 else (owner.id_for((index * 69069 + 1) % n_linked),)

    root = _generated_table(
        SYNTHETIC_ROOT, "Synthetic Record", _SYNTHETIC_FIELDS, n_items, rng, links, link_for
    )
    return Dataset((site, owner, root), seed=seed)


def synthetic_request(
    file_name: str = "Synthetic Records.csv", *, export_header_type: Literal["Name", "Code"] = "Name"
) -> dict[str, Any]:
    """The export request matching `synthetic_dataset`: every root attribute, and a join to each
    linked design with two of its attributes."""
    joins = [
        f"root.attributes_recordSite.designs_syntheticSite.{code}"
        for code in ("attributes_itemsTitle", "attributes_siteField01")
    ] + [
        f"root.attributes_recordOwner.designs_syntheticOwner.{code}"
        for code in ("attributes_itemsTitle", "attributes_ownerField02")
    ]
    return {
        "aqs": {
            "type": "Join",
            "properties": {
                "dodiCode": SYNTHETIC_ROOT,
                "collectionCode": ["Live"],
                "attributes": _synthetic_codes(SYNTHETIC_ROOT, _SYNTHETIC_FIELDS),
                "joinAttributes": joins,
            },
            "children": [],
        },
        "fileName": file_name,
        "exportHeaderType": export_header_type,
        "discriminator": "CsvExportWebRequestModel",
        "parameterValues": [],
    }


# --------------------------------------------------------------------------------------------
# Export requests: validation and plan
# --------------------------------------------------------------------------------------------


class BadRequestError(ValueError):
    """A request that Alloy would answer with HTTP 400; the message says what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _AqsProperties(_Strict):
    dodi_code: str = Field(alias="dodiCode")
    collection_code: list[Literal["Live"]] = Field(default=["Live"], alias="collectionCode")
    attributes: list[str]
    join_attributes: list[str] = Field(default=[], alias="joinAttributes")


class _Aqs(_Strict):
    type: Literal["Join", "Query"]
    properties: _AqsProperties
    children: list[Any] = Field(default=[], max_length=1)


class _ExportBody(_Strict):
    aqs: _Aqs
    file_name: str = Field(alias="fileName", pattern=r"(?i)^[^/\\]+\.csv$")
    export_header_type: Literal["Name", "Code"] = Field(alias="exportHeaderType")
    discriminator: Literal["CsvExportWebRequestModel"]
    parameter_values: list[Any] = Field(default=[], alias="parameterValues")


Predicate = Callable[[Item], bool]


@dataclass(frozen=True)
class _Join:
    """One join node: the items behind one link of the root design, and which of their values."""

    number: int
    link: LinkAttribute
    link_position: int
    design: Design
    attributes: tuple[Attribute, ...]
    positions: tuple[int, ...]

    @property
    def path(self) -> str:
        return f"root.{self.link.code}.{self.design.code}"


@dataclass(frozen=True)
class _Plan:
    """A validated export: what to read, which rows to keep and how to name the columns."""

    file_name: str
    by_name: bool
    design: Design
    attributes: tuple[Attribute, ...]
    positions: tuple[int, ...]
    joins: tuple[_Join, ...]
    keep: Predicate


def _plan_export(designs: Mapping[str, Design], raw: Any) -> _Plan:
    try:
        body = _ExportBody.model_validate(raw)
    except ValidationError as error:
        raise BadRequestError(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        ) from None
    properties = body.aqs.properties
    design = designs.get(properties.dodi_code)
    if design is None:
        raise BadRequestError(f"unknown design {properties.dodi_code!r}")
    if body.aqs.type == "Query" and properties.join_attributes:
        raise BadRequestError("a Query takes no joinAttributes; use a Join")
    positions = tuple(_attribute_position(design, code) for code in properties.attributes)
    return _Plan(
        file_name=body.file_name,
        by_name=body.export_header_type == "Name",
        design=design,
        attributes=tuple(design.attributes[p] for p in positions),
        positions=positions,
        joins=_plan_joins(designs, design, properties.join_attributes),
        keep=_compile(body.aqs.children[0], design) if body.aqs.children else lambda item: True,
    )


def _attribute_position(design: Design, code: str) -> int:
    try:
        return design.attribute_position(code)
    except KeyError as error:
        raise BadRequestError(error.args[0]) from None


def _plan_joins(designs: Mapping[str, Design], root: Design, paths: Sequence[str]) -> tuple[_Join, ...]:
    """Group `root.<link>.<design>.<attribute>` paths by their prefix, in order of first use."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        parts = path.split(".")
        if len(parts) != 4 or parts[0] != "root":
            raise BadRequestError(
                f"join attribute {path!r} is not root.<link attribute>.<design>.<attribute> "
                "(the simulator joins one level deep)"
            )
        groups.setdefault((parts[1], parts[2]), []).append(parts[3])
    joins = []
    for number, ((link_code, design_code), codes) in enumerate(groups.items(), start=1):
        try:
            link_position = root.link_position(link_code)
        except KeyError as error:
            raise BadRequestError(error.args[0]) from None
        link = root.links[link_position]
        if link.target != design_code:
            raise BadRequestError(f"{root.code}.{link_code} links to {link.target}, not {design_code}")
        target = designs[design_code]
        positions = tuple(_attribute_position(target, code) for code in codes)
        attributes = tuple(target.attributes[p] for p in positions)
        joins.append(_Join(number, link, link_position, target, attributes, positions))
    return tuple(joins)


def _compile(node: Any, design: Design) -> Predicate:
    """Turn an AQS filter node into a predicate on root items; anything else is a 400."""
    kind = node.get("type") if isinstance(node, dict) else None
    if kind not in ("And", "Equals", "GreaterThan"):
        raise BadRequestError(f"filter node {kind or node!r} is not supported by the simulator")
    children = node.get("children")
    if not isinstance(children, list) or not children:
        raise BadRequestError(f"a {kind} node needs a non-empty list of children")
    if kind == "And":
        parts = [_compile(child, design) for child in children]
        return lambda item: all(part(item) for part in parts)
    if kind == "Equals":
        attribute, values = _operands(children, "Attribute", "String")
        position = _attribute_position(design, _text(attribute, "attributeCode"))
        wanted = frozenset(values)
        return lambda item: item.values[position] in wanted
    item_property, values = _operands(children, "ItemProperty", "DateTime")
    if _text(item_property, "itemPropertyName") != "lastEditDate" or len(values) != 1:
        raise BadRequestError("GreaterThan is simulated on lastEditDate against one DateTime value")
    moment = _parse_alloy_datetime(values[0])
    return lambda item: item.last_edit_date > moment


def _operands(children: list[Any], left: str, right: str) -> tuple[dict[str, Any], list[str]]:
    """The properties of the `left` child and the string values of the `right` child."""
    types = [child.get("type") if isinstance(child, dict) else None for child in children]
    if types != [left, right]:
        raise BadRequestError(f"expected children of types [{left}, {right}], got {types}")
    left_properties, right_properties = (child.get("properties") for child in children)
    values = right_properties.get("value") if isinstance(right_properties, dict) else None
    if not isinstance(left_properties, dict):
        raise BadRequestError(f"the {left} node needs properties")
    if not isinstance(values, list) or not values or not all(isinstance(value, str) for value in values):
        raise BadRequestError(f"the {right} node needs a non-empty list of string values")
    return left_properties, values


def _text(properties: dict[str, Any], key: str) -> str:
    value = properties.get(key)
    if not isinstance(value, str):
        raise BadRequestError(f"missing string property {key!r}")
    return value


def _parse_alloy_datetime(text: str) -> datetime:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", text):
        raise BadRequestError(f"DateTime {text!r} is not UTC YYYY-MM-DDTHH:MM:SS.mmmZ")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise BadRequestError(f"DateTime {text!r} is not a valid date") from None


# --------------------------------------------------------------------------------------------
# Writing the export zip
# --------------------------------------------------------------------------------------------


def _write_export(dataset: Dataset, plan: _Plan, archive: Path, *, bom: bool) -> int:
    """Write the export of `plan` to `archive`, row by row; the number of root rows.

    `ZipFile` allows one open member at a time, so each CSV is a separate pass over the root
    items. The caller holds the dataset lock, so all passes see the same snapshot.
    """
    stem = plan.file_name[: -len(".csv")]
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        with _csv_member(zipped, f"{stem}/{plan.file_name}", bom=bom) as writer:
            writer.writerow(_main_header(plan))
            rows = 0
            for item in _kept(dataset, plan):
                writer.writerow(_main_row(dataset, plan, item))
                rows += 1
        for join in plan.joins:
            with _csv_member(zipped, f"JoinedDesign_{join.design.name}_{join.number}.csv", bom=bom) as writer:
                writer.writerow(_joined_header(plan, join))
                for item in _kept(dataset, plan):
                    trail = [join.path, plan.file_name, item.id, item.id]
                    for linked in _linked(dataset, join, item):
                        writer.writerow([linked.id, *_cells(linked, join.positions), *trail])
    return rows


@contextmanager
def _csv_member(zipped: zipfile.ZipFile, name: str, *, bom: bool) -> Iterator[Any]:
    """A `csv.writer` streaming into one zip member, the way Alloy quotes and ends lines."""
    with io.TextIOWrapper(zipped.open(name, "w", force_zip64=True), encoding="utf-8", newline="") as text:
        if bom:
            text.write("\ufeff")
        yield csv.writer(text, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")


def _kept(dataset: Dataset, plan: _Plan) -> Iterator[Item]:
    return (item for item in dataset.items(plan.design.code) if plan.keep(item))


def _linked(dataset: Dataset, join: _Join, item: Item) -> list[Item]:
    found = (dataset.find(item_id) for item_id in item.links[join.link_position])
    return [linked for linked in found if linked is not None]


def _cells(item: Item, positions: tuple[int, ...]) -> list[str]:
    values = item.values
    return [values[p] or "" for p in positions]


def _label(part: Attribute | LinkAttribute | Design, by_name: bool) -> str:
    return part.name if by_name else part.code


def _main_header(plan: _Plan) -> list[str]:
    header = ["Item ID", *(_label(attribute, plan.by_name) for attribute in plan.attributes)]
    for join in plan.joins:
        prefix = f"root.{_label(join.link, plan.by_name)}.{_label(join.design, plan.by_name)}"
        header += [f"{prefix}.{_label(attribute, plan.by_name)}" for attribute in join.attributes]
        header.append(f"{prefix} Item IDs")
    return header


def _main_row(dataset: Dataset, plan: _Plan, item: Item) -> list[str]:
    row = [item.id, *_cells(item, plan.positions)]
    for join in plan.joins:
        linked = _linked(dataset, join, item)
        row += [", ".join(other.values[p] or "" for other in linked) for p in join.positions]
        row.append(", ".join(other.id for other in linked))
    return row


def _joined_header(plan: _Plan, join: _Join) -> list[str]:
    attributes = (_label(attribute, plan.by_name) for attribute in join.attributes)
    return ["Item ID", *attributes, "AQS Path", "Predecessor File", "Predecessor Item", "Primary Item"]


# --------------------------------------------------------------------------------------------
# Faults, tasks and rate limits
# --------------------------------------------------------------------------------------------

FaultKind = Literal["status", "disconnect", "failed_task", "deleted_task", "corrupt_zip", "slow_task"]
Endpoint = Literal["export", "task", "export_file", "file", "any"]
_REQUEST_FAULTS = ("status", "disconnect")


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for the next `times` matching requests (or exports).

    - `status`: answer requests to `endpoint` with HTTP `status` (429 may carry `retry_after`
      and `rate_limit_reset` seconds).
    - `disconnect`: close the connection to `endpoint` without any response.
    - `failed_task` / `deleted_task`: the next exports' tasks end Failed (with `message`) / Deleted.
    - `corrupt_zip`: the next exports' file endpoint serves a truncated zip.
    - `slow_task`: the next exports' tasks take `seconds`.
    """

    kind: FaultKind
    endpoint: Endpoint = "any"
    status: int = 503
    times: int = 1
    retry_after: float | None = None
    rate_limit_reset: float | None = None
    message: str = "Simulated export failure"
    seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError("a fault applies at least once")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("a status fault needs a 4xx or 5xx status")
        if self.kind == "slow_task" and self.seconds <= 0:
            raise ValueError("a slow task takes more than 0 seconds")


@dataclass
class _Pending:
    fault: Fault
    remaining: int


TaskStatus = Literal["Queued", "Running", "Complete", "Failed", "Deleted"]


@dataclass(frozen=True)
class _Task:
    """An export task: its zip is already written; only the status reveals it over time."""

    id: str
    file_id: str
    archive: Path
    rows: int
    started: float
    seconds: float
    outcome: Literal["Complete", "Failed", "Deleted"]
    error: str | None
    corrupt: bool

    def state(self, now: float) -> tuple[TaskStatus, int]:
        """Status and processed rows: Queued for the first quarter, Running, then the outcome."""
        elapsed = now - self.started
        if elapsed >= self.seconds:
            return self.outcome, self.rows if self.outcome == "Complete" else 0
        fraction = elapsed / self.seconds
        return ("Queued", 0) if fraction < 0.25 else ("Running", int(self.rows * fraction))


class _RateWindow:
    """A fixed window of `limit` requests per `seconds`, reported in X-Rate-Limit-* headers."""

    def __init__(self, limit: int, seconds: float) -> None:
        self._limit = limit
        self._seconds = seconds
        self._start = time.monotonic()
        self._used = 0

    def hit(self) -> tuple[int, float]:
        """Count one request; the requests left (negative: over the limit) and seconds to reset."""
        now = time.monotonic()
        if now - self._start >= self._seconds:
            self._start, self._used = now, 0
        self._used += 1
        return self._limit - self._used, self._seconds - (now - self._start)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it (header names lower-cased; body parsed if JSON)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any | None


@dataclass(frozen=True)
class _Reply:
    status: int
    payload: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    file: Path | None = None
    length: int = 0
    disconnect: bool = False


_ROUTES: tuple[tuple[Endpoint, str, re.Pattern[str]], ...] = (
    ("export", "POST", re.compile(r"/api/export")),
    ("task", "GET", re.compile(r"/api/task/([^/]+)")),
    ("export_file", "GET", re.compile(r"/api/export/([^/]+)/file")),
    ("file", "GET", re.compile(r"/api/file/([^/]+)")),
)
_CHUNK = 64 * 1024
_SHUTDOWN_POLL_SECONDS = 0.01  # how soon stop() returns; tests start and stop a server each


def _route(path: str) -> tuple[Endpoint | None, str, str | None]:
    """The endpoint a path names, the method it takes, and the id in it."""
    for endpoint, method, pattern in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return endpoint, method, match.group(1) if match.groups() else None
    return None, "", None


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status, {"errorCode": code, "message": message}, headers or {})


def _json_or_none(body: bytes) -> Any | None:
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _object_id() -> str:
    return secrets.token_hex(12)


def _seconds_header(seconds: float) -> str:
    return f"{seconds:g}"


class AlloySimulator:
    """Alloy's export API on loopback: `/api/export`, `/api/task/{id}`, `/api/export/{id}/file`
    and `/api/file/{id}`, with Bearer auth, rate-limit headers and scripted faults.

    An export is written to a temporary zip when it is requested (a snapshot of the data at that
    moment, streamed to disk so a million rows never sit in memory); its task then reports
    Queued, Running and Complete as `task_seconds` pass.
    """

    def __init__(
        self,
        dataset: Dataset | None = None,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        task_seconds: float = 0.0,
        bom: bool = False,
        rate_limit: int = 10_000,
        rate_limit_window_seconds: float = 60.0,
    ) -> None:
        if not api_key:
            raise ValueError("the simulator needs an API key")
        self._dataset = dataset if dataset is not None else demo_dataset()
        self._api_key = api_key
        self._address = (host, port)
        self._task_seconds = task_seconds
        self._bom = bom
        self._lock = threading.Lock()
        self._rate = _RateWindow(rate_limit, rate_limit_window_seconds)
        self._faults: list[_Pending] = []
        self._tasks: dict[str, _Task] = {}
        self._files: dict[str, _Task] = {}
        self._requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> AlloySimulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._workdir = tempfile.TemporaryDirectory(prefix="alloy-simulator-", ignore_cleanup_errors=True)
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
            name="alloy-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None and self._workdir is not None
        self._thread.join()
        self._workdir.cleanup()
        self._server = self._thread = self._workdir = None

    def __enter__(self) -> AlloySimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # what tests use ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start()")
        return f"http://{self._address[0]}:{self._server.server_port}"

    @property
    def dataset(self) -> Dataset:
        return self._dataset

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def inject(self, fault: Fault) -> None:
        """Queue `fault`; faults of one kind apply in the order they were injected."""
        with self._lock:
            self._faults.append(_Pending(fault, fault.times))

    # request handling ----------------------------------------------------------------------

    def _serve(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one HTTP request (called from the handler threads)."""
        parts = urlsplit(target)
        endpoint, allowed, argument = _route(parts.path)
        with self._lock:
            recorded = RecordedRequest(method, parts.path, parts.query, headers, _json_or_none(body))
            self._requests.append(recorded)
            remaining, reset = self._rate.hit()
            fault = self._take_fault(_REQUEST_FAULTS, endpoint or "unrouted")
        reset_header = str(math.ceil(reset))
        if fault is not None:
            reply = _fault_reply(fault)
        elif remaining < 0:
            reply = _error(429, "TooManyRequests", "rate limit exceeded", {"Retry-After": reset_header})
        elif not self._authorised(headers):
            reply = _error(401, "Unauthorised", "send the API key as 'Authorization: Bearer <key>'")
        elif endpoint is None:
            reply = _error(404, "NotFound", "no such endpoint")
        elif method != allowed:
            reply = _error(405, "MethodNotAllowed", f"use {allowed}")
        else:
            reply = self._call(endpoint, argument, body)
        rate_headers = {"X-Rate-Limit-Remaining": str(max(0, remaining)), "X-Rate-Limit-Reset": reset_header}
        return dataclasses.replace(reply, headers={**rate_headers, **reply.headers})

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        expected = f"Bearer {self._api_key}".encode()
        return hmac.compare_digest(headers.get("authorization", "").encode(), expected)

    def _call(self, endpoint: Endpoint, argument: str | None, body: bytes) -> _Reply:
        if endpoint == "export":
            return self._start_export(body)
        assert argument is not None
        if endpoint == "task":
            return self._task_status(argument)
        if endpoint == "export_file":
            return self._export_file(argument)
        return self._file(argument)

    def _start_export(self, body: bytes) -> _Reply:
        raw = _json_or_none(body)
        if raw is None:
            return _error(400, "InvalidRequest", "the body must be a JSON export request")
        try:
            plan = _plan_export(self._dataset.designs, raw)
        except BadRequestError as error:
            return _error(400, "InvalidRequest", str(error))
        assert self._workdir is not None
        task_id = _object_id()
        archive = Path(self._workdir.name) / f"{task_id}.zip"
        with self._dataset.lock:
            rows = _write_export(self._dataset, plan, archive, bom=self._bom)
        with self._lock:
            ending = self._take_fault(("failed_task", "deleted_task"))
            slow = self._take_fault(("slow_task",))
            task = _Task(
                id=task_id,
                file_id=_object_id(),
                archive=archive,
                rows=rows,
                started=time.monotonic(),
                seconds=slow.seconds if slow else self._task_seconds,
                outcome=_outcome(ending),
                error=ending.message if ending else None,
                corrupt=self._take_fault(("corrupt_zip",)) is not None,
            )
            self._tasks[task.id] = task
            self._files[task.file_id] = task
        return _Reply(200, {"backgroundTaskId": task_id})

    def _task_status(self, task_id: str) -> _Reply:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return _error(404, "NotFound", f"no task {task_id}")
        status, processed = task.state(time.monotonic())
        state: dict[str, Any] = {
            "id": task.id,
            "status": status,
            "processState": {"processed": processed, "total": task.rows},
        }
        if status == task.outcome and task.error:
            state["error"] = task.error
        return _Reply(200, {"task": state})

    def _export_file(self, task_id: str) -> _Reply:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return _error(404, "NotFound", f"no task {task_id}")
        status, _ = task.state(time.monotonic())
        if status != "Complete":
            return _error(409, "TaskNotComplete", f"task {task_id} is {status}")
        return _Reply(200, {"fileItemId": task.file_id})

    def _file(self, file_id: str) -> _Reply:
        with self._lock:
            task = self._files.get(file_id)
        if task is None:
            return _error(404, "NotFound", f"no file {file_id}")
        size = task.archive.stat().st_size
        length = size // 2 if task.corrupt else size
        return _Reply(200, headers={"Content-Type": "application/zip"}, file=task.archive, length=length)

    def _take_fault(self, kinds: Sequence[str], endpoint: str | None = None) -> Fault | None:
        """Use up one application of the oldest queued fault of `kinds` aimed at `endpoint`
        (None for the export-level kinds, which have no endpoint). Call with `_lock` held."""
        for pending in self._faults:
            fault = pending.fault
            if fault.kind not in kinds:
                continue
            if endpoint is not None and fault.endpoint not in ("any", endpoint):
                continue
            pending.remaining -= 1
            if not pending.remaining:
                self._faults.remove(pending)
            return fault
        return None


def _outcome(ending: Fault | None) -> Literal["Complete", "Failed", "Deleted"]:
    if ending is None:
        return "Complete"
    return "Failed" if ending.kind == "failed_task" else "Deleted"


def _fault_reply(fault: Fault) -> _Reply:
    if fault.kind == "disconnect":
        return _Reply(0, disconnect=True)
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = _seconds_header(fault.retry_after)
    if fault.rate_limit_reset is not None:
        headers["X-Rate-Limit-Reset"] = _seconds_header(fault.rate_limit_reset)
    code = "TooManyRequests" if fault.status == 429 else "SimulatedFault"
    return _error(fault.status, code, f"simulated HTTP {fault.status}", headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: AlloySimulator) -> None:
        super().__init__(address, _Handler)
        self.simulator = simulator


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets the simulator answer it, writes the reply (or hangs up)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; don't wait 40 ms
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the demo read `AlloySimulator.requests` instead of a log."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.simulator._serve(self.command, self.path, headers, body)
        if reply.disconnect:
            self.close_connection = True
            return
        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, reply: _Reply) -> None:
        content = b"" if reply.file else json.dumps(reply.payload or {}).encode()
        self.send_response(reply.status)
        if reply.file is None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(reply.length if reply.file else len(content)))
        self.end_headers()
        if reply.file is None:
            self.wfile.write(content)
            return
        with reply.file.open("rb") as source:
            left = reply.length
            while left and (chunk := source.read(min(_CHUNK, left))):
                self.wfile.write(chunk)
                left -= len(chunk)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the demo dataset in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description="Run the local Alloy API simulator (demo dataset).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", required=True, help="the Bearer key clients must send")
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo dataset")
    parser.add_argument("--task-seconds", type=float, default=2.0, help="how long each export task takes")
    parser.add_argument("--bom", action="store_true", help="start every CSV with a UTF-8 BOM")
    args = parser.parse_args(argv)
    simulator = AlloySimulator(
        demo_dataset(args.seed),
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        task_seconds=args.task_seconds,
        bom=args.bom,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())  # clean up temp files on kill
    with simulator:
        print(f"Alloy simulator serving the demo dataset at {simulator.url} (Ctrl-C to stop)", flush=True)
        with suppress(KeyboardInterrupt):
            stopped.wait()


if __name__ == "__main__":
    main()
