"""Registration in the AWS Glue Data Catalog through boto3, as the crawlers did, for Athena."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import PrivateAttr

from alloy_pipeline.registration import Registration
from alloy_pipeline.s3_uri import for_glue, for_spark


class GlueResource(ResourceWithBoto3Configuration):
    """The AWS Glue Data Catalog, with dagster-aws's usual region, endpoint, profile and retry settings.

    Unset, each setting falls back to the AWS environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
    `AWS_PROFILE`, …), as boto3 does.
    """

    _client: Any = PrivateAttr(default=None)

    def get_client(self) -> Any:
        """The Glue client, made once per resource, so once a run (Dagster makes resources per run).

        A boto3 Session loads its service models afresh, about a quarter of a second of CPU, which
        a client per registration paid on every day of every step.
        """
        if self._client is None:
            session = boto3.session.Session(
                profile_name=self.profile_name,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
                aws_session_token=self.aws_session_token,
            )
            self._client = session.client(
                "glue",
                region_name=self.region_name,
                endpoint_url=self.endpoint_url,
                use_ssl=self.use_ssl,
                verify=self.verify,
                config=Config(retries={"max_attempts": self.max_attempts, "mode": "standard"}),
            )
        return self._client


def _glue_columns(columns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Name": name, "Type": kind} for name, kind in columns]


def _storage(location: str, columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "Columns": _glue_columns(columns),
        "Location": location,
        "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
        "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
        "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
    }


_TABLE_INPUT_KEYS = (
    "Name",
    "Description",
    "Owner",
    "LastAccessTime",
    "LastAnalyzedTime",
    "Retention",
    "StorageDescriptor",
    "PartitionKeys",
    "ViewOriginalText",
    "ViewExpandedText",
    "TableType",
    "Parameters",
    "TargetTable",
)
"""The fields of a table as `get_table` returns it that `update_table` takes back."""
UPDATE_ATTEMPTS = 5


def _with_columns(table: dict[str, Any], columns: list[dict[str, str]]) -> dict[str, Any] | None:
    """`table` as read, as a TableInput with `columns` it lacks appended; None when it has them all.

    Everything the pipeline does not own (the description, parameters such as partition
    projection or Lake Formation tags, SerDe settings) is kept as the table holds it.
    """
    existing = table["StorageDescriptor"].get("Columns", [])
    known = {column["Name"].lower() for column in existing}
    added = [column for column in columns if column["Name"].lower() not in known]
    if not added:
        return None
    table_input = {key: table[key] for key in _TABLE_INPUT_KEYS if key in table}
    table_input["StorageDescriptor"] = {**table["StorageDescriptor"], "Columns": existing + added}
    return table_input


def _add_columns(
    client: Any, registration: Registration, columns: list[dict[str, str]], table: dict[str, Any] | None
) -> None:
    """Add `columns` the table lacks, from the table as read, guarded by its `VersionId`.

    Two steps adding different columns at once would otherwise each write the table they read,
    and the second would drop the first's column; Glue refuses a stale `VersionId`, so the loser
    reads the table again and adds its columns to what is there now. `table` is the table as
    the caller just read it, if it did.
    """
    for attempt in range(UPDATE_ATTEMPTS):
        if attempt or table is None:
            table = client.get_table(DatabaseName=registration.database, Name=registration.table)["Table"]
        table_input = _with_columns(table, columns)
        if table_input is None:
            return
        version = {"VersionId": table["VersionId"]} if "VersionId" in table else {}
        try:
            client.update_table(DatabaseName=registration.database, TableInput=table_input, **version)
            return
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConcurrentModificationException":
                raise
    raise RuntimeError(
        f"Glue table {registration.qualified_name}: columns could not be added after {UPDATE_ATTEMPTS} attempts, "
        "each overtaken by another update; the next run retries"
    )


def register_in_glue(client: Any, registration: Registration) -> None:
    """Create or update the Glue database, the table and the partition, pointed at this version's folder.

    The table's columns only grow: a re-run of an older day, which lacks a later column, must not
    take that column away from every other day.
    """
    try:
        client.create_database(DatabaseInput={"Name": registration.database})
    except ClientError as error:
        if error.response["Error"]["Code"] != "AlreadyExistsException":
            raise
    columns = _glue_columns(registration.data_columns)
    try:
        table = client.get_table(DatabaseName=registration.database, Name=registration.table)["Table"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "EntityNotFoundException":
            raise
        table = None
    if table is not None:
        _add_columns(client, registration, columns, table)
    else:
        try:
            client.create_table(
                DatabaseName=registration.database,
                TableInput={
                    "Name": registration.table,
                    "TableType": "EXTERNAL_TABLE",
                    "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
                    "PartitionKeys": _glue_columns([(key, "string") for key in registration.partition_keys]),
                    "StorageDescriptor": _storage(for_glue(registration.location), registration.data_columns),
                },
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "AlreadyExistsException":
                raise
            _add_columns(client, registration, columns, None)
    partition_input = {
        "Values": list(registration.partition_values),
        "StorageDescriptor": _storage(for_glue(registration.partition_location), registration.data_columns),
    }
    try:
        client.create_partition(
            DatabaseName=registration.database, TableName=registration.table, PartitionInput=partition_input
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "AlreadyExistsException":
            raise
        client.update_partition(
            DatabaseName=registration.database,
            TableName=registration.table,
            PartitionValueList=list(registration.partition_values),
            PartitionInput=partition_input,
        )


def registrations_in_glue(client: Any, databases: Sequence[str]) -> Iterator[Registration]:
    """Every partition Glue knows in `databases`, as registrations a Spark session can replay.

    This is how `sql` queries a Glue catalog from a local Spark, which has no Glue client.
    """
    for database in databases:
        for page in client.get_paginator("get_tables").paginate(DatabaseName=database):
            for table in page["TableList"]:
                keys = tuple(key["Name"] for key in table["PartitionKeys"])
                columns = tuple((column["Name"], column["Type"]) for column in table["StorageDescriptor"]["Columns"])
                partitions = client.get_paginator("get_partitions").paginate(
                    DatabaseName=database, TableName=table["Name"]
                )
                for partition in (item for part in partitions for item in part["Partitions"]):
                    yield Registration(
                        database=database,
                        table=table["Name"],
                        location=for_spark(table["StorageDescriptor"]["Location"]),
                        columns=columns + tuple((key, "string") for key in keys),
                        partition_keys=keys,
                        partition_values=tuple(partition["Values"]),
                        partition_location=for_spark(partition["StorageDescriptor"]["Location"]),
                    )
