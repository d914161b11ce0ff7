"""`alloy-pipeline mappings` against the configuration the code location reads: an AQS folder, a raw
zone holding one committed raw manifest, and mapping files in a folder or on moto's S3."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from alloy_pipeline import cli
from alloy_pipeline.lake import RAW, LakeResource, RawManifest, TableOutput
from alloy_pipeline.partitions import Day
from alloy_pipeline_tests.harness import REPO

DAY = Day(dt.date(2024, 3, 2))
SLUG_NAMED = "dw_container_job_dw_container_job.json"
OLD_NAMED = "dw container job_waste_container_1.json"
STALE = "dw container job_teams_7.json"
UNEXTRACTED = "graffiti reports_street_1.json"
"""Perhaps a joined table of Graffiti Reports, which has no raw partition to say."""


def table_output(path: str) -> TableOutput:
    return TableOutput(path=path, rows=1, column_types=(("item_id", "string"), ("title", "string")))


def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raw_zone: str, mapping_location: str | None) -> None:
    """The environment of the code location, with the AQS folder holding two of the example queries."""
    for name in list(os.environ):
        if name.startswith("ALLOY_"):
            monkeypatch.delenv(name)
    aqs = tmp_path / "aqs"
    aqs.mkdir()
    for name in ("DW Container Job.json", "Graffiti Reports.json"):
        shutil.copy(REPO / "aqs_queries" / name, aqs)
    monkeypatch.setenv("ALLOY_AQS_DIR", str(aqs))
    monkeypatch.setenv("ALLOY_RAW_ZONE", raw_zone)
    if mapping_location is not None:
        monkeypatch.setenv("ALLOY_MAPPING_LOCATION", mapping_location)
    zone = LakeResource(raw_zone=raw_zone).raw
    manifest = RawManifest(
        query="dw_container_job",
        day=DAY.date,
        version="v_20240302T030000Z_a",
        kind="full",
        watermark=None,
        requested_at=dt.datetime(2024, 3, 2, 3, tzinfo=dt.UTC),
        task_id="t",
        run_id="r",
        main_table="dw_container_job",
        tables={
            table: table_output(zone.uri_of(RAW.table_dir("dw_container_job", table, DAY, "v_20240302T030000Z_a")))
            for table in ("waste_container_1", "dw_container_job")
        },
    )
    zone.write_text(RAW.manifest_path("dw_container_job", DAY), manifest.model_dump_json())


def put_mapping_files(put: Callable[[str, bytes], object]) -> None:
    put(SLUG_NAMED, b'{"title": "job_title"}')
    put(OLD_NAMED, b'{"title": "container_title"}')
    put(STALE, b'{"teamname": "team"}')
    put(UNEXTRACTED, b'{"title": "street"}')


def run_mappings(capsys: pytest.CaptureFixture[str]) -> tuple[dict[tuple[str, str], tuple[str, str]], list[str]]:
    """The command's exit status checked; its table rows by (query, table), and the lines after them."""
    assert cli.main(["mappings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("query "))
    end = lines.index("", header)
    rows = {}
    for line in lines[header + 1 : end]:
        query, table, known, file = re.split(r"\s{2,}", line)
        rows[(query, table)] = (known, file)
    return rows, lines[end + 1 :]


def assert_report(rows: dict[tuple[str, str], tuple[str, str]], rest: list[str]) -> None:
    assert rows == {
        ("dw_container_job", "dw_container_job"): ("raw partition 2024-03-02", SLUG_NAMED),
        ("dw_container_job", "waste_container_1"): ("raw partition 2024-03-02", OLD_NAMED),
        ("graffiti_reports", "graffiti_reports"): ("main table only: no raw partition yet", "none"),
    }
    assert rest == [
        "Mapping files that apply to no table: 2",
        f"  {STALE}",
        f"  {UNEXTRACTED}  (perhaps a joined table of graffiti_reports, which has no raw partition yet)",
    ]


def test_mappings_in_a_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mapping-files"
    folder.mkdir()
    configure(monkeypatch, tmp_path, str(tmp_path / "raw-zone"), str(folder))
    put_mapping_files(lambda name, body: (folder / name).write_bytes(body))
    rows, rest = run_mappings(capsys)
    assert_report(rows, rest)


def test_mappings_on_s3_at_the_default_location(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bucket: str, capsys
) -> None:
    """Unset, ALLOY_MAPPING_LOCATION defaults to a folder of the raw zone, here on S3."""
    configure(monkeypatch, tmp_path, f"s3a://{bucket}/raw", None)
    client = boto3.client("s3")
    put_mapping_files(
        lambda name, body: client.put_object(
            Bucket=bucket, Key=f"raw/env-services/alloy/mapping-files/{name}", Body=body
        )
    )
    rows, rest = run_mappings(capsys)
    assert_report(rows, rest)


def test_a_table_whose_two_files_disagree_is_reported_and_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "mapping-files"
    folder.mkdir()
    configure(monkeypatch, tmp_path, str(tmp_path / "raw-zone"), str(folder))
    (folder / SLUG_NAMED).write_text('{"title": "job_title"}')
    (folder / "dw container job_dw_container_job.json").write_text('{"title": "job_name"}')
    assert cli.main(["mappings"]) == 1
    [line] = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("dw_container_job  dw_container_job ")
    ]
    assert f"error: mapping files {folder / SLUG_NAMED} and {folder / 'dw container job_dw_container_job.json'}" in line
