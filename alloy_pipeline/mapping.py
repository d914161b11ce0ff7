"""Column-rename mapping files: `<location>/<query>_<table>.json`, on S3 or in a local folder.

Councils keep these files to give Alloy's long generated names friendly ones. A table's file is
looked for under two names: `<query slug>_<table>.json`, then the name the old Glue jobs gave
it, `<AQS file stem lower-cased>_<table>.json` with spaces and punctuation kept, so councils can
bring their existing files unchanged. Both present and saying different things is refused: which
one applies would otherwise depend on a lookup order nobody sees.

A bad file must fail the snapshot with its name in the message before anything is written:
anything Spark would refuse later (two columns whose names differ only in case) is refused here,
and renames apply all at once, so a swap or a chain is fine. A file is UTF-8, with or without a
BOM; a key given twice is refused rather than resolved silently.

The matching of file names to tables (`MappingNames`, `applicable`, `unmatched_files`,
`stale_files`) is plain functions without I/O, shared by the snapshot and `alloy-pipeline mappings`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, RootModel, ValidationError

from alloy_pipeline.aqs import AqsQuery
from alloy_pipeline.s3_uri import S3Uri

_NOT_FOUND = ("NoSuchKey", "404")
_DENIED = ("AccessDenied", "403")


def _code(error: ClientError) -> str | None:
    return error.response.get("Error", {}).get("Code")


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


class MappingNames(BaseModel):
    """The two names a query's mapping files may begin with: its slug, and its AQS file's stem
    lower-cased with spaces and punctuation kept, as the old Glue jobs named them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: str
    stem: str
    """`AqsQuery.path.stem` lower-cased: `dw container job`, `dw education&compliance inspection`."""

    @classmethod
    def of(cls, query: AqsQuery) -> MappingNames:
        return cls(slug=query.slug, stem=query.path.stem.lower())

    @property
    def prefixes(self) -> tuple[str, ...]:
        """`<slug>_`, then `<stem>_`; once when they are the same (`graffiti.json`)."""
        return tuple(dict.fromkeys((f"{self.slug}_", f"{self.stem}_")))

    def file_names(self, table: str) -> tuple[str, ...]:
        """The files that may rename `table`, in the order they are looked for."""
        return tuple(f"{prefix}{table}.json" for prefix in self.prefixes)


def applicable(candidates: Sequence[Mapping]) -> Mapping | None:
    """The mapping that renames a table, given the files found for it in lookup order.

    The first (the slug-named file) applies; another that renames differently is refused, naming
    both, since keeping either silently would drop renames a council wrote on purpose.
    """
    if not candidates:
        return None
    first, *others = candidates
    for other in others:
        if other.renames != first.renames:
            raise MappingError(
                f"mapping files {first.source} and {other.source} both name this table but rename it "
                "differently; delete one, or make them the same"
            )
    return first


def unmatched_files(files: Iterable[str], tables: Iterable[tuple[MappingNames, str]]) -> tuple[str, ...]:
    """The files, sorted, that no (query, table) pair names: renames that apply to nothing.

    A file counts as matched when any pair gives exactly its name, so a name that begins with two
    queries' prefixes (`gully_…` and `gully_cleanse_…`) is judged by its whole name, not a prefix.
    """
    named = {file_name for names, table in tables for file_name in names.file_names(table)}
    return tuple(sorted(set(files) - named))


def stale_files(
    files: Iterable[str], names: MappingNames, tables: Collection[str], others: Iterable[MappingNames] = ()
) -> tuple[str, ...]:
    """The files, sorted, that look like this query's yet name none of `tables`: most often a table
    that was renamed or dropped from the query.

    A file looks like this query's when the longest of the code location's prefixes it begins
    with (this query's and `others`') is one of this query's: `gully_cleanse_x.json` belongs to
    query `gully_cleanse`, not to `gully`, whose snapshot cannot know `gully_cleanse`'s tables.
    """
    theirs = [prefix for other in others if other != names for prefix in other.prefixes]

    def ours(file_name: str) -> bool:
        own = max((len(prefix) for prefix in names.prefixes if file_name.startswith(prefix)), default=0)
        return own > 0 and all(len(prefix) <= own for prefix in theirs if file_name.startswith(prefix))

    return tuple(file_name for file_name in unmatched_files(files, ((names, t) for t in tables)) if ours(file_name))


class MappingResource(dg.ConfigurableResource):
    """Where mapping files live: an `s3://` (or `s3a://`) prefix read through dagster-aws, or a folder."""

    location: str = Field(description="Folder or s3://bucket/prefix/ holding <query>_<table>.json files.")
    s3: S3Resource = Field(
        default_factory=S3Resource, description="S3 access for s3:// locations (honours AWS_ENDPOINT_URL)."
    )

    _client: Any = PrivateAttr(default=None)

    def _s3_client(self) -> Any:
        """dagster-aws's S3 client, made once per resource, so once a run: `S3Resource.get_client`
        makes a boto3 Session each time, which loads its service models afresh (about a quarter of a
        second of CPU), and a snapshot day reads up to two files a table."""
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def _s3_folder(self) -> S3Uri | None:
        """The S3 location with its key as a prefix (empty, or ending in `/`); None for a local folder."""
        folder = S3Uri.parse(self.location)
        if folder is None:
            return None
        key = folder.key.strip("/")
        return S3Uri(folder.bucket, f"{key}/" if key else "")

    def _local_folder(self) -> Path:
        return Path(self.location.removeprefix("file://"))

    def read(self, file_name: str) -> Mapping | None:
        """The mapping file `file_name` at the location, parsed; None when there is no such file."""
        folder = self._s3_folder()
        if folder is None:
            path = self._local_folder() / file_name
            return Mapping.parse(str(path), path.read_bytes()) if path.is_file() else None
        file = S3Uri(folder.bucket, f"{folder.key}{file_name}")
        try:
            body = self._s3_client().get_object(Bucket=file.bucket, Key=file.key)["Body"].read()
        except ClientError as error:
            if _code(error) in _NOT_FOUND:
                return None
            needs = (
                " (reading needs s3:GetObject on it, and s3:ListBucket on the bucket, without which S3 "
                "refuses a missing file the same way)"
                if _code(error) in _DENIED
                else ""
            )
            raise MappingError(f"mapping file {file.s3}: cannot be read{needs}: {error}") from None
        return Mapping.parse(file.s3, body)

    def load(self, names: MappingNames, table: str) -> Mapping | None:
        """The mapping that renames `table` of the query `names`, or None when no file names it.

        Looks for each of `names.file_names(table)` in turn; see `applicable` for two files found.
        """
        return applicable([mapping for name in names.file_names(table) if (mapping := self.read(name)) is not None])

    def list_files(self) -> tuple[str, ...]:
        """The names, sorted, of the `*.json` files directly at the location; none when it does not exist."""
        folder = self._s3_folder()
        if folder is None:
            return tuple(sorted(path.name for path in self._local_folder().glob("*.json") if path.is_file()))
        pages = (
            self._s3_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=folder.bucket, Prefix=folder.key, Delimiter="/")
        )
        try:
            keys = [entry["Key"] for page in pages for entry in page.get("Contents", ())]
        except ClientError as error:
            needs = " (listing needs s3:ListBucket)" if _code(error) in _DENIED else ""
            raise MappingError(f"mapping location {folder.s3}/: cannot be listed{needs}: {error}") from None
        return tuple(sorted(key[len(folder.key) :] for key in keys if key.endswith(".json")))
