"""Safe extraction of the export zip.

The archive comes from the network; a corrupt, hostile or runaway archive must fail with a clear
message instead of writing outside the work folder or filling the disk.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20


class ArchiveError(RuntimeError):
    """An export archive that is not a zip, is damaged, or is unsafe to extract."""


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"refusing archive member with an unsafe path: {name!r}")
    return path


def extract_csvs(archive: Path, destination: Path, *, max_uncompressed_bytes: int) -> list[Path]:
    """Extract every member of `archive` under `destination`; return the CSV files, in zip order.

    Sizes declared in the zip can lie, so the cap is enforced on the bytes actually written too.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [info for info in zipped.infolist() if not info.is_dir()]
            for info in members:
                _safe_member_path(info.filename)
            declared = sum(info.file_size for info in members)
            if declared > max_uncompressed_bytes:
                raise ArchiveError(
                    f"archive would extract to {declared:,} bytes, over the cap of "
                    f"{max_uncompressed_bytes:,} (raise max_archive_bytes if this export is expected)"
                )
            written = 0
            extracted: list[Path] = []
            for info in members:
                target = destination.joinpath(*_safe_member_path(info.filename).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, target.open("wb") as sink:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if written > max_uncompressed_bytes:
                            raise ArchiveError(
                                f"archive extracts to more than the cap of {max_uncompressed_bytes:,} bytes"
                            )
                        sink.write(chunk)
                if target.suffix.lower() == ".csv":
                    extracted.append(target)
    except zipfile.BadZipFile as error:
        shutil.rmtree(destination, ignore_errors=True)
        raise ArchiveError(f"export archive is corrupt: {error}") from error
    except ArchiveError:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    if not extracted:
        raise ArchiveError("export archive holds no CSV file")
    return extracted
