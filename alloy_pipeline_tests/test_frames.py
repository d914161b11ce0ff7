from datetime import datetime

import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.columns import clean_headers
from alloy_pipeline.frames import conform_csv, rename_columns, upsert_root_items


def rows(frame, *columns):
    return sorted(tuple(row[column] for column in columns) for row in frame.collect())


def test_conform_csv_names_nulls_and_stamps(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("1", "", "x"), ("2", "a", None)], ["Item ID", "Notes", "Notes"])
    stamp = {"import_date": "20240102", "import_timestamp": datetime(2024, 1, 2, 3, 4, 5)}
    out = conform_csv(frame, ["item_id", "notes1", "notes2"], stamp)
    assert out.columns == ["item_id", "notes1", "notes2", "import_date", "import_timestamp"]
    assert rows(out, "item_id", "notes1", "notes2", "import_date") == [
        ("1", None, "x", "20240102"),
        ("2", "a", None, "20240102"),
    ]
    assert dict(out.dtypes)["import_timestamp"] == "timestamp"
    with pytest.raises(ValueError, match="header has 2 names"):
        conform_csv(frame, ["a", "b"], stamp)


def test_an_attribute_named_like_a_stamp_column_survives_the_conversion(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("1", "2023-12-31")], ["Item ID", "Import Date"])
    out = conform_csv(frame, clean_headers(["Item ID", "Import Date"]), {"import_date": "20240102"})
    assert [tuple(row) for row in out.collect()] == [("1", "2023-12-31", "20240102")]
    assert out.columns == ["item_id", "import_date_alloy", "import_date"]


def test_conform_csv_refuses_names_that_clash_ignoring_case(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("1", "x")], ["Item ID", "Import Date"])
    with pytest.raises(ValueError, match="'import_date' and 'import_date'"):
        conform_csv(frame, ["item_id", "import_date"], {"import_date": "20240102"})
    with pytest.raises(ValueError, match="'notes' and 'Notes'"):
        conform_csv(frame, ["notes", "Notes"], {})


def test_upsert_replaces_every_row_of_a_changed_root_item(spark: SparkSession) -> None:
    joined = spark.createDataFrame(
        [("c1", "A", "j1"), ("c2", "A", "j1"), ("c3", "B", "j2"), ("c4", "C", "j3")],
        ["item_id", "title", "primary_item"],
    )
    increment = spark.createDataFrame([("c5", "A2", "j1", "new")], ["item_id", "title", "primary_item", "colour"])
    changed = spark.createDataFrame([("j1",), ("j2",)], ["item_id"])
    out = upsert_root_items(joined, increment, changed, key="primary_item")
    assert out.columns == ["item_id", "title", "primary_item", "colour"]
    assert rows(out, "item_id", "primary_item", "colour") == [("c4", "j3", None), ("c5", "j1", "new")]


def test_rename_ignores_absent_keys(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("1", "x")], ["item_id", "notes"])
    assert rename_columns(frame, {"notes": "comments", "absent": "x"}).columns == ["item_id", "comments"]


def test_rename_swaps_and_chains_from_the_original_names(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("1", "A", "B", "C")], ["item_id", "a", "b", "c"])
    swapped = rename_columns(frame, {"a": "b", "b": "a"})
    assert [row.asDict() for row in swapped.collect()] == [{"item_id": "1", "b": "A", "a": "B", "c": "C"}]
    chained = rename_columns(frame, {"a": "b", "b": "c", "c": "d"})
    assert [row.asDict() for row in chained.collect()] == [{"item_id": "1", "b": "A", "c": "B", "d": "C"}]


def test_rename_takes_names_literally(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("1", "x")], ["item_id", "notes"])
    dotted = rename_columns(frame, {"notes": "job.notes `x`"})
    assert dotted.columns == ["item_id", "job.notes `x`"]
    back = rename_columns(dotted, {"job.notes `x`": "notes"})
    assert [tuple(row) for row in back.collect()] == [("1", "x")] and back.columns == ["item_id", "notes"]
