"""Tables queryable by name: the engine's Spark catalog (Hive on Derby) and AWS Glue (moto)."""

import json
import uuid
from pathlib import Path

import boto3
import pytest

from alloy_pipeline.catalog import CatalogResource
from alloy_pipeline.glue_catalog import GlueResource
from alloy_pipeline_tests.harness import Pipeline, failure_text

QUERY = "dw_container_job"
DAYS = ["2024-03-01", "2024-03-02"]
NEW_JOIN = "root.attributes_jobAssignedContainer.attributes_wasteContainerSerialNumber"
NEW_COLUMN = "root_assigned_container_waste_container_serial_number"


def two_days_with_a_new_column(pipeline: Pipeline, *, rerun: bool = True) -> None:
    """Day 1; the query gains a joined attribute; day 2; then (`rerun`) day 2 again."""
    pipeline.run(DAYS[0])
    aqs_file = pipeline.aqs_dir / "DW Container Job.json"
    request = json.loads(aqs_file.read_text())
    request["aqs"]["properties"]["joinAttributes"].append(NEW_JOIN)
    aqs_file.write_text(json.dumps(request))
    pipeline.simulator.dataset.edit("designs_wasteContainerJob", 3)
    pipeline.run(DAYS[1])
    if rerun:
        pipeline.run(DAYS[1])


@pytest.fixture
def jobs(simulator, engine, spark, instance, tmp_path: Path) -> Pipeline:
    """DW Container Job with its container join: registration treats every table alike."""
    return Pipeline.create(simulator, engine.url, spark, instance, tmp_path, ["DW Container Job"]).keep_joins(
        "DW Container Job", "root.attributes_jobAssignedContainer."
    )


def test_spark_catalog_of_the_engine(jobs: Pipeline, spark) -> None:
    catalog = jobs.session_catalog()
    two_days_with_a_new_column(jobs)
    raw, refined = catalog.raw_database, catalog.refined_database

    assert spark.conf.get("spark.sql.catalogImplementation") == "hive", "a persistent metastore, not in-memory"
    tables, raw_partitions, snapshot_partitions, description, [count], [filled] = (
        spark.sql(statement).collect()
        for statement in (
            f"SHOW TABLES IN {refined}",
            f"SHOW PARTITIONS {raw}.{QUERY}_{QUERY}",
            f"SHOW PARTITIONS {refined}.{QUERY}_{QUERY}",
            f"DESCRIBE TABLE {refined}.{QUERY}_{QUERY}",
            f"SELECT count(*) AS n FROM {refined}.{QUERY}_{QUERY} WHERE snapshot_date = '20240302'",
            f"SELECT count({NEW_COLUMN}) AS n FROM {refined}.{QUERY}_{QUERY} WHERE snapshot_date = '20240301'",
        )
    )
    assert {row["tableName"] for row in tables} == {f"{QUERY}_{table}" for table in (QUERY, "waste_container_1")}
    assert [row["partition"] for row in raw_partitions] == [
        "import_year=2024/import_month=03/import_day=01/import_date=20240301",
        "import_year=2024/import_month=03/import_day=02/import_date=20240302",
    ]
    assert len(snapshot_partitions) == 2, "re-running a day adds no partition"
    columns = [row["col_name"] for row in description]
    assert NEW_COLUMN in columns
    assert {"snapshot_year", "snapshot_month", "snapshot_day", "snapshot_date"} <= set(columns)
    assert count["n"] == jobs.snapshot_manifest(QUERY, DAYS[1]).tables[QUERY].rows
    assert filled["n"] == 0, "day 1 predates the column"

    spark.sql(f"DROP DATABASE {refined} CASCADE")
    jobs.rebuild(*DAYS)
    rebuilt, description = (
        spark.sql(statement).collect()
        for statement in (f"SHOW PARTITIONS {refined}.{QUERY}_{QUERY}", f"DESCRIBE TABLE {refined}.{QUERY}_{QUERY}")
    )
    assert [row["partition"] for row in rebuilt] == [row["partition"] for row in snapshot_partitions], (
        "a ranged rebuild registers every day"
    )
    assert NEW_COLUMN in [row["col_name"] for row in description], "and a column added after the first day"


def glue_catalog(**settings: object) -> CatalogResource:
    """A Glue catalog with databases of this test's own: moto's server outlives one test."""
    suffix = uuid.uuid4().hex[:8]
    return CatalogResource(
        backend="glue",
        raw_database=f"raw_{suffix}",
        refined_database=f"refined_{suffix}",
        glue=GlueResource(**settings),
    )


def test_glue_catalog_on_moto(jobs: Pipeline, aws: str, spark) -> None:
    catalog = glue_catalog()
    jobs.catalog = catalog
    two_days_with_a_new_column(jobs, rerun=False)
    glue = boto3.client("glue")

    for database, keys in ((catalog.raw_database, "import"), (catalog.refined_database, "snapshot")):
        table = glue.get_table(DatabaseName=database, Name=f"{QUERY}_{QUERY}")["Table"]
        assert [key["Name"] for key in table["PartitionKeys"]] == [
            f"{keys}_year",
            f"{keys}_month",
            f"{keys}_day",
            f"{keys}_date",
        ]
        assert table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
        columns = [column["Name"] for column in table["StorageDescriptor"]["Columns"]]
        assert NEW_COLUMN in columns and f"{keys}_date" not in columns
        partitions = glue.get_partitions(DatabaseName=database, TableName=f"{QUERY}_{QUERY}")["Partitions"]
        assert sorted(partition["Values"][-1] for partition in partitions) == ["20240301", "20240302"]
    [day2] = [
        partition
        for partition in glue.get_partitions(DatabaseName=catalog.refined_database, TableName=f"{QUERY}_{QUERY}")[
            "Partitions"
        ]
        if partition["Values"][-1] == "20240302"
    ]
    assert day2["StorageDescriptor"]["Location"] == jobs.snapshot_manifest(QUERY, DAYS[1]).tables[QUERY].path

    jobs.run(DAYS[0], group="alloy_snapshot")
    columns = glue.get_table(DatabaseName=catalog.refined_database, Name=f"{QUERY}_{QUERY}")["Table"]
    assert NEW_COLUMN in [column["Name"] for column in columns["StorageDescriptor"]["Columns"]], (
        "re-running a day from before the column keeps it in the table"
    )

    [count] = (
        catalog.queryable(spark)
        .sql(f"SELECT count(*) AS n FROM {catalog.refined_database}.{QUERY}_{QUERY} WHERE snapshot_date = '20240302'")
        .collect()
    )
    assert count["n"] == jobs.snapshot_manifest(QUERY, DAYS[1]).tables[QUERY].rows, "queried by name through Glue"


def test_a_failed_registration_keeps_the_data_and_the_next_run_repairs_it(
    jobs: Pipeline, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.catalog = catalog = glue_catalog(max_attempts=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = jobs.run(DAYS[0], group="alloy_raw", raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert f"{catalog.raw_database}.{QUERY}_{QUERY}" in message and "the data is committed" in message
    assert jobs.raw_manifest(QUERY, DAYS[0]) is not None, "the partition stays committed"

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    assert jobs.run(DAYS[0], group="alloy_raw").success
    partitions = boto3.client("glue").get_partitions(DatabaseName=catalog.raw_database, TableName=f"{QUERY}_{QUERY}")
    assert [partition["Values"][-1] for partition in partitions["Partitions"]] == ["20240301"]
