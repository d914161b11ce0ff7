"""One zone of the lake as files: a local folder or an S3 prefix, read and written the same way,
and the version folders that hold each materialisation of a partition."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import boto3
import pyarrow.fs as pafs
from botocore.exceptions import BotoCoreError, ClientError

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
class Revision:
    """One version of a small file as it was read: its text, and the tag a conditional write compares.

    On S3 the tag is the object's ETag; on a local disk, a SHA-256 of the file's bytes. Either way
    it changes whenever the file's content does, and it was read together with the text, so it
    names the version whose text this is, whatever was written since.
    """

    text: str
    tag: str


_MISSING = frozenset({"NoSuchKey", "404"})
_IN_FLIGHT = frozenset({"ConditionalRequestConflict", "409"})
_CONDITION_FAILED = frozenset({"PreconditionFailed", "412"}) | _MISSING | _IN_FLIGHT
"""S3's answers to a conditional PUT whose condition does not hold: the object's ETag is not the
expected one (412), the object expected is gone (404, for If-Match), or another conditional
write of the key is in flight (409)."""
_IN_FLIGHT_ATTEMPTS = 3
"""How often a conditional PUT is sent while S3 answers 409, as S3 asks: the write in flight may
yet fail, and then this one can succeed."""


def _already_written(current: Revision | None, text: str) -> bool:
    """Whether a conditional write that found the file changed finds its own text there: it then
    counts as written (on S3, a PUT botocore resent after its first response was lost)."""
    return current is not None and current.text == text


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


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

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def read_revision(self, relative: str) -> Revision | None:
        """The file's text with its tag, or None when there is no such file: what a later
        `write_text_if` can be conditional on.

        On S3 both come from one GET (boto3: pyarrow does not expose ETags), so the tag is this
        text's even if the object is replaced at that moment.
        """
        if self.local:
            try:
                with open(self.path_of(relative), "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                return None
            return Revision(data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        bucket, key = self._object(relative)
        try:
            response = self._s3().get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _MISSING:
                return None
            raise
        return Revision(response["Body"].read().decode("utf-8"), response["ETag"])

    def text_reader(self) -> Callable[[str], str]:
        """`read_text` for reading many small files: on S3 one GET a file (pyarrow sends a HEAD
        first), through one boto3 client that threads may share. As from pyarrow, a missing file
        raises FileNotFoundError, and any other failure OSError."""
        if self.local:
            return self.read_text
        client = self._s3()

        def read(relative: str) -> str:
            bucket, key = self._object(relative)
            try:
                return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
            except ClientError as error:
                failure = FileNotFoundError if _error_code(error) in _MISSING else OSError
                raise failure(f"s3://{bucket}/{key}: {_error_code(error)}") from error
            except BotoCoreError as error:
                raise OSError(f"s3://{bucket}/{key}: {error}") from error

        return read

    def write_text_if(self, relative: str, text: str, expected: Revision | None) -> bool:
        """Replace a small file as `write_text` does, but only if it is still `expected` (None: only
        if there is no such file); False, having written nothing, when another writer got there first.

        The comparison and the write are one step, so of two writers that read the same version,
        exactly one succeeds; a write that finds `text` itself in place counts as written. On S3,
        a conditional PUT: `If-Match` the expected ETag, or `If-None-Match: *`. Locally, the
        check and the rename run under an exclusive `flock` of a lock file beside the target, which
        every conditional writer of it takes (the kernel releases it if the process dies); a plain
        `write_text` does not take it.
        """
        if self.local:
            return self._write_local_if(relative, text, expected)
        bucket, key = self._object(relative)
        condition = {"IfMatch": expected.tag} if expected else {"IfNoneMatch": "*"}
        client = self._s3()
        for attempt in range(1, _IN_FLIGHT_ATTEMPTS + 1):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), **condition)
                return True
            except ClientError as error:
                code = _error_code(error)
                if code not in _CONDITION_FAILED:
                    raise
                if code not in _IN_FLIGHT or attempt == _IN_FLIGHT_ATTEMPTS:
                    break
            time.sleep(0.2 * attempt)
        return _already_written(self.read_revision(relative), text)

    def _write_local_if(self, relative: str, text: str, expected: Revision | None) -> bool:
        folder, name = os.path.split(self.path_of(relative))
        os.makedirs(folder, exist_ok=True)
        lock = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read_revision(relative)
            if current != expected:
                return _already_written(current, text)
            self.write_text(relative, text)
            return True
        finally:
            os.close(lock)

    def _object(self, relative: str) -> tuple[str, str]:
        """The bucket and key of `relative` on S3."""
        bucket, _, key = self.path_of(relative).partition("/")
        return bucket, key

    def _s3(self) -> Any:
        """A boto3 S3 client for what pyarrow's filesystem cannot do: ETags and conditional PUTs.

        It finds credentials and the endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`) in the
        environment, as pyarrow does, and asks the region pyarrow resolved for the bucket. Made
        per call (a few milliseconds once boto3 has loaded its models): a commit needs one a few
        times, and a zone stays a plain value that pickles and compares by its location.
        """
        return boto3.client("s3", region_name=cast(pafs.S3FileSystem, self.fs).region)

    def write_text(self, relative: str, text: str) -> None:
        """Replace a small file in one step, so readers see the old text or the new, never half.

        Locally: a uniquely named temporary file, fsynced, then renamed over the target. On S3 a
        single PUT already replaces an object atomically, and a rename would be a copy.
        """
        path = self.path_of(relative)
        data = text.encode("utf-8")
        if not self.local:
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
        if self.local:
            self.fs.move(self.path_of(source), target_path)
        else:
            pafs.copy_files(
                self.path_of(source), target_path, source_filesystem=self.fs, destination_filesystem=self.fs
            )
            self.delete(source)

    def list_names(self, relative: str) -> list[str]:
        selector = pafs.FileSelector(self.path_of(relative), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))
