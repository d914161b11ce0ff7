"""S3 locations in the two spellings the pipeline meets: `s3://` (boto3, Glue, Athena) and
`s3a://` (Spark's Hadoop filesystem). They name the same object."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMES = ("s3://", "s3a://")


@dataclass(frozen=True)
class S3Uri:
    """A bucket and a key (or prefix) within it."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, location: str) -> S3Uri | None:
        """The S3 location `location` names, or None when it is not an `s3://` or `s3a://` URI."""
        if not location.startswith(SCHEMES):
            return None
        bucket, _, key = location.split("://", 1)[1].partition("/")
        return cls(bucket=bucket, key=key)

    @property
    def s3(self) -> str:
        return f"s3://{self.bucket}/{self.key}".rstrip("/")

    @property
    def s3a(self) -> str:
        return f"s3a://{self.bucket}/{self.key}".rstrip("/")


def for_glue(location: str) -> str:
    """`location` as Glue and Athena write S3 (`s3://`); any other location unchanged."""
    uri = S3Uri.parse(location)
    return uri.s3 if uri else location


def for_spark(location: str) -> str:
    """`location` as Spark reads S3 (`s3a://`); any other location unchanged."""
    uri = S3Uri.parse(location)
    return uri.s3a if uri else location
