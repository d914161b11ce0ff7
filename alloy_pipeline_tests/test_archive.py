import zipfile
import zlib
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


def understate(archive: Path, size: int, crc: int) -> None:
    """Make the only member of `archive` declare `size` uncompressed bytes of CRC `crc`."""
    with zipfile.ZipFile(archive) as zipped:
        [info] = zipped.infolist()
    fields = b"".join(value.to_bytes(4, "little") for value in (crc, info.compress_size, size))
    patch_headers(archive, local=(14, fields), central=(16, fields))


def test_cap_holds_when_declared_sizes_lie(tmp_path: Path) -> None:
    """The cap is checked on the declared sizes alone: a member that holds more than it declares
    is read no further, even with a CRC that matches the declared bytes."""
    archive = make_zip(tmp_path / "liar.zip", {"big.csv": b"0" * 10_000})
    understate(archive, 10, zlib.crc32(b"0" * 10))
    [extracted] = extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=100)
    assert extracted.read_bytes() == b"0" * 10


def test_a_member_longer_than_it_declares_fails_its_crc(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"big.csv": b"0" * 10_000})
    understate(archive, 10, zlib.crc32(b"0" * 10_000))
    with pytest.raises(ArchiveError, match="corrupt: BadZipFile: Bad CRC-32"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=100)
    assert not (tmp_path / "out").exists()


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


def patch_headers(archive: Path, *, local: tuple[int, bytes], central: tuple[int, bytes]) -> None:
    """Overwrite bytes at an offset of every local file header and central directory entry."""
    data = bytearray(archive.read_bytes())
    for signature, (offset, value) in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = data.find(signature)
        while start != -1:
            data[start + offset : start + offset + len(value)] = value
            start = data.find(signature, start + 4)
    archive.write_bytes(bytes(data))


def test_corrupt_deflate_data_is_an_archive_error(tmp_path: Path) -> None:
    """Damage inside the compressed stream raises `zlib.error`, not `BadZipFile`."""
    archive = make_zip(tmp_path / "a.zip", {"a.csv": b"Item ID\r\n" * 1000})
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.infolist()[0]
    data = bytearray(archive.read_bytes())
    name_length, extra_length = (int.from_bytes(data[i : i + 2], "little") for i in (26, 28))
    data[info.header_offset + 30 + name_length + extra_length] = 0xFF  # an invalid deflate block type
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=10**6)
    assert not (tmp_path / "out").exists()


def test_encrypted_member_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"a.csv": b"Item ID\r\n"})
    patch_headers(archive, local=(6, b"\x01\x00"), central=(8, b"\x01\x00"))
    with pytest.raises(ArchiveError, match="encrypted"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000)


def test_unsupported_compression_method_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"a.csv": b"Item ID\r\n"})
    patch_headers(archive, local=(8, b"\x09\x00"), central=(10, b"\x09\x00"))  # 9: Deflate64
    with pytest.raises(ArchiveError, match="compression method 9"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000)


@pytest.mark.parametrize(
    "names",
    [["Jobs", "Jobs/Jobs.csv"], ["Jobs/Jobs.csv", "Jobs"], ["a.csv", "./a.csv"]],
    ids=["file-then-folder", "folder-then-file", "same-file-twice"],
)
def test_a_file_clashing_with_a_folder_or_file_is_refused(tmp_path: Path, names: list[str]) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in names:
            zipped.writestr(name, b"Item ID\r\n")
    with pytest.raises(ArchiveError, match="clashes"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000)
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {f"{n}.csv": b"x" for n in range(4)})
    with pytest.raises(ArchiveError, match="4 files, over the cap of 3"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=1000, max_members=3)


def test_a_zip_bomb_is_refused_for_its_ratio_though_under_the_size_cap(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"bomb.csv": bytes(8 << 20)})
    with pytest.raises(ArchiveError, match="compression ratio cap of 500"):
        extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=10**9)
    assert not (tmp_path / "out").exists()


def test_small_or_ordinary_members_are_not_refused_for_their_ratio(tmp_path: Path) -> None:
    """Below 1 MiB the ratio is not judged (a short file of blanks compresses a thousandfold);
    a CSV with an item id on every row compresses far less than the cap."""
    rows = "".join(f"{n:024x},Open,,Bin collection,2024-01-01\r\n" for n in range(40_000)).encode()
    archive = make_zip(tmp_path / "a.zip", {"small.csv": bytes(512 << 10), "jobs.csv": b"Item ID,a,b,c,d\r\n" + rows})
    assert len(extract_csvs(archive, tmp_path / "out", max_uncompressed_bytes=10**9)) == 2
