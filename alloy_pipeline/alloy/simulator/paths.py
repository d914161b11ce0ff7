"""AQS paths as Alloy writes them: `root`, then steps from one design to the next.

A step is forward, `.<link attribute>` (the items the current item links to), or reverse,
`^<link attribute>` (the items whose link attribute points at the current item). Either may
name the design it reaches, `<designs_…>`: a reverse step usually does, a forward step does when
its link attribute points at an interface. `joinAttributes` end with `.<attribute>`; a filter's
`path` and a join node are the steps alone:

    root.attributes_tasksStatus.attributes_taskStatusesStatus
    root^attributes_tasksAssignableTasks<designs_nlpgPremises>.attributes_itemsGeometry
    root^a<designs_x>^b<designs_y>.attributes_itemsTitle
    root^a<designs_x>.attributes_xLink.attributes_itemsTitle

This module is syntax only; `joins` resolves paths against the designs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_STEP = re.compile(r"([.^])([A-Za-z0-9_]+)(?:<([A-Za-z0-9_]+)>)?")


class PathSyntaxError(ValueError):
    """A path that is not `root` followed by steps (and, for a join attribute, `.<attribute>`)."""


@dataclass(frozen=True)
class Step:
    reverse: bool
    link: str
    design: str | None = None

    @property
    def text(self) -> str:
        named = f"<{self.design}>" if self.design else ""
        return f"{'^' if self.reverse else '.'}{self.link}{named}"


@dataclass(frozen=True)
class NodePath:
    """A path from the root through `steps`; with no steps, the root itself."""

    steps: tuple[Step, ...] = ()

    @property
    def text(self) -> str:
        """The path as Alloy writes it (and as a joined CSV's `AQS Path` column shows it)."""
        return "root" + "".join(step.text for step in self.steps)

    @property
    def parent(self) -> NodePath:
        return NodePath(self.steps[:-1])

    def lineage(self) -> Iterator[NodePath]:
        """Every node on the way from the root to this one, the shallowest first, this one last."""
        for depth in range(1, len(self.steps) + 1):
            yield NodePath(self.steps[:depth])


def _steps(text: str) -> tuple[Step, ...]:
    if not text.startswith("root"):
        raise PathSyntaxError(f"{text!r} does not start with root")
    rest, steps, at = text[len("root") :], [], 0
    while at < len(rest):
        match = _STEP.match(rest, at)
        if match is None:
            raise PathSyntaxError(
                f"{text!r}: expected .<link attribute> or ^<link attribute><designs_…> at {rest[at:]!r}"
            )
        kind, link, design = match.groups()
        steps.append(Step(kind == "^", link, design))
        at = match.end()
    return tuple(steps)


def parse_node_path(text: str) -> NodePath:
    """A join node's or a filter's path: `root` and its steps."""
    return NodePath(_steps(text))


def parse_join_attribute(text: str) -> tuple[NodePath, str]:
    """A `joinAttributes` entry: the node it reads, and the attribute code it reads there."""
    steps = _steps(text)
    if len(steps) < 2 or steps[-1].reverse or steps[-1].design is not None:
        raise PathSyntaxError(f"{text!r} is not root, then at least one step, then .<attribute>")
    return NodePath(steps[:-1]), steps[-1].link
