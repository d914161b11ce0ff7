"""The simulator's data: designs, items and the `Dataset` that holds and mutates them.

Items are immutable; a mutation replaces an item and stamps `lastEditDate = now`, as Alloy does,
so incremental exports have work to do. `Dataset.snapshot()` freezes what an export will read.
A link attribute points at items of one design, or of several (a link to an interface, which
an AQS path narrows with `<designs_…>`).
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

Sampler = Callable[[random.Random], str | None]
"""Draws a realistic value for an attribute: used for new items and for edits."""

SECONDS_PER_YEAR = 365 * 24 * 3600
_MAX_ITEMS_PER_DESIGN = 1 << 24  # the 6-hex counter at the end of an item id
_EPOCH_2021 = int(datetime(2021, 1, 1, tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class Attribute:
    """A value attribute of a design (`attributes_…` code, display name)."""

    code: str
    name: str
    sample: Sampler = field(repr=False, compare=False)


@dataclass(frozen=True)
class LinkAttribute:
    """An attribute whose value is a list of items of the `targets` designs (usually one)."""

    code: str
    name: str
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError(f"link attribute {self.code} links to no design")


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

    def has_link(self, code: str) -> bool:
        return any(link.code == code for link in self.links)


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
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def link_count(rng: random.Random) -> int:
    """How many items a new link holds: mostly one, sometimes none, now and then two."""
    return rng.choices((0, 1, 2), weights=(8, 88, 4))[0]


class ItemTable:
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
        created = _EPOCH_2021 + rng.randrange(2 * SECONDS_PER_YEAR)
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

    def append(self, values: tuple[str | None, ...], links: tuple[tuple[str, ...], ...], last_edit: datetime) -> Item:
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

    def copy(self) -> ItemTable:
        """A copy that later mutations of this table don't reach. Only the overrides are copied:
        generated items are a function of their index, so the copy shares that function."""
        clone = copy.copy(self)
        clone._overrides = dict(self._overrides)
        return clone

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


class Snapshot:
    """The live items of every design at one moment, readable from any thread without a lock.

    An export reads one of these in a background thread while the dataset goes on changing.
    Taking it copies each table's overrides (edits, inserts, deletions), not its items, so a
    snapshot of an unmutated million-item synthetic dataset costs next to nothing.
    """

    def __init__(self, tables: Iterable[ItemTable]) -> None:
        self._tables = {table.design.code: table for table in tables}
        self._by_prefix = {table.id_prefix: table for table in self._tables.values()}

    def items(self, design: str) -> Iterator[Item]:
        """Live items of `design` in creation order, computed lazily."""
        return iter(self._tables[design])

    def count(self, design: str) -> int:
        return len(self._tables[design])

    def find(self, item_id: str) -> Item | None:
        """The live item with this id, whatever its design, or None."""
        table = self._by_prefix.get(item_id[:18])
        return None if table is None else table.get(item_id)

    def find_in(self, design: str, item_id: str) -> Item | None:
        """The live item with this id if it is one of `design`'s, else None."""
        return self._tables[design].get(item_id)


class Dataset:
    """The items of every design, behind one lock; build one with `demo_dataset()`,
    `synthetic_dataset()` or `dataset_for_queries()`.

    Mutations stamp `lastEditDate = now` on what they change, as Alloy does, so incremental
    exports (`lastEditDate > watermark`) pick them up. Random choices come from a generator
    seeded from the dataset's seed, so a test that repeats the same calls gets the same items.
    `roots` are the designs that queries export (their `dodiCode`s): the ones `simulate_day`
    works on.
    """

    def __init__(self, tables: Iterable[ItemTable], *, seed: int, roots: Iterable[str]) -> None:
        self._tables = {table.design.code: table for table in tables}
        self._by_prefix = {table.id_prefix: table for table in self._tables.values()}
        if len(self._by_prefix) != len(self._tables):
            raise ValueError("two designs share an id prefix")
        for table in self._tables.values():
            for link in table.design.links:
                for target in link.targets:
                    if target not in self._tables:
                        raise ValueError(f"{table.design.code}.{link.code} links to unknown {target}")
        self._roots = tuple(dict.fromkeys(roots))
        unknown = [root for root in self._roots if root not in self._tables]
        if unknown:
            raise ValueError(f"unknown root designs: {', '.join(unknown)}")
        self._seed = seed
        self._lock = threading.RLock()
        self._rng = random.Random(f"{seed}:changes")

    @property
    def lock(self) -> threading.RLock:
        """Hold this while reading with `items()` to see one consistent snapshot."""
        return self._lock

    @property
    def designs(self) -> Mapping[str, Design]:
        return MappingProxyType({code: table.design for code, table in self._tables.items()})

    @property
    def roots(self) -> tuple[str, ...]:
        return self._roots

    def extended(self, tables: Iterable[ItemTable], *, roots: Iterable[str]) -> Dataset:
        """A new dataset holding a copy of this one's items and `tables`, with `roots` added:
        how designs synthesized from AQS files join the demo council's."""
        with self._lock:
            copies = [table.copy() for table in self._tables.values()]
        return Dataset([*copies, *tables], seed=self._seed, roots=(*self._roots, *roots))

    def design(self, code: str) -> Design:
        return self._table(code).design

    def items(self, design: str) -> Iterator[Item]:
        """Live items of `design` in creation order (lazily; hold `lock` while iterating)."""
        return iter(self._table(design))

    def snapshot(self) -> Snapshot:
        """The data as it is now, for reading later (an export) while mutations go on."""
        with self._lock:
            return Snapshot(table.copy() for table in self._tables.values())

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
        """Point link attribute code `link_attribute` of one item at `new_ids` (empty: clear it;
        an id given twice is linked once, as in Alloy)."""
        with self._lock:
            table = self._table(self._design_of(item_id).code)
            position = table.design.link_position(link_attribute)
            targets = [self._table(target) for target in table.design.links[position].targets]
            for new_id in new_ids:
                if all(target.get(new_id) is None for target in targets):
                    raise KeyError(f"{new_id} is not a live item of {', '.join(t.design.code for t in targets)}")
            table.put(_with_links(self.item(item_id), position, tuple(dict.fromkeys(new_ids)), _now_ms()))

    def simulate_day(self, seed: int) -> Changes:
        """A small day of council work on every root design (a design that queries export).

        About 3% of items edited, 1% deleted, 2% inserted (at least one of each), and on each
        root design with links one item's link cleared. Other designs (streets, containers, the
        premises a reverse join reaches) are left alone: editing them would not bump their root
        items' `lastEditDate` in Alloy either, and a demo day should be fully visible to an
        incremental export.
        """
        rng = random.Random(seed)
        edited: list[str] = []
        inserted: list[str] = []
        deleted: list[str] = []
        unlinked: list[str] = []
        with self._lock:
            for table in (self._tables[root] for root in self._roots):
                size = len(table)
                n_edit, n_delete = max(1, size * 3 // 100), max(1, size // 100)
                picked = table.sample_ids(rng, min(size, n_edit + n_delete))
                deleted += self._delete(table, picked[:n_delete], rng)
                edited += self._edit(table, picked[n_delete:], rng)
                unlinked += self._clear_one_link(table, rng)
                inserted += self._insert(table, max(1, size // 50), rng)
        return Changes(tuple(edited), tuple(inserted), tuple(deleted), tuple(unlinked))

    def _table(self, design: str) -> ItemTable:
        try:
            return self._tables[design]
        except KeyError:
            raise KeyError(f"unknown design {design}") from None

    def _design_of(self, item_id: str) -> Design:
        table = self._by_prefix.get(item_id[:18])
        if table is None:
            raise KeyError(f"no live item {item_id}")
        return table.design

    def _pick(self, table: ItemTable, items: int | Iterable[str], rng: random.Random) -> list[Item]:
        if isinstance(items, int):
            ids = table.sample_ids(rng, items)
        else:
            ids = [items] if isinstance(items, str) else list(items)
        picked = [table.get(item_id) for item_id in ids]
        missing = [item_id for item_id, item in zip(ids, picked, strict=True) if item is None]
        if missing:
            raise KeyError(f"not live {table.design.code} items: {', '.join(missing)}")
        return picked  # type: ignore[return-value]

    def _edit(self, table: ItemTable, items: int | Iterable[str], rng: random.Random) -> list[str]:
        now = _now_ms()
        picked = self._pick(table, items, rng)
        for item in picked:
            position = rng.randrange(len(table.design.attributes))
            value = _different_value(table.design.attributes[position], item.values[position], rng)
            table.put(_with_value(item, position, value, now))
        return [item.id for item in picked]

    def _insert(self, table: ItemTable, n: int, rng: random.Random) -> list[str]:
        now = _now_ms()
        return [table.append(*self._new_content(table.design, rng), now).id for _ in range(n)]

    def _new_content(
        self, design: Design, rng: random.Random
    ) -> tuple[tuple[str | None, ...], tuple[tuple[str, ...], ...]]:
        values = tuple(attribute.sample(rng) for attribute in design.attributes)
        links = tuple(self._new_link(link, rng) for link in design.links)
        return values, links

    def _new_link(self, link: LinkAttribute, rng: random.Random) -> tuple[str, ...]:
        target = self._tables[link.targets[0] if len(link.targets) == 1 else rng.choice(link.targets)]
        return tuple(target.sample_ids(rng, min(len(target), link_count(rng))))

    def _delete(self, table: ItemTable, items: int | Iterable[str], rng: random.Random) -> list[str]:
        gone = [item.id for item in self._pick(table, items, rng)]
        for item_id in gone:
            table.remove(item_id)
        self._drop_links_to(table.design.code, frozenset(gone))
        return gone

    def _drop_links_to(self, design: str, gone: frozenset[str]) -> None:
        now = _now_ms()
        for table in self._tables.values():
            positions = [i for i, link in enumerate(table.design.links) if design in link.targets]
            if not positions or not gone:
                continue
            stale = [item for item in table if any(gone.intersection(item.links[i]) for i in positions)]
            for item in stale:
                links = tuple(
                    tuple(i for i in ids if i not in gone) if position in positions else ids
                    for position, ids in enumerate(item.links)
                )
                table.put(dataclasses.replace(item, links=links, last_edit_date=now))

    def _clear_one_link(self, table: ItemTable, rng: random.Random) -> list[str]:
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
