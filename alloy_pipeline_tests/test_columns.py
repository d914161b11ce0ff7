from pathlib import Path

import pytest

from alloy_pipeline.columns import clean_headers, clean_name, read_header
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


def test_duplicate_headers_take_their_column_index_like_spark() -> None:
    headers = ["Item ID", "Title", "Notes", "Status", "Depth (mm)", "Inspector", "Notes", "", "Title"]
    assert clean_headers(headers) == [
        "item_id", "title1", "notes2", "status", "depth_mm", "inspector", "notes6", "_c7", "title8",
    ]


def test_headers_that_collide_only_after_cleaning_stay_distinct() -> None:
    assert clean_headers(["Item ID", "Notes?", "Notes!"]) == ["item_id", "notes1", "notes2"]


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
