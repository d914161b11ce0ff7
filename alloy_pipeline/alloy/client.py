"""The Alloy export API: start an export, wait for its task, stream the zip to disk.

The API key travels only in the `Authorization` header. Nothing here puts it in a URL, a log
line, an exception or a file; the resource's repr hides it too.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import dagster as dg
import httpx
from dagster_aws.secretsmanager import SecretsManagerResource
from pydantic import BaseModel, ConfigDict, Field

from alloy_pipeline.alloy.archive import ArchiveError, extract_csvs
from alloy_pipeline.alloy.transport import RetryingTransport
from alloy_pipeline.aqs import ExportRequest

TaskStatus = Literal["Queued", "Running", "Complete", "Failed", "Deleted"]


class AlloyError(RuntimeError):
    """The Alloy API refused or failed an export."""


class AlloyTaskError(AlloyError):
    """An export task that Alloy ended as `Failed` or `Deleted`."""

    def __init__(self, task_id: str, status: str, message: str) -> None:
        super().__init__(f"Alloy export task {task_id} ended {status}: {message or 'no message given'}")
        self.task_id = task_id
        self.status = status


class _ProcessState(BaseModel):
    processed: int = 0
    total: int = 0


class _Task(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: TaskStatus
    error: str | None = None
    process_state: _ProcessState = Field(default_factory=_ProcessState, alias="processState")


class _TaskEnvelope(BaseModel):
    task: _Task


class _ExportStarted(BaseModel):
    background_task_id: str = Field(alias="backgroundTaskId", min_length=1)


class _ExportFile(BaseModel):
    file_item_id: str = Field(alias="fileItemId", min_length=1)


@dataclass(frozen=True)
class PollPolicy:
    """How often to ask about a task: start fast for short exports, back off for long ones."""

    initial_seconds: float = 1.0
    growth: float = 1.5
    max_seconds: float = 30.0
    timeout_seconds: float = 3 * 3600.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_seconds
        while True:
            yield delay
            delay = min(self.max_seconds, delay * self.growth)


@dataclass(frozen=True)
class Export:
    """What one export produced: the task, when it was asked for, and the CSVs on local disk."""

    task_id: str
    requested_at: datetime
    csv_files: tuple[Path, ...]
    archive_bytes: int
    wait_seconds: float
    download_seconds: float


class AlloyClient:
    """A small synchronous client for Alloy's four export endpoints."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        poll: PollPolicy = PollPolicy(),
        max_retries: int = 5,
        request_timeout_seconds: float = 60.0,
        logger: logging.Logger | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise AlloyError("no Alloy API key configured (set ALLOY_API_KEY)")
        self._logger = logger or logging.getLogger(__name__)
        self._poll = poll
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
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

    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as error:
            raise AlloyError(f"Alloy {method} {path}: {type(error).__name__}: {error}") from None
        if response.is_error:
            detail = response.text[:500]
            raise AlloyError(f"Alloy {method} {path}: HTTP {response.status_code}: {detail}")
        return response

    def start_export(self, request: ExportRequest) -> str:
        response = self._call("POST", "/api/export", json=request.to_body())
        return _ExportStarted.model_validate(response.json()).background_task_id

    def task(self, task_id: str) -> _Task:
        return _TaskEnvelope.model_validate(self._call("GET", f"/api/task/{task_id}").json()).task

    def wait_for(self, task_id: str) -> None:
        """Poll the task with growing delays until it completes; raise if it fails or times out."""
        started = time.monotonic()
        for delay in self._poll.delays():
            task = self.task(task_id)
            progress = task.process_state
            self._logger.info(
                "Alloy export task %s: %s (%d/%d processed)",
                task_id,
                task.status,
                progress.processed,
                progress.total,
            )
            if task.status == "Complete":
                return
            if task.status in ("Failed", "Deleted"):
                raise AlloyTaskError(task_id, task.status, task.error or "")
            elapsed = time.monotonic() - started
            if elapsed + delay > self._poll.timeout_seconds:
                raise AlloyError(
                    f"Alloy export task {task_id} still {task.status} after {elapsed:.0f} s "
                    f"(timeout {self._poll.timeout_seconds:.0f} s)"
                )
            self._sleep(delay)

    def download(self, task_id: str, target: Path) -> int:
        """Stream the export's zip to `target` in constant memory; return its size in bytes."""
        file_item_id = _ExportFile.model_validate(
            self._call("GET", f"/api/export/{task_id}/file").json()
        ).file_item_id
        path = f"/api/file/{file_item_id}"
        try:
            with self._http.stream("GET", path) as response:
                if response.is_error:
                    response.read()
                    raise AlloyError(f"Alloy GET {path}: HTTP {response.status_code}: {response.text[:500]}")
                size = 0
                with target.open("wb") as sink:
                    for chunk in response.iter_bytes(1 << 20):
                        sink.write(chunk)
                        size += len(chunk)
        except httpx.TransportError as error:
            raise AlloyError(f"Alloy GET {path}: download interrupted: {type(error).__name__}") from None
        if not zipfile.is_zipfile(target):
            raise ArchiveError(f"Alloy export task {task_id}: downloaded file is not a zip archive")
        return size

    def export(self, request: ExportRequest, workdir: Path, *, max_archive_bytes: int) -> Export:
        """Run one export end to end and extract its CSVs under `workdir`."""
        requested_at = datetime.now(timezone.utc)
        task_id = self.start_export(request)
        self._logger.info("Alloy export started: task %s for %s", task_id, request.file_name)
        waiting = time.monotonic()
        self.wait_for(task_id)
        downloading = time.monotonic()
        archive = workdir / f"{task_id}.zip"
        size = self.download(task_id, archive)
        try:
            csvs = extract_csvs(archive, workdir / task_id, max_uncompressed_bytes=max_archive_bytes)
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
        )


class AlloyApi(dg.ConfigurableResource):
    """Alloy's export API, for one council's tenancy."""

    base_url: str = Field(
        default="https://api.uk.alloyapp.io", description="Base URL of the Alloy API (ALLOY_API_URL)."
    )
    api_key: str | None = Field(
        default=None, description="Alloy API key (ALLOY_API_KEY); sent only as a Bearer token.", repr=False
    )
    api_key_secret_id: str | None = Field(
        default=None,
        description="AWS Secrets Manager id of the key (ALLOY_API_KEY_SECRET_ID), used when api_key is unset.",
    )
    secrets: SecretsManagerResource | None = Field(
        default=None, description="Secrets Manager access for api_key_secret_id (default: the AWS environment)."
    )
    poll_initial_seconds: float = Field(default=1.0, description="First delay between task polls.")
    poll_growth: float = Field(default=1.5, description="Factor by which the poll delay grows.")
    poll_max_seconds: float = Field(default=30.0, description="Cap on the delay between task polls.")
    task_timeout_seconds: float = Field(
        default=3 * 3600.0, description="Give up on an export task after this long."
    )
    max_retries: int = Field(default=5, description="Retries for 429, 5xx and connection errors.")
    request_timeout_seconds: float = Field(default=60.0, description="Timeout of one HTTP request.")
    max_archive_bytes: int = Field(
        default=50 * 1024**3, description="Refuse archives that would extract to more than this."
    )

    def _key(self) -> str:
        if self.api_key:
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
        with AlloyClient(
            self.base_url,
            self._key(),
            poll=poll,
            max_retries=self.max_retries,
            request_timeout_seconds=self.request_timeout_seconds,
            logger=logger,
        ) as client:
            return client.export(request, workdir, max_archive_bytes=self.max_archive_bytes)

