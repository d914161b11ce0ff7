"""The lake's zones and manifests, on a local folder and on S3 (moto's server over HTTP)."""

import datetime as dt
from pathlib import Path

import pytest

from alloy_pipeline.lake import RAW, LakeResource, ManifestError, RawManifest
from alloy_pipeline.partitions import Day
from alloy_pipeline.zone import Zone


def test_day_segments_follow_the_hive_layout() -> None:
    day = Day.from_key("2024-03-09")
    assert day.segments("import") == "import_year=2024/import_month=03/import_day=09/import_date=20240309"
    with pytest.raises(ValueError, match="2024-13-01"):
        Day.from_key("2024-13-01")


@pytest.fixture(params=["local", "s3"])
def zone(request: pytest.FixtureRequest, tmp_path: Path) -> Zone:
    """A zone on a local folder, or on moto's S3 over HTTP."""
    if request.param == "s3":
        bucket = request.getfixturevalue("bucket")
        zone = Zone.parse(f"s3a://{bucket}/raw")
        assert zone.uri == f"s3a://{bucket}/raw"
        return zone
    zone = Zone.parse(f"file://{tmp_path}/raw")
    assert zone.uri == (tmp_path / "raw").as_uri()
    return zone


def test_zone_round_trip_and_directory_move(zone: Zone, tmp_path: Path) -> None:
    source = tmp_path / "Jobs.csv"
    source.write_bytes(b"Item ID\r\n1\r\n")
    zone.upload(source, "staging/run/csv/Jobs.csv")
    zone.write_text("staging/run/csv/notes.txt", "hello")
    zone.write_text("staging/run/csv/notes.txt", "hello again")
    zone.move_dir("staging/run/csv", "final/v_1")
    assert zone.list_names("final/v_1") == ["Jobs.csv", "notes.txt"], "no temporary file is left"
    assert zone.read_text("final/v_1/notes.txt") == "hello again"
    assert not zone.exists("staging/run/csv")
    zone.delete("final")
    assert zone.list_names("final") == []


def test_deleting_a_version_written_before_versions_keeps_the_newer_ones(zone: Zone) -> None:
    zone.write_text("day=1/part-0.parquet", "legacy")
    zone.write_text("day=1/v_20240101T000000Z_a/part-0.parquet", "new")
    zone.delete_version("day=1")
    assert zone.list_names("day=1") == ["v_20240101T000000Z_a"]
    zone.delete_version("day=1/v_20240101T000000Z_a")
    assert zone.list_names("day=1") == []


def raw_manifest(day: Day) -> RawManifest:
    return RawManifest(
        query="jobs",
        day=day.date,
        version="v_20240302T030000Z_a",
        kind="full",
        watermark=None,
        requested_at=dt.datetime(2024, 3, 2, 3, tzinfo=dt.UTC),
        task_id="t",
        run_id="r",
        main_table="jobs",
        tables={},
    )


def test_only_manifest_files_count_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    lake = LakeResource(raw_zone=str(tmp_path / "raw"), refined_zone=str(tmp_path / "refined"))
    day = Day.from_key("2024-03-01")
    manifest = raw_manifest(day)
    folder = RAW.manifest_folder("jobs")
    lake.raw.write_text(RAW.manifest_path("jobs", day), manifest.model_dump_json())
    for stray in ("20240301.json.tmp", ".20240301.json.1234.tmp", "notes.txt", "20240302.json~"):
        lake.raw.write_text(f"{folder}/{stray}", "not a manifest")
    assert lake.raw_manifests("jobs") == [manifest]

    damaged = Day.from_key("2024-03-02")
    lake.raw.write_text(RAW.manifest_path("jobs", damaged), '{"query": "jo')
    with pytest.raises(ManifestError, match=r"20240302\.json.*re-run partition 2024-03-02"):
        lake.raw_manifests("jobs")
    assert lake.raw_manifests("jobs", replacing=(damaged,)) == [manifest], "the run replacing it reads past it"


def test_the_manifests_of_days_listed_before_are_read_alone_and_one_gone_since_is_named(zone: Zone) -> None:
    lake = LakeResource(raw_zone=zone.uri, refined_zone=zone.uri)
    days = [Day.from_key(key) for key in ("2024-03-01", "2024-03-02", "2024-03-03")]
    for day in days:
        lake.raw.write_text(RAW.manifest_path("jobs", day), raw_manifest(day).model_dump_json())
    assert lake.raw_days("jobs") == [day.date for day in days]
    read = lake.raw_manifests("jobs", days=[days[2].date, days[0].date])
    assert read == [raw_manifest(days[0]), raw_manifest(days[2])], "those days only, oldest first"
    with pytest.raises(ManifestError, match=r"20240304\.json cannot be read \(FileNotFoundError\)"):
        lake.raw_manifests("jobs", days=[dt.date(2024, 3, 4)])
