"""The simulator's HTTP side: routes, Bearer auth, rate limits, scripted faults, request
recording, and the export tasks whose zips are built in background threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import hmac
import json
import math
import re
import secrets
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from alloy_pipeline.alloy.simulator.dataset import Dataset, Snapshot
from alloy_pipeline.alloy.simulator.datasets import demo_dataset
from alloy_pipeline.alloy.simulator.export import (
    ExportCancelled,
    ExportPlan,
    Progress,
    plan_export,
    write_export,
    write_zip_bomb,
)
from alloy_pipeline.alloy.simulator.request import BadRequestError
from alloy_pipeline.alloy.simulator.synthesis import dataset_for_queries

FaultKind = Literal[
    "status",
    "disconnect",
    "reply",
    "truncated_download",
    "reset_download",
    "dropped_after_last_byte",
    "slow_download",
    "endless_download",
    "failed_task",
    "deleted_task",
    "corrupt_zip",
    "zip_bomb",
    "slow_task",
    "held_task",
    "miscounted_task",
    "range_ignored",
    "wrong_content_range",
]
WaitForm = Literal["seconds", "http_date", "epoch", "iso"]
Endpoint = Literal["export", "task", "export_file", "file", "any"]
_REQUEST_FAULTS = ("status", "disconnect", "reply")
_DOWNLOAD_FAULTS = (
    "truncated_download",
    "reset_download",
    "dropped_after_last_byte",
    "slow_download",
    "endless_download",
)
_HALF_DOWNLOAD_FAULTS = ("truncated_download", "reset_download")
_CHUNKED_DOWNLOAD_FAULTS = ("dropped_after_last_byte", "endless_download")
_ARCHIVE_FAULTS = ("corrupt_zip", "zip_bomb")
_RANGE_FAULTS = ("range_ignored", "wrong_content_range")


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for the next `times` matching requests (or exports).

    - `status`: answer requests to `endpoint` with HTTP `status` (429 may carry `retry_after`
      and `rate_limit_reset` seconds, written as `wait_form` says: the seconds themselves, or the
      moment they end as an HTTP date, epoch seconds or ISO 8601 in UTC, never rounded later than
      it is), and `body` if given,
      where `{authorization}` stands for the request's own header (a proxy that echoes what it received).
    - `disconnect`: close the connection to `endpoint` without any response.
    - `reply`: answer requests to `endpoint` with HTTP 200 and `body` as `content_type`, whatever
      they asked (a bad id, an unknown task status, an HTML page from a proxy).
    - `truncated_download` / `reset_download`: the next downloads of a file stop halfway, the
      connection closed / reset (the `Content-Length` announced the whole file).
    - `dropped_after_last_byte`: the next downloads of a file send all of it, chunked, then close
      the connection before the chunked body's end: the client has every byte but an error, and
      its resume from the full size gets 416, as from any range that starts at or past the end.
    - `slow_download`: the next downloads of a file trickle it in 1 KiB pieces, `seconds` apart
      (every piece arrives well within a read timeout).
    - `endless_download`: the next downloads of a file send it, chunked, then zeros without end,
      until the client hangs up or the simulator stops.
    - `range_ignored`: the next resumed downloads (a request with `Range`) get the whole file,
      with HTTP 200, as from a server that does not do ranges.
    - `wrong_content_range`: the next resumed downloads get HTTP 206 and the file from its first
      byte, `Content-Range` saying so, whatever range they asked for.
    - `failed_task` / `deleted_task`: the next exports' tasks end Failed (with `message`, where
      `{authorization}` stands for the polling request's own header, as in `status` bodies) / Deleted.
    - `corrupt_zip`: the next exports' file endpoint serves a truncated zip.
    - `zip_bomb`: the next exports' file is a small zip that expands a thousandfold, to zeros.
    - `slow_task`: the next exports' tasks take `seconds`.
    - `held_task`: the next exports' builds stop once `rows` root items are processed (0: before
      the first; never, if the export has fewer) until `release` is set or the simulator stops;
      the task reports Running meanwhile. Tests wait on a task's state with it, not with sleeps.
    - `miscounted_task`: the next exports' tasks report `miscount` more root items in their
      `processState` (`processed` and `total`; negative: fewer) than their zips hold, as when an
      item is deleted between Alloy counting and writing it.
    """

    kind: FaultKind
    endpoint: Endpoint = "any"
    status: int = 503
    times: int = 1
    retry_after: float | None = None
    rate_limit_reset: float | None = None
    wait_form: WaitForm = "seconds"
    message: str = "Simulated export failure"
    seconds: float = 1.0
    body: str = ""
    content_type: str = "application/json"
    miscount: int = 1
    rows: int = 0
    release: threading.Event | None = None

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError("a fault applies at least once")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("a status fault needs a 4xx or 5xx status")
        if self.kind in ("slow_task", "slow_download") and self.seconds <= 0:
            raise ValueError(f"a {self.kind} fault takes more than 0 seconds")
        if self.kind == "miscounted_task" and self.miscount == 0:
            raise ValueError("a miscounted_task fault miscounts by at least one item")
        if self.kind == "held_task" and (self.release is None or self.rows < 0):
            raise ValueError("a held_task fault needs a release event and a row count of 0 or more")


@dataclass
class _Pending:
    fault: Fault
    remaining: int


TaskStatus = Literal["Queued", "Running", "Complete", "Failed", "Deleted"]


class _HeldProgress(Progress):
    """The progress of a build that a `held_task` fault stops once `rows` root items are processed."""

    def __init__(self, held: Fault, cancel: threading.Event) -> None:
        assert held.release is not None, "checked by Fault"
        super().__init__()
        self._rows: int | None = held.rows
        self._release = held.release
        self._cancel = cancel

    def start(self, total: int, passes: int) -> None:
        super().start(total, passes)
        self._hold()

    def wrote_row(self) -> None:
        super().wrote_row()
        self._hold()

    def _hold(self) -> None:
        if self.processed != self._rows:
            return
        self._rows = None  # once: `processed` stays at a count for a row's every pass
        while not self._release.wait(_SHUTDOWN_POLL_SECONDS):
            if self._cancel.is_set():
                raise ExportCancelled("a held build")


@dataclass(eq=False)
class _Task:
    """An export task, and the background build of its zip."""

    id: str
    file_id: str
    archive: Path
    started: float
    seconds: float
    outcome: Literal["Complete", "Failed", "Deleted"]
    error: str | None
    archive_fault: FaultKind | None  # one of _ARCHIVE_FAULTS
    miscount: int = 0  # added to the root items counted: a miscounted_task fault
    progress: Progress = field(default_factory=Progress)
    cancel: threading.Event = field(default_factory=threading.Event)
    built: threading.Event = field(default_factory=threading.Event)
    build_error: str | None = None  # set when the zip could not be written
    thread: threading.Thread | None = None

    def build(self, snapshot: Snapshot, plan: ExportPlan, bom: bool) -> None:
        """Write the zip: the body of `thread`. Never raises, so a task never stays Running."""
        try:
            if self.archive_fault == "zip_bomb":
                write_zip_bomb(self.archive, plan, progress=self.progress)
            else:
                write_export(snapshot, plan, self.archive, bom=bom, progress=self.progress, cancel=self.cancel)
        except ExportCancelled:
            self.build_error = "the simulator stopped before the export was built"
            self.archive.unlink(missing_ok=True)
        except Exception as error:  # a simulator bug or a full disk: fail the task, visibly
            self.build_error = f"the simulator could not build the export: {error!r}"
            self.archive.unlink(missing_ok=True)
        finally:
            self.built.set()

    def state(self, now: float) -> tuple[TaskStatus, int, int, str | None]:
        """Status, processed rows, total rows, and the error of a task that ended badly.

        The task follows the slower of two clocks: its build, and the `seconds` it is meant to
        take, counted from the request (Queued for their first quarter). It ends once both have
        run out: only then does the outcome (Complete, or a scripted Failed/Deleted) show.
        """
        total = max(0, self.progress.total + self.miscount) if self.progress.total is not None else 0
        fraction = min(1.0, (now - self.started) / self.seconds) if self.seconds > 0 else 1.0
        if self.built.is_set():
            if self.build_error:
                return "Failed", 0, total, self.build_error
            if fraction >= 1:
                return self.outcome, total if self.outcome == "Complete" else 0, total, self.error
        if self.progress.total is None or fraction < 0.25:
            return "Queued", 0, total, None
        return "Running", min(self.progress.processed, int(total * fraction)), total, None


class _RateWindow:
    """A fixed window of `limit` requests per `seconds`, reported in X-Rate-Limit-* headers."""

    def __init__(self, limit: int, seconds: float) -> None:
        self._limit = limit
        self._seconds = seconds
        self._start = time.monotonic()
        self._used = 0

    def hit(self) -> tuple[int, float]:
        """Count one request; the requests left (negative: over the limit) and seconds to reset."""
        now = time.monotonic()
        if now - self._start >= self._seconds:
            self._start, self._used = now, 0
        self._used += 1
        return self._limit - self._used, self._seconds - (now - self._start)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it (header names lower-cased; body parsed if JSON)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any | None


@dataclass(frozen=True)
class _Reply:
    status: int
    payload: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None  # sent instead of `payload` as JSON
    file: Path | None = None
    offset: int = 0
    length: int = 0
    download: Fault | None = None  # one of _DOWNLOAD_FAULTS, applied to sending `file`
    disconnect: bool = False


_ROUTES: tuple[tuple[Endpoint, str, re.Pattern[str]], ...] = (
    ("export", "POST", re.compile(r"/api/export")),
    ("task", "GET", re.compile(r"/api/task/([^/]+)")),
    ("export_file", "GET", re.compile(r"/api/export/([^/]+)/file")),
    ("file", "GET", re.compile(r"/api/file/([^/]+)")),
)
_CHUNK = 64 * 1024
_SLOW_PIECE = 1024
_RANGE = re.compile(r"bytes=(\d+)-")
_SHUTDOWN_POLL_SECONDS = 0.01  # how soon stop() returns; tests start and stop a server each


def _route(path: str) -> tuple[Endpoint | None, str, str | None]:
    """The endpoint a path names, the method it takes, and the id in it."""
    for endpoint, method, pattern in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return endpoint, method, match.group(1) if match.groups() else None
    return None, "", None


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status, {"errorCode": code, "message": message}, headers or {})


def _json_or_none(body: bytes) -> Any | None:
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _object_id() -> str:
    return secrets.token_hex(12)


def _seconds_header(seconds: float) -> str:
    return f"{seconds:g}"


def _wait_header(seconds: float, form: WaitForm) -> str:
    """A wait of `seconds` as `Retry-After` / `X-Rate-Limit-Reset` may write it."""
    if form == "seconds":
        return _seconds_header(seconds)
    ends = time.time() + seconds
    if form == "epoch":
        return f"{math.floor(ends * 1000) / 1000:.3f}"
    moment = datetime.fromtimestamp(ends, UTC)
    if form == "http_date":
        return email.utils.format_datetime(moment, usegmt=True)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlloySimulator:
    """Alloy's export API on loopback: `/api/export`, `/api/task/{id}`, `/api/export/{id}/file`
    and `/api/file/{id}`, with Bearer auth, rate-limit headers and scripted faults. The file
    endpoint honours `Range: bytes=<start>-`, so an interrupted download can resume, and answers
    416 (`Content-Range: bytes */<size>`) to a range that starts at or past the end, as real servers do.

    `POST /api/export` answers at once, as Alloy does: it snapshots the data, and a background
    thread streams the export into a temporary zip (so a million rows never sit in memory). The
    task reports Queued and Running, with rows processed, until the zip is written and
    `task_seconds` have passed since the request; then it is Complete.
    """

    def __init__(
        self,
        dataset: Dataset | None = None,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        task_seconds: float = 0.0,
        bom: bool = False,
        rate_limit: int = 10_000,
        rate_limit_window_seconds: float = 60.0,
    ) -> None:
        if not api_key:
            raise ValueError("the simulator needs an API key")
        self._dataset = dataset if dataset is not None else demo_dataset()
        self._api_key = api_key
        self._address = (host, port)
        self._task_seconds = task_seconds
        self._bom = bom
        self._lock = threading.Lock()
        self._rate = _RateWindow(rate_limit, rate_limit_window_seconds)
        self._faults: list[_Pending] = []
        self._tasks: dict[str, _Task] = {}
        self._files: dict[str, _Task] = {}
        self._requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> AlloySimulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._workdir = tempfile.TemporaryDirectory(prefix="alloy-simulator-", ignore_cleanup_errors=True)
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
            name="alloy-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cancel the exports still being built, and delete every zip."""
        if self._server is None:
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        with self._lock:  # from here on, a request still being handled cannot start a build
            workdir, self._workdir = self._workdir, None
            tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel.set()
        for task in tasks:  # each build checks `cancel` between rows, so this is quick
            if task.thread is not None:
                task.thread.join()
        assert workdir is not None
        workdir.cleanup()
        self._server = self._thread = None

    def __enter__(self) -> AlloySimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # what tests use ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start()")
        return f"http://{self._address[0]}:{self._server.server_port}"

    @property
    def dataset(self) -> Dataset:
        return self._dataset

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def inject(self, fault: Fault) -> None:
        """Queue `fault`; faults of one kind apply in the order they were injected."""
        with self._lock:
            self._faults.append(_Pending(fault, fault.times))

    # request handling ----------------------------------------------------------------------

    def _serve(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one HTTP request (called from the handler threads)."""
        parts = urlsplit(target)
        endpoint, allowed, argument = _route(parts.path)
        with self._lock:
            recorded = RecordedRequest(method, parts.path, parts.query, headers, _json_or_none(body))
            self._requests.append(recorded)
            remaining, reset = self._rate.hit()
            fault = self._take_fault(_REQUEST_FAULTS, endpoint or "unrouted")
        reset_header = str(math.ceil(reset))
        if fault is not None:
            reply = _fault_reply(fault, headers.get("authorization", ""))
        elif remaining < 0:
            reply = _error(429, "TooManyRequests", "rate limit exceeded", {"Retry-After": reset_header})
        elif not self._authorised(headers):
            reply = _error(401, "Unauthorised", "send the API key as 'Authorization: Bearer <key>'")
        elif endpoint is None:
            reply = _error(404, "NotFound", "no such endpoint")
        elif method != allowed:
            reply = _error(405, "MethodNotAllowed", f"use {allowed}")
        else:
            reply = self._call(endpoint, argument, body, headers)
        rate_headers = {"X-Rate-Limit-Remaining": str(max(0, remaining)), "X-Rate-Limit-Reset": reset_header}
        return dataclasses.replace(reply, headers={**rate_headers, **reply.headers})

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        expected = f"Bearer {self._api_key}".encode()
        return hmac.compare_digest(headers.get("authorization", "").encode(), expected)

    def _call(self, endpoint: Endpoint, argument: str | None, body: bytes, headers: Mapping[str, str]) -> _Reply:
        if endpoint == "export":
            return self._start_export(body)
        assert argument is not None
        if endpoint == "task":
            return self._task_status(argument, headers.get("authorization", ""))
        if endpoint == "export_file":
            return self._export_file(argument)
        return self._file(argument, headers.get("range"))

    def _start_export(self, body: bytes) -> _Reply:
        requested = time.monotonic()
        raw = _json_or_none(body)
        if raw is None:
            return _error(400, "InvalidRequest", "the body must be a JSON export request")
        try:
            plan = plan_export(self._dataset.designs, raw)
        except BadRequestError as error:
            return _error(400, "InvalidRequest", str(error))
        snapshot = self._dataset.snapshot()  # the export holds the data as it is now
        with self._lock:
            if self._workdir is None:
                return _error(503, "ServiceUnavailable", "the simulator is stopping")
            ending = self._take_fault(("failed_task", "deleted_task"))
            slow = self._take_fault(("slow_task",))
            miscounted = self._take_fault(("miscounted_task",))
            held = self._take_fault(("held_task",))
            task_id = _object_id()
            cancel = threading.Event()
            task = _Task(
                id=task_id,
                file_id=_object_id(),
                archive=Path(self._workdir.name) / f"{task_id}.zip",
                started=requested,
                seconds=slow.seconds if slow else self._task_seconds,
                outcome=_outcome(ending),
                error=ending.message if ending else None,
                archive_fault=_kind(self._take_fault(_ARCHIVE_FAULTS)),
                miscount=miscounted.miscount if miscounted else 0,
                progress=_HeldProgress(held, cancel) if held else Progress(),
                cancel=cancel,
            )
            task.thread = threading.Thread(
                target=task.build,
                args=(snapshot, plan, self._bom),
                name=f"alloy-export-{task_id}",
                daemon=True,
            )
            task.thread.start()
            self._tasks[task.id] = task
            self._files[task.file_id] = task
        return _Reply(200, {"backgroundTaskId": task_id})

    def _task_status(self, task_id: str, authorization: str) -> _Reply:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return _error(404, "NotFound", f"no task {task_id}")
        status, processed, total, error = task.state(time.monotonic())
        state: dict[str, Any] = {
            "id": task.id,
            "status": status,
            "processState": {"processed": processed, "total": total},
        }
        if error:
            state["error"] = error.replace("{authorization}", authorization)
        return _Reply(200, {"task": state})

    def _export_file(self, task_id: str) -> _Reply:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return _error(404, "NotFound", f"no task {task_id}")
        status, *_ = task.state(time.monotonic())
        if status != "Complete":
            return _error(409, "TaskNotComplete", f"task {task_id} is {status}")
        return _Reply(200, {"fileItemId": task.file_id})

    def _file(self, file_id: str, range_header: str | None) -> _Reply:
        with self._lock:
            task = self._files.get(file_id)
        if task is None:
            return _error(404, "NotFound", f"no file {file_id}")
        if not task.built.is_set() or task.build_error:
            return _error(409, "TaskNotComplete", f"the file of task {task.id} is not written")
        size = task.archive.stat().st_size
        length = size // 2 if task.archive_fault == "corrupt_zip" else size
        asked = _RANGE.fullmatch(range_header or "")
        start = int(asked.group(1)) if asked else 0
        with self._lock:
            misranged = _kind(self._take_fault(_RANGE_FAULTS, "file")) if asked else None
        if misranged is not None:
            start = 0
        elif start >= length > 0:  # as real servers answer a range that starts at or past the end
            return _error(
                416, "RangeNotSatisfiable", f"the file has {length} bytes", {"Content-Range": f"bytes */{length}"}
            )
        with self._lock:
            download = self._take_fault(_DOWNLOAD_FAULTS, "file")
        headers = {"Content-Type": "application/zip", "Accept-Ranges": "bytes"}
        ranged = bool(start) or misranged == "wrong_content_range"
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{length - 1}/{length}"
        return _Reply(
            206 if ranged else 200,
            headers=headers,
            file=task.archive,
            offset=start,
            length=length - start,
            download=download,
        )

    def _take_fault(self, kinds: Sequence[str], endpoint: str | None = None) -> Fault | None:
        """Use up one application of the oldest queued fault of `kinds` aimed at `endpoint`
        (None for the export-level kinds, which have no endpoint). Call with `_lock` held."""
        for pending in self._faults:
            fault = pending.fault
            if fault.kind not in kinds:
                continue
            if endpoint is not None and fault.endpoint not in ("any", endpoint):
                continue
            pending.remaining -= 1
            if not pending.remaining:
                self._faults.remove(pending)
            return fault
        return None


def _kind(fault: Fault | None) -> FaultKind | None:
    return fault.kind if fault else None


def _outcome(ending: Fault | None) -> Literal["Complete", "Failed", "Deleted"]:
    if ending is None:
        return "Complete"
    return "Failed" if ending.kind == "failed_task" else "Deleted"


def _fault_reply(fault: Fault, authorization: str) -> _Reply:
    if fault.kind == "disconnect":
        return _Reply(0, disconnect=True)
    if fault.kind == "reply":
        return _Reply(200, headers={"Content-Type": fault.content_type}, content=fault.body.encode())
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = _wait_header(fault.retry_after, fault.wait_form)
    if fault.rate_limit_reset is not None:
        headers["X-Rate-Limit-Reset"] = _wait_header(fault.rate_limit_reset, fault.wait_form)
    if fault.body:
        echoed = fault.body.replace("{authorization}", authorization)
        return _Reply(fault.status, headers={"Content-Type": fault.content_type, **headers}, content=echoed.encode())
    code = "TooManyRequests" if fault.status == 429 else "SimulatedFault"
    return _error(fault.status, code, f"simulated HTTP {fault.status}", headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: AlloySimulator) -> None:
        super().__init__(address, _Handler)
        self.simulator = simulator
        self.stopping = threading.Event()  # ends endless downloads


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets the simulator answer it, writes the reply (or hangs up)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; don't wait 40 ms
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the demo read `AlloySimulator.requests` instead of a log."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.simulator._serve(self.command, self.path, headers, body)
        if reply.disconnect:
            self.close_connection = True
            return
        fault = _kind(reply.download)
        try:
            if reply.file is None:
                self._send(reply)
            else:
                self._send_file(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if fault == "reset_download":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # with a zero linger: a TCP reset, not an orderly close

    def _send_head(self, status: int, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json; charset=utf-8", **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, reply: _Reply) -> None:
        content = reply.content if reply.content is not None else json.dumps(reply.payload or {}).encode()
        self._send_head(reply.status, {**reply.headers, "Content-Length": str(len(content))})
        self.wfile.write(content)

    def _send_file(self, reply: _Reply) -> None:
        """Send `length` bytes of `file` from `offset`, as its download fault, if any, dictates."""
        assert reply.file is not None
        kind = _kind(reply.download)
        pause = reply.download.seconds if reply.download and kind == "slow_download" else 0.0
        chunked = kind in _CHUNKED_DOWNLOAD_FAULTS  # and never terminated: see the Fault docstring
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(reply.length)}
        if kind is not None:  # said, so that no client sends its next request down this connection
            framing["Connection"] = "close"
        self._send_head(reply.status, {**reply.headers, **framing})
        write = self._write_chunk if chunked else self.wfile.write
        piece = _SLOW_PIECE if pause else _CHUNK
        with reply.file.open("rb") as source:
            source.seek(reply.offset)
            left = reply.length // 2 if kind in _HALF_DOWNLOAD_FAULTS else reply.length
            while left and (chunk := source.read(min(piece, left))):
                if pause and left < reply.length:
                    time.sleep(pause)
                write(chunk)
                left -= len(chunk)
        while kind == "endless_download" and not self.server.stopping.is_set():
            write(bytes(_CHUNK))

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the demo dataset in the foreground until Ctrl-C or SIGTERM; with `--aqs-dir`, also
    designs synthesized for the folder's AQS files that the demo does not know."""
    parser = argparse.ArgumentParser(description="Run the local Alloy API simulator (demo dataset).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", required=True, help="the Bearer key clients must send")
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo dataset")
    parser.add_argument("--task-seconds", type=float, default=2.0, help="how long each export task takes")
    parser.add_argument("--bom", action="store_true", help="start every CSV with a UTF-8 BOM")
    parser.add_argument(
        "--aqs-dir", type=Path, help="also serve these AQS files (*.json), with designs made up from the files"
    )
    args = parser.parse_args(argv)
    dataset = demo_dataset(args.seed)
    if args.aqs_dir is not None:
        files = sorted(args.aqs_dir.glob("*.json"))
        dataset = dataset_for_queries((json.loads(path.read_text(encoding="utf-8-sig")) for path in files), dataset)
    simulator = AlloySimulator(
        dataset,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        task_seconds=args.task_seconds,
        bom=args.bom,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())  # clean up temp files on kill
    with simulator:
        print(f"Alloy simulator serving the demo dataset at {simulator.url} (Ctrl-C to stop)", flush=True)
        with suppress(KeyboardInterrupt):
            stopped.wait()
