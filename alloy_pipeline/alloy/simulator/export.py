"""Export requests: validating the body, compiling its AQS filter, and writing the zip.

What Alloy would refuse is a `BadRequestError` (HTTP 400) before any work starts. A valid request
becomes an `ExportPlan`; `write_export` turns a plan and a `Snapshot` into the zip Alloy serves,
one CSV row at a time so a million rows never sit in memory.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alloy_pipeline.alloy.simulator.dataset import Attribute, Design, Item, LinkAttribute, Snapshot


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
class ExportPlan:
    """A validated export: what to read, which rows to keep and how to name the columns."""

    file_name: str
    by_name: bool
    design: Design
    attributes: tuple[Attribute, ...]
    positions: tuple[int, ...]
    joins: tuple[_Join, ...]
    keep: Predicate | None  # None: every item of the design


def plan_export(designs: Mapping[str, Design], raw: Any) -> ExportPlan:
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
    return ExportPlan(
        file_name=body.file_name,
        by_name=body.export_header_type == "Name",
        design=design,
        attributes=tuple(design.attributes[p] for p in positions),
        positions=positions,
        joins=_plan_joins(designs, design, properties.join_attributes),
        keep=_compile(body.aqs.children[0], design) if body.aqs.children else None,
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
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequestError(f"DateTime {text!r} is not a valid date") from None


class ExportCancelled(Exception):
    """Raised out of `write_export` once its `cancel` event is set (the simulator is stopping)."""


class Progress:
    """How far one export has got: updated by the thread writing it, read by the threads that
    answer `/api/task/{id}` (plain attribute reads, so they need no lock).

    `total` is the number of root rows to write, None until they are counted. The zip holds one
    CSV per pass over those rows (the main CSV, then one per join), so `processed` counts a row
    once every pass has written it: it reaches `total` only as the last CSV is finished.
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
    which costs an extra pass only when the query filters. Raises `ExportCancelled` soon after
    `cancel` is set, leaving a partial `archive` for the caller to remove.
    """
    design, keep = plan.design.code, plan.keep

    def kept() -> Iterator[Item]:
        for item in snapshot.items(design):
            if cancel.is_set():
                raise ExportCancelled(archive.name)
            if keep is None or keep(item):
                yield item

    total = snapshot.count(design) if keep is None else sum(1 for _ in kept())
    progress.start(total, passes=1 + len(plan.joins))
    stem = plan.file_name[: -len(".csv")]
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        with _csv_member(zipped, f"{stem}/{plan.file_name}", bom=bom) as writer:
            writer.writerow(_main_header(plan))
            for item in kept():
                writer.writerow(_main_row(snapshot, plan, item))
                progress.wrote_row()
        for join in plan.joins:
            with _csv_member(zipped, f"JoinedDesign_{join.design.name}_{join.number}.csv", bom=bom) as writer:
                writer.writerow(_joined_header(plan, join))
                for item in kept():
                    trail = [join.path, plan.file_name, item.id, item.id]
                    for linked in _linked(snapshot, join, item):
                        writer.writerow([linked.id, *_cells(linked, join.positions), *trail])
                    progress.wrote_row()


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


def _linked(snapshot: Snapshot, join: _Join, item: Item) -> list[Item]:
    found = (snapshot.find(item_id) for item_id in item.links[join.link_position])
    return [linked for linked in found if linked is not None]


def _cells(item: Item, positions: tuple[int, ...]) -> list[str]:
    values = item.values
    return [values[p] or "" for p in positions]


def _label(part: Attribute | LinkAttribute | Design, by_name: bool) -> str:
    return part.name if by_name else part.code


def _main_header(plan: ExportPlan) -> list[str]:
    header = ["Item ID", *(_label(attribute, plan.by_name) for attribute in plan.attributes)]
    for join in plan.joins:
        prefix = f"root.{_label(join.link, plan.by_name)}.{_label(join.design, plan.by_name)}"
        header += [f"{prefix}.{_label(attribute, plan.by_name)}" for attribute in join.attributes]
        header.append(f"{prefix} Item IDs")
    return header


def _main_row(snapshot: Snapshot, plan: ExportPlan, item: Item) -> list[str]:
    row = [item.id, *_cells(item, plan.positions)]
    for join in plan.joins:
        linked = _linked(snapshot, join, item)
        row += [", ".join(other.values[p] or "" for other in linked) for p in join.positions]
        row.append(", ".join(other.id for other in linked))
    return row


def _joined_header(plan: ExportPlan, join: _Join) -> list[str]:
    attributes = (_label(attribute, plan.by_name) for attribute in join.attributes)
    return ["Item ID", *attributes, "AQS Path", "Predecessor File", "Predecessor Item", "Primary Item"]
