"""Column-rename mapping files: `<location>/<query>_<table>.json`, on S3 or in a local folder.

Councils keep these files to give Alloy's long generated names friendly ones. A bad file must
fail the snapshot with its name in the message before anything is written: anything Spark would
refuse later (two columns whose names differ only in case) is refused here, and renames apply all
at once, so a swap or a chain is fine. A file is UTF-8, with or without a BOM; a key given twice
is refused rather than resolved silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from alloy_pipeline.s3_uri import S3Uri


class MappingError(ValueError):
    """A mapping file that cannot be applied."""


class _Renames(RootModel[dict[str, str]]):
    pass


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """`json` keeps the last of two equal keys; a file saying two things about one column is a mistake."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _decoded(source: str, text: bytes | str) -> object:
    """The file's JSON value: UTF-8 with or without a BOM (editors on Windows add one), no repeated keys."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise MappingError(
                f"mapping file {source}: is not UTF-8 text (byte {error.start}); save it as UTF-8"
            ) from None
    try:
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as error:
        raise MappingError(
            f"mapping file {source}: the key {error.key!r} appears more than once; keep one entry per column"
        ) from None
    except json.JSONDecodeError as error:
        raise MappingError(
            f"mapping file {source}: must be a JSON object of strings "
            f"(invalid JSON at line {error.lineno} column {error.colno}: {error.msg})"
        ) from None


def _described(column: str, renames: dict[str, str]) -> str:
    return f"{column!r} renamed to {renames[column]!r}" if column in renames else f"{column!r} (not renamed)"


class Mapping(BaseModel):
    """A mapping file as applied: where it came from and its renames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    renames: dict[str, str]

    @classmethod
    def parse(cls, source: str, text: bytes | str) -> Mapping:
        try:
            renames = _Renames.model_validate(_decoded(source, text), strict=True).root
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise MappingError(
                f"mapping file {source}: must be a JSON object of strings "
                f"({f'{where}: ' if where else ''}{first['msg']})"
            ) from None
        blank = [old for old, new in renames.items() if not new.strip()]
        if blank:
            raise MappingError(f"mapping file {source}: empty new name for {', '.join(blank)}")
        return cls(source=source, renames=renames)

    def for_columns(self, columns: list[str]) -> dict[str, str]:
        """The renames that apply to `columns`; refuse any that would give two columns one name.

        Names are compared ignoring case, as Spark resolves them: `{"a": "X"}` beside an `x` that
        keeps its name would pass an exact comparison and then fail the write.
        """
        applied = {column: self.renames[column] for column in columns if column in self.renames}
        by_name: dict[str, list[str]] = {}
        for column in columns:
            by_name.setdefault(applied.get(column, column).lower(), []).append(column)
        clashes = [
            " and ".join(_described(column, applied) for column in clashing)
            for clashing in by_name.values()
            if len(clashing) > 1
        ]
        if clashes:
            raise MappingError(
                f"mapping file {self.source}: would give two columns the same name, ignoring case as Spark "
                f"does: {'; '.join(clashes)}; give each column a name of its own in the mapping file"
            )
        return applied


class MappingResource(dg.ConfigurableResource):
    """Where mapping files live: an `s3://` (or `s3a://`) prefix read through dagster-aws, or a folder."""

    location: str = Field(description="Folder or s3://bucket/prefix/ holding <query>_<table>.json files.")
    s3: S3Resource = Field(
        default_factory=S3Resource, description="S3 access for s3:// locations (honours AWS_ENDPOINT_URL)."
    )

    def load(self, table_name: str) -> Mapping | None:
        """The mapping for `<query>_<table>`, or None when there is no file for it."""
        file_name = f"{table_name}.json"
        folder = S3Uri.parse(self.location)
        if folder is not None:
            file = S3Uri(folder.bucket, f"{folder.key.rstrip('/')}/{file_name}".lstrip("/"))
            source = file.s3
            try:
                body = self.s3.get_client().get_object(Bucket=file.bucket, Key=file.key)["Body"].read()
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise MappingError(f"mapping file {source}: cannot be read: {error}") from None
            return Mapping.parse(source, body)
        path = Path(self.location.removeprefix("file://")) / file_name
        return Mapping.parse(str(path), path.read_bytes()) if path.is_file() else None
