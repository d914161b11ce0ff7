"""AQS paths resolved against the designs, and walked over the items of one snapshot.

`resolve` turns a `NodePath` into a `Route`: for each step, the link attribute it follows and the
design it reaches, or a `RouteError` saying why Alloy could not serve it (an unknown link, a design
the link does not point at). A `Walker` follows routes from root items. It indexes a reverse
step's links the first time it takes that step, so a reverse join costs one pass over the linking
design per export rather than one per root item.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from alloy_pipeline.alloy.simulator.dataset import Design, Item, LinkAttribute, Snapshot
from alloy_pipeline.alloy.simulator.paths import NodePath, Step


class RouteError(ValueError):
    """A path the designs cannot serve; the message says which step fails and why."""


@dataclass(frozen=True)
class Hop:
    """One resolved step: `link` of design `source`, followed to `design`.

    Forward, `source` is the design the walk is at and `design` a target of `link`; reverse,
    `source` and `design` are the same: the design whose `link` points back at the walk.
    """

    step: Step
    link: LinkAttribute
    position: int
    source: Design
    design: Design


@dataclass(frozen=True)
class Route:
    path: NodePath
    root: Design
    hops: tuple[Hop, ...]

    @property
    def design(self) -> Design:
        """The design the route ends at: the root's for the empty route."""
        return self.hops[-1].design if self.hops else self.root

    @property
    def parent(self) -> Route:
        return Route(self.path.parent, self.root, self.hops[:-1])


def resolve(designs: Mapping[str, Design], root: Design, path: NodePath) -> Route:
    hops: list[Hop] = []
    at = root
    for step in path.steps:
        hop = _reverse(designs, at, step) if step.reverse else _forward(designs, at, step)
        hops.append(hop)
        at = hop.design
    return Route(path, root, tuple(hops))


def _forward(designs: Mapping[str, Design], at: Design, step: Step) -> Hop:
    if not at.has_link(step.link):
        raise RouteError(f"design {at.code} has no link attribute {step.link}")
    position = at.link_position(step.link)
    link = at.links[position]
    if step.design is None and len(link.targets) > 1:
        raise RouteError(
            f"{at.code}.{link.code} links to {', '.join(link.targets)}; name one as .{link.code}<designs_…>"
        )
    target = step.design or link.targets[0]
    if target not in link.targets:
        raise RouteError(f"{at.code}.{link.code} links to {' or '.join(link.targets)}, not {target}")
    return Hop(step, link, position, at, designs[target])


def _reverse(designs: Mapping[str, Design], at: Design, step: Step) -> Hop:
    if step.design is not None and step.design not in designs:
        raise RouteError(f"unknown design {step.design}")
    candidates = [designs[step.design]] if step.design else list(designs.values())
    pointing = [
        design
        for design in candidates
        if design.has_link(step.link) and at.code in design.links[design.link_position(step.link)].targets
    ]
    if not pointing:
        owner = f"{step.design} has no" if step.design else "no design has a"
        raise RouteError(f"{owner} link attribute {step.link} pointing at {at.code}")
    if len(pointing) > 1:
        names = ", ".join(design.code for design in pointing)
        raise RouteError(f"{names} all link to {at.code} through {step.link}; name one as ^{step.link}<designs_…>")
    [source] = pointing
    position = source.link_position(step.link)
    return Hop(step, source.links[position], position, source, source)


def _distinct(items: Iterable[Item]) -> list[Item]:
    return list({item.id: item for item in items}.values())


class Walker:
    """Follows routes from root items over one snapshot. One per export: it caches what it has
    reached from the current root item, and is not shared between threads."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._pointing: dict[tuple[str, int], dict[str, list[Item]]] = {}
        self._root_id: str | None = None
        self._reached: dict[NodePath, list[Item]] = {}

    def reached(self, route: Route, root: Item) -> list[Item]:
        """The distinct items `route` reaches from `root`, in the order they are met."""
        if not route.hops:
            return [root]
        if root.id != self._root_id:
            self._root_id, self._reached = root.id, {}
        found = self._reached.get(route.path)
        if found is None:
            if len(route.hops) == 1:
                found = self.hop(route, root)
            else:
                found = _distinct(
                    item for before in self.reached(route.parent, root) for item in self.hop(route, before)
                )
            self._reached[route.path] = found
        return found

    def edges(self, route: Route, root: Item) -> Iterator[tuple[Item, Item]]:
        """(predecessor, item) for each item `route` reaches from `root` and each item of the
        route's parent it hangs from: the rows of a joined CSV."""
        if len(route.hops) == 1:
            for item in self.hop(route, root):
                yield root, item
            return
        for before in self.reached(route.parent, root):
            for item in self.hop(route, before):
                yield before, item

    def hop(self, route: Route, item: Item) -> list[Item]:
        """The items the last step of `route` reaches from `item`."""
        hop = route.hops[-1]
        if hop.step.reverse:
            return self._pointing_at(hop).get(item.id, [])
        find, design = self._snapshot.find_in, hop.design.code
        return [linked for linked in (find(design, linked_id) for linked_id in item.links[hop.position]) if linked]

    def _pointing_at(self, hop: Hop) -> dict[str, list[Item]]:
        key = (hop.source.code, hop.position)
        index = self._pointing.get(key)
        if index is None:
            index = {}
            for item in self._snapshot.items(hop.source.code):
                for target in dict.fromkeys(item.links[hop.position]):
                    index.setdefault(target, []).append(item)
            self._pointing[key] = index
        return index
