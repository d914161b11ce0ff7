"""AQS export requests: the pydantic model of a query file, loading, and the incremental filter.

Every file in the AQS folder becomes a pair of assets, so a bad file must stop the code location
from loading with a message that names it, rather than fail a run at 3 a.m.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from alloy_pipeline.naming import slugify


class AqsError(ValueError):
    """An AQS folder or file that cannot be turned into assets."""


class _Node(BaseModel):
    """A part of an AQS file: the fields the pipeline relies on are validated, every other field
    Alloy defines (`sortInfo` today, whatever it adds tomorrow) is kept and sent back unchanged."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class FilterNode(_Node):
    """A node of an AQS filter tree (`And`, `Equals`, `GreaterThan`, `Attribute`, `String`, ...).

    Alloy has dozens of node types; the pipeline only needs to carry them through unchanged and
    add its own `GreaterThan` node, so the tree is kept generic.
    """

    type: str = Field(min_length=1)
    properties: dict[str, Any] | None = None
    children: tuple[FilterNode, ...] | None = None


_CODE = r"[^.^<>\s]+"
JOIN_PATH = re.compile(rf"root(?:[.^]{_CODE}(?:<{_CODE}>)?)+\.{_CODE}")
"""`root`, then forward (`.<link>`) and reverse (`^<link><designs_…>`) steps, then `.<attribute>`.

A step may name its design or not, either way: real files hold `.<link><designs_…>` and `^<link>` too.
"""


def _join_path(path: str) -> str:
    if not JOIN_PATH.fullmatch(path):
        raise ValueError(
            f"{path!r} is not a join path: root, then .<link attribute> or ^<link attribute><designs_code> "
            "steps, then .<attribute>"
        )
    return path


class JoinProperties(_Node):
    dodi_code: str = Field(alias="dodiCode", min_length=1)
    attributes: tuple[str, ...]
    join_attributes: tuple[Annotated[str, AfterValidator(_join_path)], ...] | None = Field(
        default=None, alias="joinAttributes"
    )


class QueryProperties(_Node):
    dodi_code: str = Field(alias="dodiCode", min_length=1)
    attributes: tuple[str, ...]


class _Root(_Node):
    children: tuple[FilterNode, ...] = ()

    @model_validator(mode="after")
    def _at_most_one_child(self) -> _Root:
        if len(self.children) > 1:
            raise ValueError("an AQS root takes at most one child filter; wrap several in an 'And'")
        return self


class JoinRoot(_Root):
    type: Literal["Join"]
    properties: JoinProperties


class QueryRoot(_Root):
    type: Literal["Query"]
    properties: QueryProperties

    @model_validator(mode="after")
    def _no_joins(self) -> QueryRoot:
        if "joinAttributes" in (self.properties.model_extra or {}):
            raise ValueError("a Query takes no joinAttributes; make the root a Join")
        return self


AqsRoot = Annotated[JoinRoot | QueryRoot, Field(discriminator="type")]


class ExportRequest(_Node):
    """The body of Alloy's `POST /api/export`, as stored in an AQS file."""

    aqs: AqsRoot
    file_name: str = Field(alias="fileName", pattern=r"(?i)^[^/\\]+\.csv$")
    export_header_type: Literal["Name", "Code"] = Field(alias="exportHeaderType")
    discriminator: Literal["CsvExportWebRequestModel"] | None = None
    """Alloy's name for a CSV export; some councils' files leave it out, and Alloy accepts them."""

    def to_body(self) -> dict[str, Any]:
        """The JSON body Alloy expects: what the file holds, field for field (nothing added, nulls kept)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def edited(self, after: datetime | None = None, until: datetime | None = None) -> ExportRequest:
        """This request narrowed to items last edited after `after` and up to `until` (each optional),
        keeping the query's own filter beside the new conditions under an `And`.

        Alloy stores `lastEditDate` to the millisecond, so `<= until` is asked as `< until + 1 ms`
        with the operator every AQS version has.
        """
        conditions = [
            _edit_date_node(kind, moment)
            for kind, moment in (("GreaterThan", after), ("LessThan", _next_millisecond(until)))
            if moment is not None
        ]
        if not conditions:
            return self
        own = self.aqs.children
        nodes = (*own, *conditions)
        child = nodes[0] if len(nodes) == 1 else FilterNode(type="And", children=nodes)
        return self.model_copy(update={"aqs": self.aqs.model_copy(update={"children": (child,)})})


def _edit_date_node(kind: str, moment: datetime) -> FilterNode:
    return FilterNode(
        type=kind,
        children=(
            FilterNode(type="ItemProperty", properties={"itemPropertyName": "lastEditDate"}),
            FilterNode(type="DateTime", properties={"value": [format_alloy_datetime(moment)]}),
        ),
    )


def _next_millisecond(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000) + timedelta(milliseconds=1)


def format_alloy_datetime(moment: datetime) -> str:
    """UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, the only form Alloy's DateTime node accepts."""
    if moment.tzinfo is None:
        raise ValueError("watermark must be timezone-aware")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class AqsQuery(BaseModel):
    """One AQS file: where it came from, its slug (the asset name) and its export request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    slug: str
    request: ExportRequest


def load_query(path: Path) -> AqsQuery:
    """Parse and validate one AQS file; errors name the file and the offending field."""
    try:
        request = ExportRequest.model_validate(json.loads(path.read_text(encoding="utf-8-sig")))
    except (OSError, UnicodeDecodeError) as error:
        raise AqsError(f"AQS file {path}: cannot be read: {error}") from error
    except json.JSONDecodeError as error:
        raise AqsError(f"AQS file {path}: not valid JSON: {error}") from error
    except RecursionError:
        raise AqsError(f"AQS file {path}: nested too deeply to read") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '<root>'}: {item['msg']}" for item in error.errors()
        )
        raise AqsError(f"AQS file {path}: {problems}") from error
    slug = slugify(path.stem)
    if not slug.strip("_"):
        raise AqsError(f"AQS file {path}: its name gives an empty slug")
    return AqsQuery(path=path, slug=slug, request=request)


def load_queries(folder: Path) -> list[AqsQuery]:
    """Every `*.json` file in `folder`, validated, sorted by slug, with slugs unique.

    One error lists every bad file, so a council fixing a folder of exports sees them all at once.
    """
    if not folder.is_dir():
        raise AqsError(f"AQS folder {folder} does not exist (set ALLOY_AQS_DIR)")
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise AqsError(f"AQS folder {folder} holds no *.json query files")
    problems: list[str] = []
    by_slug: dict[str, AqsQuery] = {}
    for path in paths:
        try:
            query = load_query(path)
        except AqsError as error:
            problems.append(str(error))
            continue
        if query.slug in by_slug:
            problems.append(
                f"AQS files {by_slug[query.slug].path} and {query.path} both give the slug '{query.slug}'; rename one"
            )
            continue
        by_slug[query.slug] = query
    if len(problems) == 1:
        raise AqsError(problems[0])
    if problems:
        raise AqsError(f"{len(problems)} problems in AQS folder {folder}:\n" + "\n".join(f"- {p}" for p in problems))
    return sorted(by_slug.values(), key=lambda query: query.slug)
