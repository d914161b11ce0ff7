"""The Alloy export API: start an export, wait for its task, stream the zip to disk.

The API key travels only in the `Authorization` header. Nothing here puts it in a URL, a log
line, an exception or a file: a transport error's text can quote the request's headers, so our
messages name only its type, and are raised outside the handler so that no exception chain
carries it. The resource's repr hides the key too.

Everything the server sends is checked before use: ids must look like ids before they go into a
path, replies must decode into the documented shape (else `AlloyReplyError`, naming the endpoint
and the task), and local file names never come from the server. Text the server writes (an error
body, a task's status and error) has the key taken out before it reaches an exception or a log, in
case a proxy echoes the request's header. A download has a cap on its bytes and a deadline, so a
server cannot fill the disk or keep a run waiting by trickling bytes under the read timeout.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import quote

import dagster as dg
import httpx
from dagster_aws.secretsmanager import SecretsManagerResource
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alloy_pipeline.alloy.archive import ArchiveError, extract_csvs
from alloy_pipeline.alloy.transport import RETRYABLE_ERRORS, RETRYABLE_STATUS, RetryingTransport
from alloy_pipeline.aqs import ExportRequest
from alloy_pipeline.loopback import is_loopback
from alloy_pipeline.resource_environment import held_environment

IN_PROGRESS_STATUSES = frozenset({"Queued", "Running"})
FAILED_STATUSES = frozenset({"Failed", "Deleted", "Cancelled"})
MAX_RETRIES = 5
REQUEST_TIMEOUT_SECONDS = 60.0
DOWNLOAD_TIMEOUT_SECONDS = 2 * 3600.0
"""The whole download of one export's zip, resumes included: a 10 GiB zip (`max_archive_bytes`) at 1.5 MB/s.
The benchmark's 3M-item export downloads in 10 s on loopback."""
DOWNLOAD_SLACK_BYTES = 1 << 20
"""What a zip's headers add to its members' bytes: about 150 bytes and twice the name per member, so
1 MiB covers `archive.MAX_MEMBERS` members with names of 400 characters."""
ARCHIVE_NAME = "export.zip"
API_URL_VARIABLE = "ALLOY_API_URL"
KEY_VARIABLE = "ALLOY_API_KEY"
SECRET_ID_VARIABLE = "ALLOY_API_KEY_SECRET_ID"
DEFAULT_API_URL = "https://api.uk.alloyapp.io"
CSV_FOLDER = "csv"
_HEADER_SAFE_KEY = re.compile(r"[\x21-\x7e]+")

AlloyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")]
"""An id Alloy hands out (24 hex digits today), checked before it becomes part of a URL."""


class AlloyError(RuntimeError):
    """The Alloy API refused or failed an export."""


class AlloyUnavailable(AlloyError):
    """Alloy was unreachable, or answered 429 or 5xx, even after the transport's retries."""


class AlloyReplyError(AlloyError):
    """A reply that is not what the endpoint documents: not JSON, a missing field, a bad id."""


class AlloyTaskError(AlloyError):
    """An export task that Alloy ended as `Failed`, `Deleted` or `Cancelled`."""

    def __init__(self, task_id: str, status: str, message: str) -> None:
        super().__init__(f"Alloy export task {task_id} ended {status}: {message or 'no message given'}")
        self.task_id = task_id
        self.status = status


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _ProcessState(_Reply):
    """A task's progress in root items; a count Alloy leaves out is None, not 0, so that no check
    reads an absent count as an empty export."""

    processed: int | None = None
    total: int | None = None

    def describe(self) -> str:
        return f"{_count(self.processed)}/{_count(self.total)} processed"


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


class _Task(_Reply):
    status: str = Field(min_length=1, max_length=64)
    error: str | None = None
    process_state: _ProcessState | None = Field(default=None, alias="processState")


class _TaskEnvelope(_Reply):
    task: _Task


class _ExportStarted(_Reply):
    background_task_id: AlloyId = Field(alias="backgroundTaskId")


class _ExportFile(_Reply):
    file_item_id: AlloyId = Field(alias="fileItemId")


_M = TypeVar("_M", bound=_Reply)


def bearer_header(api_key: str) -> str:
    """`Bearer <key>` for a key stripped of surrounding whitespace; refuses, without echoing
    it, a key that cannot be sent in a header."""
    key = api_key.strip()
    if not key:
        raise AlloyError("no Alloy API key configured (set ALLOY_API_KEY)")
    if not _HEADER_SAFE_KEY.fullmatch(key):
        raise AlloyError(
            "the Alloy API key holds a character that cannot be sent in an HTTP header (a space, "
            "control character or non-ASCII letter inside it); check the secret's value (not shown)"
        )
    return f"Bearer {key}"


def _segment(alloy_id: str) -> str:
    return quote(alloy_id, safe="")


def _where(method: str, path: str, task_id: str | None) -> str:
    return f"{method} {path}" + (f" (export task {task_id})" if task_id else "")


def _transport_failure(where: str, error: httpx.TransportError) -> AlloyError:
    kind = AlloyUnavailable if isinstance(error, RETRYABLE_ERRORS) else AlloyError
    return kind(f"Alloy {where}: {type(error).__name__}")


def _status_failure(where: str, response: httpx.Response) -> AlloyError | None:
    if not response.is_error:
        return None
    response.read()
    kind = AlloyUnavailable if response.status_code in RETRYABLE_STATUS else AlloyError
    return kind(f"Alloy {where}: HTTP {response.status_code}: {_without_credentials(response)[:500]}")


def _redacted(text: str, authorization: str) -> str:
    """`text` with the key of `authorization` (`Bearer <key>`) taken out, should the server or a proxy echo it."""
    key = authorization.removeprefix("Bearer ").strip()
    return text.replace(key, "[redacted]") if key else text


def _without_credentials(response: httpx.Response) -> str:
    """The reply's text, with the request's key taken out."""
    return _redacted(response.text, response.request.headers.get("Authorization", ""))


def max_download_bytes(max_archive_bytes: int) -> int:
    """The most an export's zip may be while it downloads: an archive is never much larger than what it
    extracts to (stored members are copied, deflate grows incompressible data by under 0.01 %), so
    `max_archive_bytes` plus 1 % and `DOWNLOAD_SLACK_BYTES` for the headers. Checked as bytes arrive: extraction's cap
    comes only once the whole zip is on disk, too late for a server that streams without end."""
    return max_archive_bytes + max_archive_bytes // 100 + DOWNLOAD_SLACK_BYTES


def _decode(model: type[_M], response: httpx.Response, where: str) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}"
            for item in error.errors(include_url=False, include_input=False)
        )
    content_type = response.headers.get("Content-Type", "no content type")[:100]
    raise AlloyReplyError(f"Alloy {where}: unexpected reply (HTTP {response.status_code}, {content_type}): {problems}")


@dataclass(frozen=True)
class PollPolicy:
    """How often to ask about a task: start fast for short exports, back off for long ones."""

    initial_seconds: float = 1.0
    growth: float = 1.5
    max_seconds: float = 30.0
    timeout_seconds: float = 3 * 3600.0

    def __post_init__(self) -> None:
        if not (self.initial_seconds > 0 and self.max_seconds > 0 and self.timeout_seconds > 0):
            raise ValueError("poll delays and the task timeout must be more than 0 seconds")
        if not self.growth >= 1:
            raise ValueError("the poll delay's growth must be at least 1")

    def delays(self) -> Iterator[float]:
        delay = self.initial_seconds
        while True:
            yield delay
            delay = min(self.max_seconds, delay * self.growth)


@dataclass(frozen=True)
class _DownloadLimits:
    """The byte cap and the deadline of one download, checked as its bytes arrive and between attempts.

    The request timeout bounds each read only: a server that sends a byte a minute, or resumes
    forever, would never trip it.
    """

    where: str
    max_archive_bytes: int
    timeout_seconds: float
    started: float

    def remaining(self) -> float:
        return self.timeout_seconds - (time.monotonic() - self.started)

    def check(self, size: int) -> None:
        """Raise, naming the task and the setting to raise, once `size` bytes or the time are too many."""
        cap = max_download_bytes(self.max_archive_bytes)
        if size > cap:
            raise AlloyError(
                f"Alloy {self.where}: download passed {cap:,} bytes, the most a zip that extracts to "
                f"max_archive_bytes ({self.max_archive_bytes:,}) can be; raise max_archive_bytes if this "
                "export is expected"
            )
        if self.remaining() <= 0:
            raise AlloyError(
                f"Alloy {self.where}: download not finished after {time.monotonic() - self.started:.1f} s "
                f"with {size:,} bytes (download_timeout_seconds {self.timeout_seconds:g}); raise "
                "download_timeout_seconds if this export is expected"
            )


@dataclass(frozen=True)
class Export:
    """What one export produced: the task, when it was asked for, and the CSVs on local disk."""

    task_id: str
    requested_at: datetime
    csv_files: tuple[Path, ...]
    archive_bytes: int
    wait_seconds: float
    download_seconds: float
    processed: int | None = None
    """The root items Alloy said the finished task processed (its last `processState`), which the
    raw asset's row-count check compares with the main table; None when Alloy reported none."""
    total: int | None = None
    """The root items Alloy said the task had to process; None when Alloy reported none."""


class AlloyClient:
    """A small synchronous client for Alloy's four export endpoints."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        poll: PollPolicy = PollPolicy(),
        max_retries: int = MAX_RETRIES,
        request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        download_timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS,
        logger: logging.Logger | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        authorization = bearer_header(api_key)
        self._logger = logger or logging.getLogger(__name__)
        self._poll = poll
        self._sleep = sleep
        self._max_retries = max_retries
        self._request_timeout = request_timeout_seconds
        self._download_timeout = download_timeout_seconds
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": authorization, "Accept": "application/json"},
            timeout=httpx.Timeout(request_timeout_seconds),
            transport=RetryingTransport(
                httpx.HTTPTransport(),
                max_retries=max_retries,
                backoff_seconds=poll.initial_seconds,
                max_wait=poll.max_seconds,
                logger=self._logger,
                sleep=sleep,
            ),
        )

    def __enter__(self) -> AlloyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def _json(self, model: type[_M], method: str, path: str, task_id: str | None = None, **kwargs: Any) -> _M:
        """One request (retried by the transport), its reply decoded into `model`."""
        where = _where(method, path, task_id)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            failure = _transport_failure(where, error)
        else:
            failure = _status_failure(where, response)
            if failure is None:
                return _decode(model, response, where)
        raise failure

    def start_export(self, request: ExportRequest) -> str:
        return self._json(_ExportStarted, "POST", "/api/export", json=request.to_body()).background_task_id

    def task(self, task_id: str) -> _Task:
        """The task as Alloy reports it, its texts redacted: they reach log lines and `AlloyTaskError`."""
        task = self._json(_TaskEnvelope, "GET", f"/api/task/{_segment(task_id)}", task_id).task
        return task.model_copy(
            update={"status": self._redacted(task.status), "error": task.error and self._redacted(task.error)}
        )

    def _redacted(self, text: str) -> str:
        return _redacted(text, self._http.headers.get("Authorization", ""))

    def wait_for(self, task_id: str) -> _ProcessState:
        """Poll the task with growing delays until it completes; raise if it fails or times out.

        Returns the completed task's `processState` (its counts None when Alloy sent none): the
        only word Alloy gives on how many items the export holds. A poll that fails for a
        transient reason (429, 5xx or the network, after the transport's retries) is logged and
        repeated at the next delay: the export may have run for hours.
        """
        started = time.monotonic()
        for delay in self._poll.delays():
            task = self._poll_once(task_id)
            if task is not None and task.status == "Complete":
                return task.process_state or _ProcessState()
            state = task.status if task else "unreachable"
            elapsed = time.monotonic() - started
            if elapsed + delay > self._poll.timeout_seconds:
                raise AlloyError(
                    f"Alloy export task {task_id} still {state} after {elapsed:.0f} s "
                    f"(timeout {self._poll.timeout_seconds:.0f} s)"
                )
            self._sleep(delay)

    def _poll_once(self, task_id: str) -> _Task | None:
        """The task, or None when it could not be read this time; raises if the task ended badly."""
        try:
            task = self.task(task_id)
        except AlloyUnavailable as error:
            self._logger.warning("%s; polling again", error)
            return None
        progress = task.process_state or _ProcessState()
        self._logger.info("Alloy export task %s: %s (%s)", task_id, task.status, progress.describe())
        if task.status in FAILED_STATUSES:
            raise AlloyTaskError(task_id, task.status, task.error or "")
        if task.status != "Complete" and task.status not in IN_PROGRESS_STATUSES:
            self._logger.warning("Alloy export task %s: unknown status %r; polling again", task_id, task.status)
        return task

    def download(self, task_id: str, target: Path, *, max_archive_bytes: int) -> int:
        """Stream the export's zip to `target` in constant memory; return its size in bytes.

        A transfer cut short by the network is resumed with `Range` (restarted if the server
        ignores it), up to `max_retries` times. The whole download, resumes included, must end
        within `download_timeout_seconds` and write at most `max_download_bytes(max_archive_bytes)`.
        """
        export_file = self._json(_ExportFile, "GET", f"/api/export/{_segment(task_id)}/file", task_id)
        path = f"/api/file/{_segment(export_file.file_item_id)}"
        where = _where("GET", path, task_id)
        limits = _DownloadLimits(where, max_archive_bytes, self._download_timeout, time.monotonic())
        target.write_bytes(b"")
        for attempt in range(1, self._max_retries + 2):
            interruption = self._fetch(path, target, limits)
            if interruption is None:
                break
            limits.check(target.stat().st_size)  # a read cut short by the deadline is the deadline's error
            self._logger.warning(
                "Alloy %s: download interrupted (%s) at %d bytes; attempt %d of %d",
                where,
                interruption,
                target.stat().st_size,
                attempt,
                self._max_retries + 1,
            )
        else:
            raise AlloyError(f"Alloy {where}: download interrupted {self._max_retries + 1} times ({interruption})")
        if not zipfile.is_zipfile(target):
            raise ArchiveError(f"Alloy export task {task_id}: downloaded file is not a zip archive")
        return target.stat().st_size

    def _fetch(self, path: str, target: Path, limits: _DownloadLimits) -> str | None:
        """Fetch what `target` still lacks; None once it is whole, else the error that cut it short.

        No read waits past the deadline: the request timeout is shortened to the time left.
        """
        have = target.stat().st_size
        headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
        timeout = httpx.Timeout(max(0.001, min(self._request_timeout, limits.remaining())))
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                _save(response, target, have, limits)
        except RETRYABLE_ERRORS as error:
            return type(error).__name__
        except httpx.TransportError as error:
            failure = _transport_failure(limits.where, error)
        else:
            return None
        raise failure

    def export(self, request: ExportRequest, workdir: Path, *, max_archive_bytes: int) -> Export:
        """Run one export end to end and extract its CSVs under `workdir`."""
        requested_at = datetime.now(UTC)
        task_id = self.start_export(request)
        self._logger.info("Alloy export started: task %s for %s", task_id, request.file_name)
        waiting = time.monotonic()
        finished = self.wait_for(task_id)
        downloading = time.monotonic()
        archive = workdir / ARCHIVE_NAME
        try:  # the zip goes whatever happens: a refused download may be as large as the cap
            size = self.download(task_id, archive, max_archive_bytes=max_archive_bytes)
            try:
                csvs = extract_csvs(archive, workdir / CSV_FOLDER, max_uncompressed_bytes=max_archive_bytes)
            except ArchiveError as error:
                raise ArchiveError(f"Alloy export task {task_id}: {error}") from None
        finally:
            archive.unlink(missing_ok=True)
        return Export(
            task_id=task_id,
            requested_at=requested_at,
            csv_files=tuple(csvs),
            archive_bytes=size,
            wait_seconds=downloading - waiting,
            download_seconds=time.monotonic() - downloading,
            processed=finished.processed,
            total=finished.total,
        )


def _save(response: httpx.Response, target: Path, have: int, limits: _DownloadLimits) -> None:
    """Write a file download to `target`: appended after its `have` bytes if the server resumed.

    A 416 to a resume from the file's full size (`Content-Range: bytes */<have>`) means the
    connection dropped after the last byte: the file is whole (the zip check after the download
    still validates it).
    """
    content_range = response.headers.get("Content-Range", "")
    if have and response.status_code == 416 and content_range == f"bytes */{have}":
        return
    failure = _status_failure(limits.where, response)
    if failure is not None:
        raise failure
    resumed = response.status_code == 206 and content_range.startswith(f"bytes {have}-")
    if response.status_code != 200 and not resumed:
        raise AlloyReplyError(
            f"Alloy {limits.where}: unexpected HTTP {response.status_code} to a request from byte {have}"
        )
    size = have if resumed else 0
    with target.open("ab" if resumed else "wb") as sink:
        for chunk in response.iter_bytes():  # as received: what arrived before a reset is kept
            size += len(chunk)
            limits.check(size)
            sink.write(chunk)


def _same_api(left: httpx.URL, right: httpx.URL) -> bool:
    return (left.scheme, left.host, left.port, left.path.rstrip("/")) == (
        right.scheme,
        right.host,
        right.port,
        right.path.rstrip("/"),
    )


def checked_api_url(base_url: str) -> str:
    """`base_url`, if the API key may travel there: the URL the operator set in the code location's
    environment (`ALLOY_API_URL`, else Alloy's own), over https unless it is this machine.

    Run config can set any resource field, and anyone who reaches Dagster's launchpad can launch a
    run: a `base_url` of their own would receive `Authorization: Bearer <key>`. The environment is
    the operator's, so it decides where the key goes, and a run asking for another host fails
    before any request (the key is not even read).
    """
    configured = os.environ.get(API_URL_VARIABLE, DEFAULT_API_URL)
    try:
        url, allowed = httpx.URL(base_url), httpx.URL(configured)
    except httpx.InvalidURL as error:
        raise AlloyError(f"alloy.base_url {base_url!r} is not a URL: {error}") from None
    if not _same_api(url, allowed):
        raise AlloyError(
            f"alloy.base_url {base_url!r} is not the Alloy API URL configured in {API_URL_VARIABLE} "
            f"({configured!r}); the API key is sent only there. Set {API_URL_VARIABLE} in the code "
            "location's environment instead of the run's config."
        )
    if url.scheme != "https" and not (url.scheme == "http" and is_loopback(url.host)):
        raise AlloyError(
            f"{API_URL_VARIABLE} {configured!r}: the API key travels only over https (plain http only to this machine)"
        )
    return base_url


class AlloyResource(dg.ConfigurableResource):
    """Alloy's export API, for one council's tenancy."""

    base_url: str = Field(
        default=DEFAULT_API_URL,
        description=(
            f"Base URL of the Alloy API. Must be the URL set in {API_URL_VARIABLE} (or Alloy's own when unset): "
            "the API key is sent nowhere else, whatever a run's config asks."
        ),
    )
    api_key: str | None = Field(
        default=None,
        description=(
            'Alloy API key, sent only as a Bearer token. Set it as dg.EnvVar("ALLOY_API_KEY"), never '
            "as a literal: Dagster shows a literal value in its UI, an EnvVar only by name. "
            "Surrounding whitespace is ignored."
        ),
        repr=False,
        json_schema_extra={"dagster__is_secret": True},
    )
    api_key_secret_id: str | None = Field(
        default=None,
        description="AWS Secrets Manager id of the key (ALLOY_API_KEY_SECRET_ID), used when api_key is unset.",
    )
    secrets: SecretsManagerResource | None = Field(
        default=None,
        description=(
            "Secrets Manager access for api_key_secret_id (default: the AWS environment). Created only when "
            "needed: dagster-aws marks it beta, and building it would warn on every load of the code location."
        ),
    )
    poll_initial_seconds: float = Field(
        default=PollPolicy.initial_seconds, gt=0, description="First delay between task polls."
    )
    poll_growth: float = Field(default=PollPolicy.growth, ge=1, description="Factor by which the poll delay grows.")
    poll_max_seconds: float = Field(
        default=PollPolicy.max_seconds, gt=0, description="Cap on the delay between task polls."
    )
    task_timeout_seconds: float = Field(
        default=PollPolicy.timeout_seconds,
        gt=0,
        description="Give up on an export task after this long; transient poll failures are retried until then.",
    )
    max_retries: int = Field(
        default=MAX_RETRIES,
        ge=0,
        description=(
            "Retries of a request after 429, 5xx or a connection error (POST /api/export only after "
            "429 or a connection that never opened), and of an interrupted download."
        ),
    )
    request_timeout_seconds: float = Field(
        default=REQUEST_TIMEOUT_SECONDS, gt=0, description="Timeout of one HTTP request (each read of a download)."
    )
    download_timeout_seconds: float = Field(
        default=DOWNLOAD_TIMEOUT_SECONDS,
        gt=0,
        description=(
            "Give up on downloading an export's zip after this long, resumes included (default 2 h): "
            "the request timeout bounds each read only, so a server trickling bytes would never trip it."
        ),
    )
    max_archive_bytes: int = Field(
        default=10 * 1024**3,
        gt=0,
        description=(
            "Refuse archives that would extract to more than this (default 10 GiB, several times the "
            "largest benchmarked export; the zip and its CSVs sit on the worker's local disk). A download "
            "stops once it passes this plus 1 % and 1 MiB, the most such a zip can be."
        ),
    )

    ENVIRONMENT: ClassVar[dict[str, str]] = {"base_url": API_URL_VARIABLE, "api_key_secret_id": SECRET_ID_VARIABLE}
    """The fields the code location sets from the environment (README, "Configuration"), besides
    `api_key` (`key_from_environment`)."""

    @staticmethod
    def key_from_environment() -> bool:
        """Whether the code location sets `api_key` from ALLOY_API_KEY: only when no secret id is set."""
        return SECRET_ID_VARIABLE not in os.environ

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        held_environment(self, self.ENVIRONMENT | ({"api_key": KEY_VARIABLE} if self.key_from_environment() else {}))

    def _key(self) -> str:
        if self.api_key and self.api_key.strip():
            return self.api_key
        if self.api_key_secret_id:
            secrets = self.secrets or SecretsManagerResource()
            secret = secrets.get_client().get_secret_value(SecretId=self.api_key_secret_id)
            return secret["SecretString"]
        raise AlloyError("no Alloy API key configured: set ALLOY_API_KEY or ALLOY_API_KEY_SECRET_ID")

    def export(self, request: ExportRequest, workdir: Path, logger: logging.Logger) -> Export:
        """Export `request` and extract its CSVs under `workdir`, logging progress to `logger`."""
        poll = PollPolicy(
            initial_seconds=self.poll_initial_seconds,
            growth=self.poll_growth,
            max_seconds=self.poll_max_seconds,
            timeout_seconds=self.task_timeout_seconds,
        )
        url = checked_api_url(self.base_url)
        with AlloyClient(
            url,
            self._key(),
            poll=poll,
            max_retries=self.max_retries,
            request_timeout_seconds=self.request_timeout_seconds,
            download_timeout_seconds=self.download_timeout_seconds,
            logger=logger,
        ) as client:
            return client.export(request, workdir, max_archive_bytes=self.max_archive_bytes)
