"""Safe extraction of the export zip.

The archive comes from the network; a corrupt, hostile or runaway archive must fail with an
`ArchiveError` and a clear message instead of writing outside the work folder, filling the disk
or escaping as a bare `zlib.error`.

Limits, besides the caller's cap on the bytes extracted: an Alloy export holds one CSV per join
plus the main one, so `MAX_MEMBERS` is far above any real export. Alloy's CSVs carry a 24-hex
item id on every row, which keeps their deflate ratio low (the synthetic benchmark export: 3 to
8; near-identical rows with sequential ids: about 115), while a zip bomb of zeros reaches about
1,000: hence `MAX_COMPRESSION_RATIO`. Only stored and deflate members are read, as Alloy writes.
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20
MAX_MEMBERS = 1_000
MAX_COMPRESSION_RATIO = 500
_RATIO_FLOOR_BYTES = _CHUNK
"""Members that extract to less than this are never refused for their ratio (tiny files compress oddly)."""
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_ENCRYPTED_FLAG = 0x1


class ArchiveError(RuntimeError):
    """An export archive that is not a zip, is damaged, or is unsafe to extract."""


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if not path.parts or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise ArchiveError(f"refusing archive member with an unsafe path: {name!r}")
    return path


def _check_members(members: list[zipfile.ZipInfo], *, max_members: int, max_ratio: float) -> list[PurePosixPath]:
    """Refuse what cannot or must not be extracted before writing anything; the members' paths."""
    if len(members) > max_members:
        raise ArchiveError(f"archive holds {len(members):,} files, over the cap of {max_members:,}")
    paths = [_safe_member_path(info.filename) for info in members]
    folders = {parent for path in paths for parent in path.parents}
    seen: set[PurePosixPath] = set()
    for info, path in zip(members, paths, strict=True):
        if info.flag_bits & _ENCRYPTED_FLAG:
            raise ArchiveError(f"archive member {info.filename!r} is encrypted")
        if info.compress_type not in _METHODS:
            raise ArchiveError(
                f"archive member {info.filename!r} uses compression method {info.compress_type}, not stored or deflate"
            )
        if path in seen or path in folders:
            raise ArchiveError(f"archive member {info.filename!r} clashes with another file or folder of that name")
        if info.file_size > max(max_ratio * info.compress_size, _RATIO_FLOOR_BYTES):
            raise ArchiveError(
                f"archive member {info.filename!r} would expand to {info.file_size:,} bytes from "
                f"{info.compress_size:,}, over the compression ratio cap of {max_ratio:g} (a zip bomb?)"
            )
        seen.add(path)
    return paths


def extract_csvs(
    archive: Path,
    destination: Path,
    *,
    max_uncompressed_bytes: int,
    max_members: int = MAX_MEMBERS,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> list[Path]:
    """Extract every member of `archive` under `destination`; return the CSV files, in zip order.

    The caps are checked against the sizes the zip declares before anything is written, and that
    is enough: `zipfile` never reads a member past its declared size (a member whose data runs
    longer fails its CRC), so no more than the declared bytes can be written. On any error
    `destination` is removed.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [info for info in zipped.infolist() if not info.is_dir()]
            paths = _check_members(members, max_members=max_members, max_ratio=max_ratio)
            declared = sum(info.file_size for info in members)
            if declared > max_uncompressed_bytes:
                raise ArchiveError(
                    f"archive would extract to {declared:,} bytes, over the cap of "
                    f"{max_uncompressed_bytes:,} (raise max_archive_bytes if this export is expected)"
                )
            extracted: list[Path] = []
            for info, path in zip(members, paths, strict=True):
                target = destination.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
                if target.suffix.lower() == ".csv":
                    extracted.append(target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        shutil.rmtree(destination, ignore_errors=True)
        raise ArchiveError(f"export archive is corrupt: {type(error).__name__}: {error}") from error
    except ArchiveError:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    if not extracted:
        raise ArchiveError("export archive holds no CSV file")
    return extracted
