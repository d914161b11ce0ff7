"""AQS export requests: the pydantic model of a query file, loading, and the incremental filter.

Every file in the AQS folder becomes a pair of assets, so a bad file must stop the code location
from loading with a message that names it, rather than fail a run at 3 a.m.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alloy_pipeline.naming import slugify


class AqsError(ValueError):
    """An AQS folder or file that cannot be turned into assets."""


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FilterNode(_Node):
    """A node of an AQS filter tree (`And`, `Equals`, `GreaterThan`, `Attribute`, `String`, ...).

    Alloy has dozens of node types; the pipeline only needs to carry them through unchanged and
    add its own `GreaterThan` node, so the tree is kept generic.
    """

    type: str = Field(min_length=1)
    properties: dict[str, Any] | None = None
    children: tuple[FilterNode, ...] | None = None


class JoinProperties(_Node):
    dodi_code: str = Field(alias="dodiCode", min_length=1)
    collection_code: tuple[str, ...] | None = Field(default=None, alias="collectionCode")
    attributes: tuple[str, ...]
    join_attributes: tuple[str, ...] | None = Field(default=None, alias="joinAttributes")


class QueryProperties(_Node):
    dodi_code: str = Field(alias="dodiCode", min_length=1)
    collection_code: tuple[str, ...] | None = Field(default=None, alias="collectionCode")
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


AqsRoot = Annotated[JoinRoot | QueryRoot, Field(discriminator="type")]


class ExportRequest(_Node):
    """The body of Alloy's `POST /api/export`, exactly as stored in an AQS file."""

    aqs: AqsRoot
    file_name: str = Field(alias="fileName", pattern=r"(?i)^[^/\\]+\.csv$")
    export_header_type: Literal["Name", "Code"] = Field(alias="exportHeaderType")
    discriminator: Literal["CsvExportWebRequestModel"]
    parameter_values: tuple[Any, ...] | None = Field(default=None, alias="parameterValues")

    def to_body(self) -> dict[str, Any]:
        """The JSON body Alloy expects (camelCase, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def since(self, watermark: datetime) -> ExportRequest:
        """This request narrowed to items edited after `watermark`, keeping the query's own filter."""
        edited = FilterNode(
            type="GreaterThan",
            children=(
                FilterNode(type="ItemProperty", properties={"itemPropertyName": "lastEditDate"}),
                FilterNode(type="DateTime", properties={"value": [format_alloy_datetime(watermark)]}),
            ),
        )
        own = self.aqs.children
        child = FilterNode(type="And", children=(*own, edited)) if own else edited
        return self.model_copy(update={"aqs": self.aqs.model_copy(update={"children": (child,)})})


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
    """Every `*.json` file in `folder`, validated, sorted by slug, with slugs unique."""
    if not folder.is_dir():
        raise AqsError(f"AQS folder {folder} does not exist (set ALLOY_AQS_DIR)")
    queries = [load_query(path) for path in sorted(folder.glob("*.json"))]
    if not queries:
        raise AqsError(f"AQS folder {folder} holds no *.json query files")
    by_slug: dict[str, AqsQuery] = {}
    for query in queries:
        if query.slug in by_slug:
            raise AqsError(
                f"AQS files {by_slug[query.slug].path} and {query.path} both give the slug '{query.slug}'; rename one"
            )
        by_slug[query.slug] = query
    return sorted(queries, key=lambda query: query.slug)
