"""Glue schema updates keep what the pipeline does not own and lose no column to a concurrent update (moto's Glue)."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from alloy_pipeline.glue_catalog import register_in_glue
from alloy_pipeline.registration import Registration

PROJECTION = {"projection.enabled": "true", "projection.snapshot_date.type": "date", "lakeformation.tag": "env"}


def registration(database: str, columns: tuple[str, ...]) -> Registration:
    return Registration(
        database=database,
        table="jobs_jobs",
        location="s3a://lake/jobs",
        columns=(*((name, "string") for name in columns), ("import_date", "string")),
        partition_keys=("import_date",),
        partition_values=("20240301",),
        partition_location="s3a://lake/jobs/import_date=20240301/v_1",
    )


@pytest.fixture
def glue(aws: str) -> tuple[Any, str]:
    client = boto3.client("glue")
    database = f"raw_{uuid.uuid4().hex[:8]}"
    register_in_glue(client, registration(database, ("item_id",)))
    table = client.get_table(DatabaseName=database, Name="jobs_jobs")["Table"]
    client.update_table(
        DatabaseName=database,
        TableInput={
            "Name": "jobs_jobs",
            "Description": "Waste container jobs, curated by the council's data team",
            "TableType": table["TableType"],
            "Parameters": {**table["Parameters"], **PROJECTION},
            "PartitionKeys": table["PartitionKeys"],
            "StorageDescriptor": {**table["StorageDescriptor"], "Parameters": {"compression": "snappy"}},
        },
    )
    return client, database


def test_a_new_column_keeps_the_tables_description_and_parameters(glue: tuple[Any, str]) -> None:
    client, database = glue
    register_in_glue(client, registration(database, ("item_id", "title")))
    table = client.get_table(DatabaseName=database, Name="jobs_jobs")["Table"]
    assert [column["Name"] for column in table["StorageDescriptor"]["Columns"]] == ["item_id", "title"]
    assert table["Description"] == "Waste container jobs, curated by the council's data team"
    assert PROJECTION.items() <= table["Parameters"].items()
    assert table["StorageDescriptor"]["Parameters"] == {"compression": "snappy"}


class OvertakenOnce:
    """Glue as another step updates it between this step's read and its write: the first update
    is refused as Glue refuses a stale VersionId, after the other step's column has landed."""

    def __init__(self, client: Any, other: Registration) -> None:
        self._client, self._other, self.refused = client, other, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_table(self, **kwargs: Any) -> Any:
        if not self.refused:
            self.refused += 1
            register_in_glue(self._client, self._other)
            raise ClientError(
                {"Error": {"Code": "ConcurrentModificationException", "Message": "stale VersionId"}}, "UpdateTable"
            )
        assert "VersionId" in kwargs, "the update names the version it read"
        return self._client.update_table(**kwargs)


def test_two_steps_adding_columns_at_once_lose_neither(glue: tuple[Any, str]) -> None:
    client, database = glue
    racing = OvertakenOnce(client, registration(database, ("item_id", "status")))
    register_in_glue(racing, registration(database, ("item_id", "title")))
    assert racing.refused == 1
    table = client.get_table(DatabaseName=database, Name="jobs_jobs")["Table"]
    assert [column["Name"] for column in table["StorageDescriptor"]["Columns"]] == ["item_id", "status", "title"]
    assert PROJECTION.items() <= table["Parameters"].items()
