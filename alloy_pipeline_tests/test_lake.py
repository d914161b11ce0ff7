"""The lake's zones and commit, on a local folder and on S3 (moto's server over HTTP)."""

import datetime as dt
from pathlib import Path

import pytest

from alloy_pipeline.lake import Day, Lake, RawManifest, TableOutput, Zone


def test_day_segments_follow_the_hive_layout() -> None:
    day = Day.from_key("2024-03-09")
    assert day.segments("import") == "import_year=2024/import_month=03/import_day=09/import_date=20240309"
    with pytest.raises(ValueError, match="2024-13-01"):
        Day.from_key("2024-13-01")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_zone_round_trip_and_directory_move(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "s3":
        bucket = request.getfixturevalue("bucket")
        zone = Zone.parse(f"s3a://{bucket}/raw")
        assert zone.uri == f"s3a://{bucket}/raw"
    else:
        zone = Zone.parse(f"file://{tmp_path}/raw")
        assert zone.uri == (tmp_path / "raw").as_uri()
    source = tmp_path / "Jobs.csv"
    source.write_bytes(b"Item ID\r\n1\r\n")
    zone.upload(source, "staging/run/csv/Jobs.csv")
    zone.write_text("staging/run/csv/notes.txt", "hello")
    zone.write_text("final/old.txt", "stale")
    zone.move_dir("staging/run/csv", "final")
    assert zone.list_names("final") == ["Jobs.csv", "notes.txt"]
    assert zone.read_text("final/notes.txt") == "hello"
    assert not zone.exists("staging/run/csv")
    zone.delete("final")
    assert zone.list_names("final") == []


def test_commit_replaces_a_day_and_drops_tables_it_no_longer_has(tmp_path: Path) -> None:
    lake = Lake(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"))
    day = Day.from_key("2024-03-01")
    zone = lake.raw

    def manifest(*tables: str) -> RawManifest:
        return RawManifest(
            query="jobs", day=day.date, kind="full", watermark=None,
            requested_at=dt.datetime(2024, 3, 2, 3, tzinfo=dt.timezone.utc), task_id="t", run_id="r",
            main_table="jobs",
            tables={table: TableOutput(path=zone.uri_of(lake.raw_table_dir("jobs", table, day)), rows=1, column_types=(("item_id", "string"),)) for table in tables},
        )

    for table in ("jobs", "streets_1"):
        zone.write_text(f"stage/{table}/part.parquet", table)
    lake.commit_raw(manifest("jobs", "streets_1"), {f"stage/{t}": lake.raw_table_dir("jobs", t, day) for t in ("jobs", "streets_1")})
    zone.write_text("stage2/jobs/part.parquet", "jobs v2")
    lake.commit_raw(manifest("jobs"), {"stage2/jobs": lake.raw_table_dir("jobs", "jobs", day)})

    assert [m.tables.keys() for m in lake.raw_manifests("jobs")] == [{"jobs"}]
    assert zone.read_text(f"{lake.raw_table_dir('jobs', 'jobs', day)}/part.parquet") == "jobs v2"
    assert not zone.exists(lake.raw_table_dir("jobs", "streets_1", day))
