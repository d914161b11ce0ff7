"""AQS filter trees compiled into predicates on root items.

The simulator evaluates the node types councils' files use: `And` and `Or`; `Equals`,
`NotEquals`, `StartsWith` and `Exists` on attributes and on the `itemId` property; `GreaterThan`
and `LessThan` on date and number attributes and on `lastEditDate`, which the pipeline's
incremental filter relies on. A String or AlloyId node holds a list of values: any of them
matches. A comparison's `linkNegated` property inverts it. The AQS Builder's "Inclusive" option
of `GreaterThan` and `LessThan` is read as an `inclusive: true` property (the simulator's guess at
its JSON name; Alloy's documentation shows the option, not the JSON). An `Attribute` or `ItemProperty`
operand with a `path` reads the items that path reaches from the root item, and the condition
holds if one of them satisfies it. Any other node type is a 400 that names it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from alloy_pipeline.alloy.simulator.dataset import Item
from alloy_pipeline.alloy.simulator.joins import Route, Walker
from alloy_pipeline.alloy.simulator.request import BadRequestError

Predicate = Callable[[Item, Walker], bool]
"""Whether a root item passes the filter; the walker follows any `path` the filter names."""

Resolver = Callable[[str | None], Route]
"""A filter operand's `path` (None: the root item itself) as a route, or a BadRequestError."""

_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MATCHES = ("Equals", "NotEquals", "StartsWith")
_ORDERS = {"GreaterThan": (operator.gt, operator.ge), "LessThan": (operator.lt, operator.le)}


@dataclass(frozen=True)
class _Operand:
    """What the left child of a comparison reads from each item its route reaches."""

    route: Route
    kind: Literal["value", "link", "itemId", "lastEditDate"]
    position: int = 0

    def texts(self, item: Item) -> tuple[str, ...]:
        if self.kind == "value":
            value = item.values[self.position]
            return (value,) if value else ()
        if self.kind == "link":
            return item.links[self.position]
        return (item.id,)


def compile_filter(node: Any, resolve: Resolver) -> Predicate:
    """Turn an AQS filter node into a predicate on root items; anything else is a 400."""
    kind = node.get("type") if isinstance(node, dict) else None
    children = node.get("children") if isinstance(node, dict) else None
    if kind not in ("And", "Or", "Exists", *_MATCHES, *_ORDERS):
        raise BadRequestError(f"filter node {kind or node!r} is not supported by the simulator")
    if not isinstance(children, list) or not children:
        raise BadRequestError(f"a {kind} node needs a non-empty list of children")
    if kind in ("And", "Or"):
        parts = [compile_filter(child, resolve) for child in children]
        combine = all if kind == "And" else any
        return lambda item, walker: combine(part(item, walker) for part in parts)
    properties = node.get("properties")
    negated = isinstance(properties, dict) and properties.get("linkNegated") is True
    inclusive = isinstance(properties, dict) and properties.get("inclusive") is True
    if kind == "Exists":
        if len(children) != 1:
            raise BadRequestError("an Exists node takes one Attribute child")
        exists = _operand(children[0], resolve)
        condition = _on(exists, lambda item: bool(exists.texts(item)))
    elif kind in _MATCHES:
        condition = _match(kind, children, resolve)
    else:
        condition = _order(kind, children, resolve, inclusive)
    return _negated(condition) if negated else condition


def _negated(condition: Predicate) -> Predicate:
    return lambda item, walker: not condition(item, walker)


def _match(kind: str, children: list[Any], resolve: Resolver) -> Predicate:
    left, right = _pair(kind, children)
    operand = _operand(left, resolve)
    if operand.kind == "lastEditDate":
        raise BadRequestError(f"{kind} compares attributes and itemId; compare lastEditDate with GreaterThan")
    wanted = _values(right, ("String", "AlloyId"))
    if kind == "StartsWith":
        prefixes = tuple(wanted)
        return _on(operand, lambda item: any(text.startswith(prefixes) for text in operand.texts(item)))
    allowed = frozenset(wanted)
    equal = _on(operand, lambda item: not allowed.isdisjoint(operand.texts(item)))
    return _negated(equal) if kind == "NotEquals" else equal


def _order(kind: str, children: list[Any], resolve: Resolver, inclusive: bool) -> Predicate:
    """GreaterThan / LessThan: an operand against one DateTime, Date or Number value."""
    left, right = _pair(kind, children)
    operand = _operand(left, resolve)
    compare = _ORDERS[kind][inclusive]
    right_type = right.get("type") if isinstance(right, dict) else None
    [text] = _values(right, ("DateTime", "Date", "Number"), one=True)
    if operand.kind == "lastEditDate":
        if right_type == "Number":
            raise BadRequestError(f"{kind} on lastEditDate takes a DateTime or Date value")
        moment = _moment(text, strict=right_type == "DateTime")
        return _on(operand, lambda item: compare(item.last_edit_date, moment))
    if operand.kind != "value":
        raise BadRequestError(f"{kind} compares attribute values or lastEditDate")
    if right_type == "Number":
        bound = _number(text)
        return _on(
            operand,
            lambda item: any(compare(n, bound) for n in map(_number_or_none, operand.texts(item)) if n is not None),
        )
    moment = _moment(text, strict=right_type == "DateTime")
    return _on(operand, lambda item: any(compare(m, moment) for m in map(_moment_or_none, operand.texts(item)) if m))


def _on(operand: _Operand, test: Callable[[Item], bool]) -> Predicate:
    """`test` on the root item, or on the items the operand's path reaches (any will do)."""
    if not operand.route.hops:
        return lambda item, walker: test(item)
    route = operand.route
    return lambda item, walker: any(test(reached) for reached in walker.reached(route, item))


def _pair(kind: str, children: list[Any]) -> tuple[Any, Any]:
    if len(children) != 2:
        raise BadRequestError(f"a {kind} node takes two children, an operand and a value")
    return children[0], children[1]


def _operand(node: Any, resolve: Resolver) -> _Operand:
    kind = node.get("type") if isinstance(node, dict) else None
    properties = node.get("properties") if isinstance(node, dict) else None
    if kind not in ("Attribute", "ItemProperty") or not isinstance(properties, dict):
        raise BadRequestError(f"expected an Attribute or ItemProperty node with properties, got {kind or node!r}")
    path = properties.get("path")
    if path is not None and not isinstance(path, str):
        raise BadRequestError(f"the path of a {kind} node must be a string")
    route = resolve(path)
    if kind == "ItemProperty":
        name = _text(properties, "itemPropertyName")
        if name not in ("itemId", "lastEditDate"):
            raise BadRequestError(f"item property {name!r} is not simulated (itemId and lastEditDate are)")
        return _Operand(route, name)
    code = _text(properties, "attributeCode")
    design = route.design
    if design.has_link(code):
        return _Operand(route, "link", design.link_position(code))
    try:
        return _Operand(route, "value", design.attribute_position(code))
    except KeyError as error:
        raise BadRequestError(f"filter on {path or 'root'}: {error.args[0]}") from None


def _values(node: Any, types: tuple[str, ...], *, one: bool = False) -> list[str]:
    kind = node.get("type") if isinstance(node, dict) else None
    properties = node.get("properties") if isinstance(node, dict) else None
    if kind not in types:
        raise BadRequestError(f"expected a {' or '.join(types)} node, got {kind or node!r}")
    values = properties.get("value") if isinstance(properties, dict) else None
    if kind == "Number" and isinstance(values, list):
        values = [str(value) for value in values if isinstance(value, int | float) and not isinstance(value, bool)]
    if not isinstance(values, list) or not values or not all(isinstance(value, str) for value in values):
        raise BadRequestError(f"the {kind} node needs a non-empty list of values")
    if one and len(values) != 1:
        raise BadRequestError(f"the {kind} node of a comparison holds one value, not {len(values)}")
    return values


def _text(properties: dict[str, Any], key: str) -> str:
    value = properties.get(key)
    if not isinstance(value, str):
        raise BadRequestError(f"missing string property {key!r}")
    return value


def _moment(text: str, *, strict: bool) -> datetime:
    """A DateTime node's value (UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, the only form Alloy accepts), or a
    Date node's (that, or `YYYY-MM-DD`)."""
    moment = _moment_or_none(text, dates=not strict)
    if moment is None:
        form = "UTC YYYY-MM-DDTHH:MM:SS.mmmZ" + ("" if strict else " or YYYY-MM-DD")
        raise BadRequestError(f"{'DateTime' if strict else 'Date'} {text!r} is not a valid {form}")
    return moment


def _moment_or_none(text: str, *, dates: bool = True) -> datetime | None:
    try:
        if _DATETIME.fullmatch(text):
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        if dates and _DATE.fullmatch(text):
            return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return None


def _number(text: str) -> float:
    number = _number_or_none(text)
    if number is None:
        raise BadRequestError(f"Number {text!r} is not a number")
    return number


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
