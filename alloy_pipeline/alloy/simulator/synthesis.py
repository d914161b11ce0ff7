"""Designs synthesized from AQS files alone, to serve a council's queries the simulator has never seen.

An AQS file names its root design (`dodiCode`), the attributes it reads, the link attributes its
paths follow and the designs its reverse steps name: enough to invent designs that serve it.
`dataset_for_queries` reads every request whose root design the base dataset does not know and
synthesizes:

- each design a request names, with the attributes the requests read on it (a design that
  several requests name is one design, their attributes merged);
- a link attribute wherever a path steps forward (`.<link>`, on the design the step leaves) or
  back (`^<link><designs_x>`, on designs_x, pointing at the design the step leaves). An attribute
  that `attributes` lists and a path follows is that link: its cell holds the linked ids;
- for a forward step that names no design, a target with a plausible code made from what is read
  there (`attributes_taskStatusesStatus` → `designs_taskStatuses`), which every other forward step
  through that link code reaches too (seven NI195 gradings, one grading design);
- for a reverse step that names no design, the design that already links back that way, or one
  invented the same way;
- display names from codes: `attributes_nI195MonitoringWardName_62a1ecc1bbe13f01c3256233` on
  `designs_nI195Monitoring_…` is "Ward Name" (the design's own stem, or an interface's, and the
  hex id dropped; words split at capitals);
- values by what the code suggests: Alloy datetimes for dates and times, references for titles,
  GeoJSON points for geometry, digits for UPRNs and USRNs, e-mail addresses, statuses and types
  from short lists, else a few words, some empty. An attribute a filter compares with strings
  (`Equals`, `StartsWith`) mostly holds those strings, so the query has rows to export.

Root designs get a few hundred items, other designs fewer; a link holds mostly one item. The
synthesized roots become roots of the dataset, so `simulate_day` edits, inserts and deletes their
items. Same requests and seed, same data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alloy_pipeline.alloy.simulator.dataset import (
    Attribute,
    Dataset,
    Design,
    ItemTable,
    LinkAttribute,
    Sampler,
    link_count,
)
from alloy_pipeline.alloy.simulator.paths import NodePath, Step, parse_join_attribute, parse_node_path
from alloy_pipeline.alloy.simulator.request import Aqs, parse
from alloy_pipeline.alloy.simulator.samplers import (
    STREET_NAMES,
    amount,
    date_2023,
    digits,
    email,
    geometry_point,
    location,
    maybe,
    moment_in_2023,
    person_name,
    pick,
    postcode,
    reference,
    short_text,
    weighted,
)

ROOT_ITEMS = 300
OTHER_ITEMS = 80
_TITLE = "attributes_itemsTitle"
_HEX_ID = re.compile(r"_[0-9a-f]{24}$")
_TOKEN = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_STATUSES = {"Open": 3, "In Progress": 2, "Completed": 4, "Cancelled": 1}
_PERSON_HINTS = ("customer", "contact", "officer", "complainant", "inspector", "createdby")
_AMOUNT_HINTS = ("fee", "charge", "amount", "cost", "deposit", "refund", "area", "length", "width", "value")


def dataset_for_queries(
    requests: Iterable[Mapping[str, Any]], base: Dataset | None = None, *, seed: int = 11
) -> Dataset:
    """A dataset serving every request: `base`'s designs (copied; `base` is not changed) and
    designs synthesized for the requests whose `dodiCode` `base` does not know.

    A request is an export body (`{"aqs": …, "fileName": …}`, as an AQS file holds it) or a bare
    AQS root node. A path through a design of `base` uses it as it is: one that needs a link or
    an attribute `base` lacks is a ValueError naming the request and the path.
    """
    sketch = _Sketch(base.designs if base is not None else {})
    for request in requests:
        sketch.add(request)
    tables = sketch.tables(random.Random(f"{seed}:synthesized"), base)
    if base is None:
        return Dataset(tables, seed=seed, roots=sketch.roots)
    return base.extended(tables, roots=sketch.roots)


def _stem(code: str) -> str:
    """`attributes_nI195MonitoringWardName_62a1…` → `nI195MonitoringWardName`."""
    return _HEX_ID.sub("", code.partition("_")[2] or code)


def _words(stem: str) -> list[str]:
    """`dWContainerJob` → DW, Container, Job; `nI195Grading` → NI195, Grading."""
    words: list[str] = []
    for token in _TOKEN.findall(stem):
        if token.isdigit() and words:
            words[-1] += token
        else:
            words.append(token)
    if len(words) > 1 and len(words[0]) == 1 and words[0].islower() and words[1].isupper():
        words[:2] = [(words[0] + words[1]).upper()]
    return words


def _display(words: Sequence[str]) -> str:
    return " ".join(word if word.isupper() else word[:1].upper() + word[1:] for word in words)


def _camel(words: Sequence[str]) -> str:
    first, *rest = words
    return first[:1].lower() + first[1:] + "".join(word[:1].upper() + word[1:] for word in rest)


def _same(left: Sequence[str], right: Sequence[str]) -> bool:
    return [word.lower() for word in left] == [word.lower() for word in right]


def _own_words(code: str, design_code: str) -> list[str]:
    """The words of an attribute's name without its design's stem (or, for an attribute of an
    interface such as `attributes_tasksRaisedTime`, without the interface's: its first word)."""
    words, owner = _words(_stem(code)), _words(_stem(design_code))
    if len(words) > len(owner) and _same(words[: len(owner)], owner):
        return words[len(owner) :]
    return words[1:] if len(words) > 1 else words


def _invented_stem(reads: Sequence[str], link: str, owner: str, *, reverse: bool) -> str:
    """The stem of a design no step names, from the attributes read on it, else from the link.

    Several attributes: the words their stems share. One: see `_design_words`. None but the
    `attributes_items…` every item has: a forward link's words after its owner's
    (`tasksTeamMember` → `teamMember`), a reverse link's first word (`teamsMembers` → `teams`).
    """
    own = [_words(_stem(code)) for code in reads if not code.startswith("attributes_items")]
    if len(own) > 1:
        common: list[str] = []
        for column in zip(*own, strict=False):
            if len({word.lower() for word in column}) > 1:
                break
            common.append(column[0])
        if common and all(len(words) > len(common) for words in own):
            return _camel(common)
    if own and len(own[0]) > 1:
        return _camel(_design_words(own[0]))
    words = _words(_stem(link))
    if len(words) < 2:
        return _camel(words)
    return _camel(words[:1] if reverse else _own_words(link, owner))


def _design_words(words: list[str]) -> list[str]:
    """The words of a design's stem in one of its attributes' stems: before a name that repeats
    earlier words (`dWServiceType|ServiceType`, `failureReasonContainerDelivery|FailureReason`),
    or before a word that repeats the one before it (`teams|TeamName`, `taskStatuses|Status`),
    or else all but the last word (`wasteContainerTypes|Description`)."""
    lowered = [word.lower() for word in words]
    for length in range(len(words) // 2, 0, -1):
        name, before = lowered[-length:], lowered[:-length]
        if any(before[start : start + length] == name for start in range(len(before) - length + 1)):
            return words[:-length]
    for cut in range(1, len(words)):
        before, after = lowered[cut - 1], lowered[cut]
        if min(len(before), len(after)) >= 3 and (before.startswith(after) or after.startswith(before)):
            return words[:cut]
    return words[:-1]


def _sampler(code: str, name: str, design_name: str, hints: Sequence[str], prefixes: Sequence[str]) -> Sampler:
    """What a value of attribute `code` looks like; mostly a filter's strings when it has some."""
    plain = _plain_sampler(code.lower(), name, design_name)
    if not hints and not prefixes:
        return plain
    starts = [*(f"{prefix}{n:02d}" for prefix in prefixes for n in range(1, 4))]
    choices = (*hints, *starts)
    return lambda rng: rng.choice(choices) if rng.randrange(4) else plain(rng)


def _plain_sampler(code: str, name: str, design_name: str) -> Sampler:
    stem = _stem(code)
    if stem.endswith("geometry"):
        return geometry_point
    if stem.endswith("subtitle"):
        return location
    if stem == "itemstitle":
        return reference("".join(word[0] for word in design_name.split()).upper() or "ITEM")
    if "uprn" in stem:
        return digits(12)
    if "usrn" in stem:
        return digits(8)
    if "email" in stem:
        return maybe(email, 5)
    if "postcode" in stem:
        return postcode
    if "date" in stem or "time" in stem:
        return maybe(date_2023, 6)
    if "status" in stem:
        return weighted(_STATUSES)
    if stem.endswith(("type", "class", "category", "grading")):
        return pick(*(f"{name} {letter}" for letter in "ABCD"))
    if "street" in stem:
        return pick(*STREET_NAMES)
    if any(hint in stem for hint in _PERSON_HINTS):
        return person_name
    if any(hint in stem for hint in _AMOUNT_HINTS):
        return maybe(amount, 4)
    if stem.endswith(("number", "reference", "no", "id")):
        return digits(7)
    if any(hint in stem for hint in ("notes", "comment", "description")):
        return maybe(short_text, 3)
    return maybe(short_text, 8)


@dataclass
class _Blueprint:
    """What the requests say about one design, gathered before it is built."""

    code: str
    reads: dict[str, None] = field(default_factory=dict)
    links: dict[str, dict[str, None]] = field(default_factory=dict)
    hints: dict[str, dict[str, None]] = field(default_factory=dict)
    prefixes: dict[str, dict[str, None]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return _display(_words(_stem(self.code)))

    def design(self) -> Design:
        values = [code for code in dict.fromkeys([_TITLE, *self.reads]) if code not in self.links]
        attributes = tuple(
            Attribute(
                code,
                (name := _display(_own_words(code, self.code))),
                _sampler(code, name, self.name, list(self.hints.get(code, ())), list(self.prefixes.get(code, ()))),
            )
            for code in values
        )
        links = tuple(
            LinkAttribute(code, _display(_own_words(code, self.code)), tuple(targets))
            for code, targets in self.links.items()
        )
        return Design(self.code, self.name, attributes, links)


@dataclass(frozen=True)
class _FilterRead:
    """An attribute a filter reads, on the items at `path`, and the strings it compares it with."""

    path: NodePath
    attribute: str
    node_type: str | None
    values: tuple[str, ...]


def _filter_reads(node: Any) -> Iterator[_FilterRead]:
    children = node.get("children") if isinstance(node, dict) else None
    if not isinstance(children, list):
        return
    values = tuple(
        value
        for child in children
        if isinstance(child, dict) and child.get("type") == "String"
        for value in (child.get("properties") or {}).get("value") or ()
        if isinstance(value, str)
    )
    for child in children:
        if not isinstance(child, dict):
            continue
        properties = child.get("properties")
        if child.get("type") == "Attribute" and isinstance(properties, dict):
            code, path = properties.get("attributeCode"), properties.get("path")
            if isinstance(code, str) and (path is None or isinstance(path, str)):
                yield _FilterRead(parse_node_path(path or "root"), code, node.get("type"), values)
        else:
            yield from _filter_reads(child)


def _aqs_of(request: Any) -> Aqs:
    """The AQS root of an export body, of a bare AQS node, or of a body wrapped once more."""
    while isinstance(request, Mapping) and "aqs" in request:
        request = request["aqs"]
    return parse(Aqs, request)


class _Sketch:
    """The designs the requests need, built up one request at a time."""

    def __init__(self, base: Mapping[str, Design]) -> None:
        self._base = base
        self._blueprints: dict[str, _Blueprint] = {}
        self._forward: dict[str, str] = {}
        self.roots: list[str] = []

    def add(self, request: Mapping[str, Any]) -> None:
        aqs = _aqs_of(request)
        properties = aqs.properties
        root = properties.dodi_code
        if root in self._base:
            return
        self.roots.append(root)
        reads: dict[NodePath, list[str]] = {NodePath(): [*properties.attributes]}
        if properties.sort_info is not None and properties.sort_info.attribute_code:
            reads[NodePath()].append(properties.sort_info.attribute_code)
        for text in properties.join_attributes:
            self._read(reads, *parse_join_attribute(text))
        filtered = [read for child in aqs.children for read in _filter_reads(child)]
        for read in filtered:
            self._read(reads, read.path, read.attribute)
        designs = {NodePath(): root}
        for path in reads:  # parents before children
            if path.steps:
                designs[path] = self._step(designs[path.parent], path.steps[-1], reads[path], f"{root} {path.text}")
        for path, codes in reads.items():
            for code in codes:
                self._mention(designs[path], code, f"{root} {path.text}")
        for read in filtered:
            blueprint = self._blueprints.get(designs[read.path])
            compared = {"Equals": blueprint.hints, "StartsWith": blueprint.prefixes} if blueprint else {}
            if read.node_type in compared:
                compared[read.node_type].setdefault(read.attribute, {}).update(dict.fromkeys(read.values))

    def tables(self, rng: random.Random, base: Dataset | None) -> list[ItemTable]:
        """Items for every synthesized design (`ROOT_ITEMS` of a root design, `OTHER_ITEMS` of any
        other), each link to mostly one item. A link may point at items not yet made: ids follow
        from a table's position, so every table's size is decided first."""
        designs = [blueprint.design() for blueprint in self._blueprints.values()]
        sizes = {design.code: ROOT_ITEMS if design.code in self.roots else OTHER_ITEMS for design in designs}
        tables = {design.code: ItemTable(design, rng) for design in designs}
        base_ids: dict[str, list[str]] = {}

        def linked(link: LinkAttribute) -> tuple[str, ...]:
            target = link.targets[0] if len(link.targets) == 1 else rng.choice(link.targets)
            if target in tables:
                count = sizes[target]
                picked = rng.sample(range(count), min(count, link_count(rng)))
                return tuple(tables[target].id_for(index) for index in picked)
            assert base is not None, "a target that is not synthesized is a base design"
            ids = base_ids.get(target) or base_ids.setdefault(target, base.ids(target))
            return tuple(rng.sample(ids, min(len(ids), link_count(rng))))

        for design in designs:
            for _ in range(sizes[design.code]):
                values = tuple(attribute.sample(rng) for attribute in design.attributes)
                table = tables[design.code]
                table.append(values, tuple(linked(link) for link in design.links), moment_in_2023(rng))
        return list(tables.values())

    def _read(self, reads: dict[NodePath, list[str]], path: NodePath, attribute: str) -> None:
        for node in path.lineage():
            reads.setdefault(node, [])
        reads[path].append(attribute)

    def _blueprint(self, code: str) -> _Blueprint:
        return self._blueprints.setdefault(code, _Blueprint(code))

    def _mention(self, design: str, code: str, where: str) -> None:
        if design not in self._base:
            self._blueprint(design).reads.setdefault(code, None)
            return
        known = self._base[design]
        if not known.has_link(code) and all(attribute.code != code for attribute in known.attributes):
            raise ValueError(f"AQS of {where}: design {design} of the base dataset has no attribute {code}")

    def _step(self, at: str, step: Step, reads: Sequence[str], where: str) -> str:
        """The design `step` reaches from design `at`, recording the link it follows."""
        if step.reverse:
            source = step.design or self._pointing_back(at, step.link)
            source = source or "designs_" + _invented_stem(reads, step.link, at, reverse=True)
            self._link(source, step.link, at, where)
            return source
        target = step.design or self._known_target(at, step.link)
        target = target or "designs_" + _invented_stem(reads, step.link, at, reverse=False)
        if step.design is None:
            self._forward.setdefault(step.link, target)
        self._link(at, step.link, target, where)
        return target

    def _known_target(self, at: str, link: str) -> str | None:
        """Where a forward step through `link` from `at` already leads: the base design's link, the
        target an earlier request gave it, or the target any design's link of that code has."""
        if at in self._base:
            design = self._base[at]
            return design.links[design.link_position(link)].targets[0] if design.has_link(link) else None
        return next(iter(self._blueprint(at).links.get(link, ())), None) or self._forward.get(link)

    def _pointing_back(self, at: str, link: str) -> str | None:
        """The design whose `link` already points at `at`, if one does."""
        for code, blueprint in self._blueprints.items():
            if at in blueprint.links.get(link, ()):
                return code
        for code, design in self._base.items():
            if design.has_link(link) and at in design.links[design.link_position(link)].targets:
                return code
        return None

    def _link(self, owner: str, link: str, target: str, where: str) -> None:
        if owner in self._base:
            design = self._base[owner]
            if not design.has_link(link) or target not in design.links[design.link_position(link)].targets:
                raise ValueError(f"AQS of {where}: design {owner} of the base dataset has no link {link} to {target}")
            return
        self._blueprint(owner).links.setdefault(link, {})[target] = None
        if target not in self._base:
            self._blueprint(target)
