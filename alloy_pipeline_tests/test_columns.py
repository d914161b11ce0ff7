import datetime as dt
import random
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from alloy_pipeline.columns import (
    RESERVED_COLUMNS,
    SNAPSHOT_COLUMNS,
    ColumnNames,
    RenamedHeader,
    clean_headers,
    clean_name,
    established_names,
    name_columns,
    read_header,
)
from alloy_pipeline.naming import slugify, table_slug


@pytest.mark.parametrize(
    ("header", "cleaned"),
    [
        ("Item ID", "item_id"),
        ("\ufeffItem ID", "item_id"),
        ("Depth (mm)", "depth_mm"),
        ("root.Assigned Container.Waste Container.Title", "root_assigned_container_waste_container_title"),
        ("Notes__", "notes"),
        ("(Notes)", "_notes"),
        ("Status?!", "status"),
    ],
)
def test_clean_name(header: str, cleaned: str) -> None:
    assert clean_name(header) == cleaned


def test_duplicate_headers_take_their_column_index_like_spark(spark: SparkSession, tmp_path: Path) -> None:
    """The old Glue jobs let Spark's CSV reader name the columns, and mapping files use those names,
    cleaned: Spark suffixes a header repeated in any case with its index and names a blank one `_c<index>`."""
    headers = ["Item ID", "Title", "Notes", "", "Depth (mm)", "notes", "Title", "DEPTH (MM)", ""]
    csv_file = tmp_path / "headers.csv"
    csv_file.write_text(",".join(headers) + "\n" + ",".join(str(index) for index in range(len(headers))) + "\n")
    sparks = spark.read.csv(str(csv_file), header=True).columns
    assert clean_headers(headers) == [clean_name(name) for name in sparks]
    assert clean_headers(headers) == [
        "item_id",
        "title1",
        "notes2",
        "_c3",
        "depth_mm_4",
        "notes5",
        "title6",
        "depth_mm_7",
        "_c8",
    ]


def test_headers_that_collide_only_after_cleaning_stay_distinct() -> None:
    assert clean_headers(["Item ID", "Notes?", "Notes!"]) == ["item_id", "notes1", "notes2"]


def test_names_left_repeated_by_the_index_suffix_are_made_unique() -> None:
    names = name_columns(["Item ID", "A b", "a-b", "a_b2"])
    assert names.columns == ("item_id", "a_b1", "a_b2_2", "a_b2")
    assert names.renamed == (RenamedHeader(index=2, header="a-b", established="a_b2", name="a_b2_2", rule="duplicate"),)


def test_a_repeated_name_is_kept_by_its_own_header_else_by_the_leftmost() -> None:
    assert clean_headers(["Item ID", "a_b2", "A b", "a-b"]) == ["item_id", "a_b2", "a_b2_2", "a_b3"]
    fillers = [f"f{index}" for index in range(3, 11)]
    assert clean_headers(["Item ID", "a1", "a1?", *fillers, "a", "a?"]) == [
        "item_id",
        "a11",
        "a12",
        *fillers,
        "a11_2",
        "a12_2",
    ]


def test_a_header_with_nothing_left_after_cleaning_is_named_by_its_index() -> None:
    names = name_columns(["Item ID", "#", "Notes", "", "_c1"])
    assert names.columns == ("item_id", "_c1_2", "notes", "_c3", "_c1")
    assert names.renamed == (RenamedHeader(index=1, header="#", established="", name="_c1_2", rule="empty"),)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Import Date", "import_date_alloy"),
        ("import-timestamp", "import_timestamp_alloy"),
        ("Snapshot Date", "snapshot_date_alloy"),
        ("Item-ID", "item_id2"),
        ("Import Notes", "import_notes"),
        ("Snapshot", "snapshot"),
    ],
)
def test_an_attribute_cannot_take_the_name_of_a_column_the_pipeline_adds(header: str, name: str) -> None:
    assert clean_headers(["Item ID", "Title", header]) == ["item_id", "title", name]


def test_the_suffix_for_a_reserved_name_avoids_a_taken_name() -> None:
    assert clean_headers(["Item ID", "Import Date", "Import Date Alloy"]) == [
        "item_id",
        "import_date_alloy_2",
        "import_date_alloy",
    ]


def test_the_key_keeps_item_id_when_an_attribute_repeats_its_header() -> None:
    names = name_columns(["Item ID", "Title", "Item ID"])
    assert names.columns == ("item_id", "title", "item_id2")
    assert names.renamed == (
        RenamedHeader(index=0, header="Item ID", established="item_id0", name="item_id", rule="key"),
    )
    assert clean_headers(["\ufeffItem ID", "item id", "ITEM-ID"]) == ["item_id", "item_id1", "item_id_alloy"]


def test_the_reserved_names_cover_every_column_the_pipeline_adds() -> None:
    from alloy_pipeline.assets.raw import import_stamp
    from alloy_pipeline.partitions import Day

    day = Day(dt.date(2024, 3, 1))
    added = {*import_stamp(day, dt.datetime(2024, 3, 1, tzinfo=dt.UTC)), *day.fields("snapshot")}
    assert added | {"item_id"} == RESERVED_COLUMNS
    assert set(day.fields("snapshot")) == set(SNAPSHOT_COLUMNS)


_PIECES = ["Item ID", "item id", "A", "a", "b", " ", "-", "#", "1", "2", "_", "Import Date", "alloy", "c", "\ufeff", ""]


def _random_headers(rng: random.Random) -> list[str]:
    return ["Item ID"] + ["".join(rng.choices(_PIECES, k=rng.randint(0, 3))) for _ in range(rng.randint(0, 9))]


def test_names_are_unique_non_empty_and_unreserved_and_usable_established_names_never_change() -> None:
    rng = random.Random(9)
    for _ in range(3000):
        headers = _random_headers(rng)
        names = name_columns(headers)
        established = established_names(headers)
        assert len(names.columns) == len(headers) and names.columns[0] == "item_id", headers
        assert len(set(names.columns)) == len(headers) and all(names.columns), headers
        assert not RESERVED_COLUMNS & set(names.columns[1:]), headers
        for index, name in enumerate(established):
            if index and name and name not in RESERVED_COLUMNS and established.count(name) == 1:
                assert names.columns[index] == name, headers
        assert {renamed.index for renamed in names.renamed} == {
            index for index, name in enumerate(established) if names.columns[index] != name
        }
        assert ColumnNames.model_validate_json(names.model_dump_json()) == names


def test_read_header_ignores_bom_and_quotes(tmp_path: Path) -> None:
    csv_file = tmp_path / "x.csv"
    csv_file.write_bytes('\ufeff"Item ID","Notes, general"\r\n1,"a ""b"""\r\n'.encode())
    assert read_header(csv_file) == ["Item ID", "Notes, general"]
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.csv"):
        read_header(tmp_path / "empty.csv")


def test_slugs() -> None:
    assert slugify("DW Container Job") == "dw_container_job"
    assert table_slug("JoinedDesign_Waste Container_1.csv") == "waste_container_1"
    assert table_slug("joineddesign_Streets_2.CSV") == "streets_2"
    assert table_slug("DW Container Job.csv") == "dw_container_job"
