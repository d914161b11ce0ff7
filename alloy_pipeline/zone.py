"""One zone of the lake as files: a local folder or an S3 prefix, read and written the same way,
and the version folders that hold each materialisation of a partition."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from alloy_pipeline.s3_uri import S3Uri

VERSION_PREFIX = "v_"
"""Version folders carry no `=`, so Spark's partition discovery of a table root skips over them
(as it does `_temporary`) and infers exactly the Hive keys above them."""


def new_version() -> str:
    """A fresh version folder name: its UTC time first, so listings sort by age, then a random id."""
    return f"{VERSION_PREFIX}{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:12]}"


def version_time(version: str) -> dt.datetime | None:
    """When `version` was made, from its name; None for a name that is not a version's."""
    if not version.startswith(VERSION_PREFIX):
        return None
    try:
        return dt.datetime.strptime(version[len(VERSION_PREFIX) :].split("_", 1)[0], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=dt.UTC
        )
    except ValueError:
        return None


@dataclass(frozen=True)
class Zone:
    """One zone of the lake, addressed both by Spark (`uri`) and by Python (`fs` + `root`)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def parse(cls, location: str) -> Zone:
        """Accept a local path, `file://…`, `s3://…` or `s3a://…` (Spark's S3 scheme)."""
        location = location.rstrip("/")
        s3 = S3Uri.parse(location)
        if s3 is not None:
            filesystem, root = pafs.FileSystem.from_uri(s3.s3)
            return cls(uri=s3.s3a, fs=filesystem, root=root)
        if location.startswith("file://"):
            location = location[len("file://") :]
        absolute = Path(location).expanduser().resolve()
        return cls(uri=absolute.as_uri(), fs=pafs.LocalFileSystem(), root=str(absolute))

    def uri_of(self, relative: str) -> str:
        return f"{self.uri}/{relative}"

    def path_of(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path_of(relative)).type != pafs.FileType.NotFound

    def read_text(self, relative: str) -> str:
        with self.fs.open_input_stream(self.path_of(relative)) as stream:
            return stream.read().decode("utf-8")

    def read_text_if_exists(self, relative: str) -> str | None:
        try:
            return self.read_text(relative)
        except FileNotFoundError:
            return None

    def write_text(self, relative: str, text: str) -> None:
        """Replace a small file in one step, so readers see the old text or the new, never half.

        Locally: a uniquely named temporary file, fsynced, then renamed over the target. On S3 a
        single PUT already replaces an object atomically, and a rename would be a copy.
        """
        path = self.path_of(relative)
        data = text.encode("utf-8")
        if not isinstance(self.fs, pafs.LocalFileSystem):
            with self.fs.open_output_stream(path) as stream:
                stream.write(data)
            return
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def delete(self, relative: str) -> None:
        info = self.fs.get_file_info(self.path_of(relative))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    def delete_version(self, relative: str) -> None:
        """Delete one version's folder; a folder written before versions existed loses only its files.

        Such a folder is the day's Hive folder itself, and newer version folders sit inside it.
        """
        if relative.rsplit("/", 1)[-1].startswith(VERSION_PREFIX):
            self.delete(relative)
            return
        selector = pafs.FileSelector(self.path_of(relative), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                self.fs.delete_file(info.path)

    def relative_of(self, uri: str) -> str:
        """The zone-relative path of a URI this zone made (`uri_of`)."""
        if not uri.startswith(f"{self.uri}/"):
            raise ValueError(f"{uri} is not in the zone {self.uri}")
        return uri[len(self.uri) + 1 :]

    def upload(self, local_file: Path, relative: str) -> None:
        self.fs.create_dir(self.path_of(relative).rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(
            str(local_file),
            self.path_of(relative),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )

    def move_dir(self, source: str, target: str) -> None:
        """Move `source` to the new folder `target` (a rename locally; copy and delete on object stores)."""
        target_path = self.path_of(target)
        self.fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.move(self.path_of(source), target_path)
        else:
            pafs.copy_files(
                self.path_of(source), target_path, source_filesystem=self.fs, destination_filesystem=self.fs
            )
            self.delete(source)

    def list_names(self, relative: str) -> list[str]:
        selector = pafs.FileSelector(self.path_of(relative), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))
