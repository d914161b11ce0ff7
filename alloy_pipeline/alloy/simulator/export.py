"""Export requests planned against the designs, and written as the zip Alloy serves.

`plan_export` validates a body (`request`), resolves its join paths into numbered join nodes
(`paths`, `joins`), compiles its filter (`filters`) and its `sortInfo`. What Alloy would refuse
is a `BadRequestError` (HTTP 400) naming the part at fault, before any work starts.
`write_export` turns a plan and a `Snapshot` into the zip, one CSV row at a time, so a million
rows never sit in memory (a sorted export holds one sort key per root item, no more).

A join node is a join path without its last attribute, and so is every shorter prefix of it;
nodes are numbered from 1 in order of first use in `joinAttributes`, a node's parents before
it. The zip, as Alloy lays it out:

- `<fileName without .csv>/<fileName>`: `Item ID`, the requested attributes (a link attribute
  gives the ids it links to), then per join node one column per attribute it reads and one
  `Item IDs` column, headed by the node's link attributes, its design and the attribute:
  `root.attributes_tasksStatus.designs_taskStatuses.attributes_taskStatusesStatus` with Code
  headers, `root.Status.Task Statuses.Status` with Name headers. Several linked items' values
  share a cell, separated by `, `.
- `JoinedDesign_<design name>_<n>.csv` for node n: `Item ID`, its attributes, `AQS Path` (the
  node as joinAttributes write it), `Predecessor File` and `Predecessor Item` (the row it hangs
  from: in the main CSV for a first-level node, in the parent node's CSV for a deeper one), the
  predecessor's title and subtitle when the node before asked for them, and `Primary Item`, the
  root item. One row per root item, item reached, and predecessor it is reached from.
"""

from __future__ import annotations

import csv
import io
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from alloy_pipeline.alloy.simulator.dataset import Attribute, Design, Item, LinkAttribute, Snapshot
from alloy_pipeline.alloy.simulator.filters import Predicate, compile_filter
from alloy_pipeline.alloy.simulator.joins import Route, RouteError, Walker, resolve
from alloy_pipeline.alloy.simulator.paths import NodePath, PathSyntaxError, parse_join_attribute, parse_node_path
from alloy_pipeline.alloy.simulator.request import BadRequestError, ExportBody, SortInfo, parse

SEPARATOR = ", "
"""Between the values of several items (or linked ids) in one cell."""

_PREDECESSOR_ATTRIBUTES = ("attributes_itemsTitle", "attributes_itemsSubtitle")


@dataclass(frozen=True)
class Field:
    """An attribute an export reads: a value, or a link (the ids it points at)."""

    attribute: Attribute | LinkAttribute
    position: int
    is_link: bool

    def read(self, item: Item) -> str:
        if self.is_link:
            return SEPARATOR.join(item.links[self.position])
        return item.values[self.position] or ""


def cells(fields: Sequence[Field]) -> Callable[[Item], list[str]]:
    """A function giving an item's cells for `fields`: for value attributes alone (the common
    case, and every row of a benchmark) one list comprehension, with no call per cell."""
    if any(field.is_link for field in fields):
        return lambda item: [field.read(item) for field in fields]
    positions = tuple(field.position for field in fields)

    def value_cells(item: Item) -> list[str]:
        values = item.values
        return [values[position] or "" for position in positions]

    return value_cells


def _field(design: Design, code: str) -> Field:
    if design.has_link(code):
        position = design.link_position(code)
        return Field(design.links[position], position, is_link=True)
    position = design.attribute_position(code)
    return Field(design.attributes[position], position, is_link=False)


@dataclass(frozen=True)
class JoinNode:
    number: int
    route: Route
    parent: JoinNode | None
    fields: tuple[Field, ...]
    predecessor_fields: tuple[Field, ...]

    @property
    def file_name(self) -> str:
        return f"JoinedDesign_{self.route.design.name}_{self.number}.csv"


@dataclass(frozen=True)
class _Sort:
    field: Field | None
    item_property: str | None
    descending: bool

    def order(self, items: Iterable[Item]) -> list[str]:
        """The ids of `items` in sort order; items without a value last, whichever the order."""
        keyed: list[tuple[str | datetime, str]] = []
        empty: list[str] = []
        for item in items:
            key = self._key(item)
            if key is None:
                empty.append(item.id)
            else:
                keyed.append((key, item.id))
        keyed.sort(key=itemgetter(0), reverse=self.descending)
        return [item_id for _, item_id in keyed] + empty

    def _key(self, item: Item) -> str | datetime | None:
        if self.field is not None:
            return item.values[self.field.position]
        return item.id if self.item_property == "itemId" else item.last_edit_date


@dataclass(frozen=True)
class ExportPlan:
    """A validated export: what to read, which rows to keep, in which order, and the columns."""

    file_name: str
    by_name: bool
    design: Design
    fields: tuple[Field, ...]
    nodes: tuple[JoinNode, ...]
    keep: Predicate | None  # None: every item of the design
    sort: _Sort | None  # None: creation order
    live: bool  # the Live collection is asked for; the simulator archives nothing


def plan_export(designs: Mapping[str, Design], raw: Any) -> ExportPlan:
    body = parse(ExportBody, raw)
    properties = body.aqs.properties
    design = designs.get(properties.dodi_code)
    if design is None:
        raise BadRequestError(f"unknown design {properties.dodi_code!r}")
    fields = tuple(_root_field(design, code) for code in properties.attributes)
    nodes = _plan_nodes(designs, design, fields, properties.join_attributes)

    def route_of(path: str | None) -> Route:
        try:
            return resolve(designs, design, parse_node_path(path or "root"))
        except (PathSyntaxError, RouteError) as error:
            raise BadRequestError(f"filter path {path!r}: {error}") from None

    return ExportPlan(
        file_name=body.file_name,
        by_name=body.export_header_type == "Name",
        design=design,
        fields=fields,
        nodes=nodes,
        keep=compile_filter(body.aqs.children[0], route_of) if body.aqs.children else None,
        sort=_plan_sort(design, properties.sort_info),
        live="Live" in properties.collection_code,
    )


def _root_field(design: Design, code: str) -> Field:
    try:
        return _field(design, code)
    except KeyError as error:
        raise BadRequestError(error.args[0]) from None


def _plan_nodes(
    designs: Mapping[str, Design], root: Design, root_fields: tuple[Field, ...], paths: Sequence[str]
) -> tuple[JoinNode, ...]:
    """Join nodes in order of first use, each with the attributes it reads (each attribute
    remembering the join path that asked for it, so an error can name that path)."""
    reads: dict[NodePath, dict[str, str]] = {}
    first_use: dict[NodePath, str] = {}
    for text in paths:
        try:
            path, attribute = parse_join_attribute(text)
        except PathSyntaxError as error:
            raise BadRequestError(f"join attribute {error}") from None
        for node in path.lineage():
            reads.setdefault(node, {})
            first_use.setdefault(node, text)
        reads[path].setdefault(attribute, text)
    planned: dict[NodePath, JoinNode] = {}
    for number, (path, attributes) in enumerate(reads.items(), start=1):
        try:
            route = resolve(designs, root, path)
        except RouteError as error:
            raise BadRequestError(f"join attribute {first_use[path]!r}: {error}") from None
        fields = []
        for code, text in attributes.items():
            try:
                fields.append(_field(route.design, code))
            except KeyError as error:
                raise BadRequestError(f"join attribute {text!r}: {error.args[0]}") from None
        parent = planned.get(path.parent)
        before = parent.fields if parent else root_fields
        predecessor = tuple(f for code in _PREDECESSOR_ATTRIBUTES for f in before if f.attribute.code == code)
        planned[path] = JoinNode(number, route, parent, tuple(fields), predecessor)
    return tuple(planned.values())


def _plan_sort(design: Design, sort_info: SortInfo | None) -> _Sort | None:
    if sort_info is None:
        return None
    descending = sort_info.sort_order == "Descending"
    if sort_info.attribute_code is None:
        return _Sort(None, sort_info.item_property, descending)
    try:
        position = design.attribute_position(sort_info.attribute_code)
    except KeyError:
        raise BadRequestError(
            f"sortInfo: design {design.code} has no value attribute {sort_info.attribute_code}"
        ) from None
    return _Sort(Field(design.attributes[position], position, is_link=False), None, descending)


class ExportCancelled(Exception):
    """Raised out of `write_export` once its `cancel` event is set (the simulator is stopping)."""


class Progress:
    """How far one export has got: updated by the thread writing it, read by the threads that
    answer `/api/task/{id}` (plain attribute reads, so they need no lock).

    `total` is the number of root rows to write, None until they are counted. The zip holds one
    CSV per pass over those rows (the main CSV, then one per join node), so `processed` counts a
    row once every pass has written it: it reaches `total` only as the last CSV is finished.
    """

    def __init__(self) -> None:
        self.total: int | None = None
        self._passes = 1
        self._rows_written = 0

    @property
    def processed(self) -> int:
        return self._rows_written // self._passes

    def start(self, total: int, passes: int) -> None:
        self._passes = passes
        self.total = total

    def wrote_row(self) -> None:
        self._rows_written += 1


def write_export(
    snapshot: Snapshot,
    plan: ExportPlan,
    archive: Path,
    *,
    bom: bool,
    progress: Progress,
    cancel: threading.Event,
) -> None:
    """Write the export of `plan` to `archive`, row by row, reporting to `progress`.

    `ZipFile` allows one open member at a time, so each CSV is a separate pass over the root
    items; reading a snapshot makes every pass see the same data. Rows are counted up front,
    which costs an extra pass only when the query filters or sorts. Raises `ExportCancelled`
    soon after `cancel` is set, leaving a partial `archive` for the caller to remove.
    """
    walker = Walker(snapshot)
    total, roots = _root_rows(snapshot, plan, walker, lambda: _check(cancel, archive))
    progress.start(total, passes=1 + len(plan.nodes))
    stem = plan.file_name[: -len(".csv")]
    main_row = _main_row(walker, plan)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        with _csv_member(zipped, f"{stem}/{plan.file_name}", bom=bom) as writer:
            writer.writerow(_main_header(plan))
            for item in roots():
                writer.writerow(main_row(item))
                progress.wrote_row()
        for node in plan.nodes:
            trail = [node.route.path.text, node.parent.file_name if node.parent else plan.file_name]
            own, predecessors = cells(node.fields), cells(node.predecessor_fields)
            with _csv_member(zipped, node.file_name, bom=bom) as writer:
                writer.writerow(_joined_header(plan, node))
                for root in roots():
                    for predecessor, item in walker.edges(node.route, root):
                        writer.writerow(
                            [item.id, *own(item), *trail, predecessor.id, *predecessors(predecessor), root.id]
                        )
                    progress.wrote_row()


def _check(cancel: threading.Event, archive: Path) -> None:
    if cancel.is_set():
        raise ExportCancelled(archive.name)


def _root_rows(
    snapshot: Snapshot, plan: ExportPlan, walker: Walker, check: Callable[[], None]
) -> tuple[int, Callable[[], Iterator[Item]]]:
    """How many root rows the export has, and a function iterating them (once per pass)."""
    design, keep = plan.design.code, plan.keep

    def kept() -> Iterator[Item]:
        if not plan.live:
            return
        for item in snapshot.items(design):
            check()
            if keep is None or keep(item, walker):
                yield item

    if plan.sort is None:
        total = snapshot.count(design) if keep is None and plan.live else sum(1 for _ in kept())
        return total, kept
    order = plan.sort.order(kept())

    def sorted_items() -> Iterator[Item]:
        for item_id in order:
            check()
            item = snapshot.find_in(design, item_id)
            assert item is not None, "a snapshot does not change"
            yield item

    return len(order), sorted_items


ZIP_BOMB_BYTES = 64 * 1024**2


def write_zip_bomb(archive: Path, plan: ExportPlan, *, progress: Progress) -> None:
    """Write, in place of the export of `plan`, a zip whose main CSV is a header and then
    `ZIP_BOMB_BYTES` of zeros: about 64 KiB on the wire, a thousandfold once extracted."""
    progress.start(1, passes=1)
    stem = plan.file_name[: -len(".csv")]
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zipped:
        with zipped.open(f"{stem}/{plan.file_name}", "w", force_zip64=True) as member:
            member.write(b"Item ID\r\n")
            zeros = bytes(1 << 20)
            for _ in range(ZIP_BOMB_BYTES // len(zeros)):
                member.write(zeros)
    progress.wrote_row()


@contextmanager
def _csv_member(zipped: zipfile.ZipFile, name: str, *, bom: bool) -> Iterator[Any]:
    """A `csv.writer` streaming into one zip member, the way Alloy quotes and ends lines."""
    with io.TextIOWrapper(zipped.open(name, "w", force_zip64=True), encoding="utf-8", newline="") as text:
        if bom:
            text.write("\ufeff")
        yield csv.writer(text, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")


def _label(part: Attribute | LinkAttribute | Design, by_name: bool) -> str:
    return part.name if by_name else part.code


def _main_header(plan: ExportPlan) -> list[str]:
    header = ["Item ID", *(_label(field.attribute, plan.by_name) for field in plan.fields)]
    for node in plan.nodes:
        links = (_label(hop.link, plan.by_name) for hop in node.route.hops)
        prefix = ".".join(["root", *links, _label(node.route.design, plan.by_name)])
        header += [f"{prefix}.{_label(field.attribute, plan.by_name)}" for field in node.fields]
        header.append(f"{prefix}.Item IDs")
    return header


def _main_row(walker: Walker, plan: ExportPlan) -> Callable[[Item], list[str]]:
    """The function writing a root item's main-CSV row: its cells, then per join node the cells
    of every item the node reaches from it, and their ids."""
    root_cells = cells(plan.fields)
    nodes = [(node.route, cells(node.fields), [""] * (len(node.fields) + 1)) for node in plan.nodes]

    def row(item: Item) -> list[str]:
        written = [item.id, *root_cells(item)]
        for route, node_cells, empty in nodes:
            reached = walker.reached(route, item)
            if not reached:
                written += empty
            elif len(reached) == 1:
                written += node_cells(reached[0])
                written.append(reached[0].id)
            else:
                columns = zip(*(node_cells(other) for other in reached), strict=True)
                written += [SEPARATOR.join(column) for column in columns]
                written.append(SEPARATOR.join(other.id for other in reached))
        return written

    return row


def _joined_header(plan: ExportPlan, node: JoinNode) -> list[str]:
    attributes = (_label(field.attribute, plan.by_name) for field in node.fields)
    predecessor = (f"Predecessor {_label(field.attribute, plan.by_name)}" for field in node.predecessor_fields)
    return ["Item ID", *attributes, "AQS Path", "Predecessor File", "Predecessor Item", *predecessor, "Primary Item"]
