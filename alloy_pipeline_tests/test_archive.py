import zipfile
from pathlib import Path

import pytest

from alloy_pipeline.alloy.archive import ArchiveError, extract_csvs


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return path


def test_extracts_csvs_in_their_folders(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"Jobs/Jobs.csv": b"Item ID\r\n1\r\n", "JoinedDesign_Streets_1.csv": b"x"})
    csvs = extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000)
    assert [path.relative_to(tmp_path / "out").as_posix() for path in csvs] == [
        "Jobs/Jobs.csv",
        "JoinedDesign_Streets_1.csv",
    ]
    assert csvs[0].read_bytes() == b"Item ID\r\n1\r\n"


@pytest.mark.parametrize("name", ["../evil.csv", "/etc/evil.csv", "a/../../evil.csv", "..\\evil.csv", "C:/evil.csv"])
def test_refuses_paths_that_escape(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "a.zip", {name: b"x"})
    with pytest.raises(ArchiveError, match="unsafe path"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000)
    assert not (tmp_path / "evil.csv").exists()


def test_refuses_archives_over_the_cap(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"big.csv": b"0" * 10_000})
    with pytest.raises(ArchiveError, match="cap"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=9_999)
    assert not (tmp_path / "out").exists()


def test_cap_holds_when_declared_sizes_lie(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"big.csv": b"0" * 10_000})
    data = bytearray(archive.read_bytes())
    honest = (10_000).to_bytes(4, "little")
    data = data.replace(honest, (10).to_bytes(4, "little"))
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=100)


def test_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    good = make_zip(tmp_path / "good.zip", {"a.csv": b"Item ID\r\n" * 1000})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="corrupt"):
        extract_csvs(truncated, tmp_path / "out", max_uncompressed_bytes=10**6)


def test_archive_without_csv_is_an_error(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"readme.txt": b"x"})
    with pytest.raises(ArchiveError, match="no CSV"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000)
