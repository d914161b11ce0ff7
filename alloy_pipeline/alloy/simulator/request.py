"""The body of `POST /api/export` as Alloy reads it, and the error for one it refuses.

Alloy ignores the fields it does not use (`__dataExplorerFilter`, properties of a newer AQS
version), and councils' files carry them, so every model ignores unknown fields rather than
refusing them. The filter tree stays untyped here: `filters` compiles it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator


class BadRequestError(ValueError):
    """A request that Alloy would answer with HTTP 400; the message says what is wrong."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


def _listed(value: Any) -> Any:
    """Alloy takes a collection as one code or a list of codes."""
    return [value] if isinstance(value, str) else value


class SortInfo(_Lenient):
    """Sort the root items by one attribute, or by an item property (`itemId`, `lastEditDate`)."""

    attribute_code: str | None = Field(default=None, alias="attributeCode")
    item_property: Literal["itemId", "lastEditDate"] | None = Field(default=None, alias="itemProperty")
    sort_order: Literal["Ascending", "Descending"] = Field(default="Ascending", alias="sortOrder")

    @model_validator(mode="after")
    def _one_key(self) -> SortInfo:
        if (self.attribute_code is None) == (self.item_property is None):
            raise ValueError("sortInfo takes one of attributeCode and itemProperty")
        return self


class AqsProperties(_Lenient):
    dodi_code: str = Field(alias="dodiCode", min_length=1)
    collection_code: Annotated[list[Literal["Live", "Archive"]], BeforeValidator(_listed)] = Field(
        default=["Live"], alias="collectionCode", min_length=1
    )
    attributes: list[str] = []
    join_attributes: list[str] = Field(default=[], alias="joinAttributes")
    sort_info: SortInfo | None = Field(default=None, alias="sortInfo")


class Aqs(_Lenient):
    """The AQS root node: a Join (attributes of linked items too) or a Query (the root's only)."""

    type: Literal["Join", "Query"]
    properties: AqsProperties
    children: list[Any] = Field(default=[], max_length=1)

    @model_validator(mode="after")
    def _query_takes_no_joins(self) -> Aqs:
        if self.type == "Query" and self.properties.join_attributes:
            raise ValueError("a Query takes no joinAttributes; use a Join")
        return self


class ExportBody(_Lenient):
    aqs: Aqs
    file_name: str = Field(alias="fileName", pattern=r"(?i)^[^/\\]+\.csv$")
    export_header_type: Literal["Name", "Code"] = Field(alias="exportHeaderType")
    discriminator: Literal["CsvExportWebRequestModel"] | None = None
    parameter_values: list[Any] = Field(default=[], alias="parameterValues")


Model = TypeVar("Model", bound=BaseModel)


def parse(model: type[Model], raw: Any) -> Model:
    """`raw` validated as `model`, or a `BadRequestError` naming every field that is wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise BadRequestError(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        ) from None
