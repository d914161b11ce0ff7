"""Column-rename mapping files: `<location>/<query>_<table>.json`, on S3 or in a local folder.

Councils keep these files to give Alloy's long generated names friendly ones. A bad file must
fail the snapshot with its name in the message before anything is written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError


class MappingError(ValueError):
    """A mapping file that cannot be applied."""


class _Renames(RootModel[dict[str, str]]):
    pass


class Mapping(BaseModel):
    """A mapping file as applied: where it came from and its renames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    renames: dict[str, str]

    @classmethod
    def parse(cls, source: str, text: bytes | str) -> Mapping:
        try:
            renames = _Renames.model_validate_json(text).root
        except ValidationError as error:
            raise MappingError(
                f"mapping file {source}: must be a JSON object of strings ({error.errors()[0]['msg']})"
            ) from None
        blank = [old for old, new in renames.items() if not new.strip()]
        if blank:
            raise MappingError(f"mapping file {source}: empty new name for {', '.join(blank)}")
        return cls(source=source, renames=renames)

    def for_columns(self, columns: list[str]) -> dict[str, str]:
        """The renames that apply to `columns`; refuse any that would give two columns one name."""
        applied = {column: self.renames[column] for column in columns if column in self.renames}
        final = [applied.get(column, column) for column in columns]
        clashes = sorted(name for name, count in Counter(final).items() if count > 1)
        if clashes:
            raise MappingError(f"mapping file {self.source}: would give two columns the name {', '.join(clashes)}")
        return applied


class MappingFiles(dg.ConfigurableResource):
    """Where mapping files live: an `s3://` (or `s3a://`) prefix read through dagster-aws, or a folder."""

    location: str = Field(description="Folder or s3://bucket/prefix/ holding <query>_<table>.json files.")
    s3: S3Resource = Field(
        default_factory=S3Resource, description="S3 access for s3:// locations (honours AWS_ENDPOINT_URL)."
    )

    def load(self, table_name: str) -> Mapping | None:
        """The mapping for `<query>_<table>`, or None when there is no file for it."""
        file_name = f"{table_name}.json"
        if self.location.startswith(("s3://", "s3a://")):
            bucket, _, prefix = self.location.split("://", 1)[1].partition("/")
            key = f"{prefix.rstrip('/')}/{file_name}".lstrip("/")
            source = f"s3://{bucket}/{key}"
            try:
                body = self.s3.get_client().get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise MappingError(f"mapping file {source}: cannot be read: {error}") from None
            return Mapping.parse(source, body)
        path = Path(self.location.removeprefix("file://")) / file_name
        return Mapping.parse(str(path), path.read_bytes()) if path.is_file() else None
