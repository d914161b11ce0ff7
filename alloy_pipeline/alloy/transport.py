"""An httpx transport that retries what Alloy tells us to retry.

Alloy rate-limits per API key and has the odd 5xx; a council's nightly run should ride those out
instead of failing. Retrying at the transport keeps the client's code about the export itself.

A request that changes something (`POST /api/export` starts an export) is retried only where the
server cannot have acted on it: a 429 (refused before any work) or a connection that never
opened. After a 5xx or a dropped connection the export may be running, and a retry would start
a second one. Errors raised before anything is sent (an invalid header, an unsupported URL) are
never retried: they would only fail the same way again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport errors of the network or the server, worth trying again (not local protocol errors)."""
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
"""Transport errors that mean the request never reached the server."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_RETRY_AFTER_SECONDS = 15 * 60.0
"""The longest a `Retry-After` / `X-Rate-Limit-Reset` wait is honoured; a longer ask waits this long."""


def rate_limit_wait(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait (`Retry-After`, else `X-Rate-Limit-Reset`), if it said."""
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now())
            except (TypeError, ValueError):
                pass
    reset = response.headers.get("X-Rate-Limit-Reset")
    if reset:
        try:
            value = float(reset)
        except ValueError:
            try:
                value = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
        # Large numbers are epoch seconds; small ones are a delay.
        return max(0.0, value - now()) if value > 1_000_000_000 else max(0.0, value)
    return None


def may_retry(request: httpx.Request, failure: httpx.TransportError | int) -> bool:
    """Whether `request`, which failed with a transport error or an HTTP status, may be sent again."""
    if request.method in IDEMPOTENT_METHODS:
        return failure in RETRYABLE_STATUS if isinstance(failure, int) else isinstance(failure, RETRYABLE_ERRORS)
    return failure == 429 if isinstance(failure, int) else isinstance(failure, NOT_SENT_ERRORS)


class RetryingTransport(httpx.BaseTransport):
    """Retries what `may_retry` allows, a bounded number of times.

    429 waits as long as the server asks (up to `MAX_RETRY_AFTER_SECONDS`); everything else backs
    off exponentially with jitter, up to `max_wait`. Log lines name the method, the path and the
    error's type only: an error's text can quote request headers.
    """

    def __init__(
        self,
        wrapped: httpx.BaseTransport,
        *,
        max_retries: int,
        backoff_seconds: float,
        max_wait: float,
        logger: logging.Logger,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._wrapped = wrapped
        self._max_retries = max_retries
        self._backoff = backoff_seconds
        self._max_wait = max_wait
        self._logger = logger
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._wrapped.handle_request(request)
            except httpx.TransportError as error:
                if attempt >= self._max_retries or not may_retry(request, error):
                    raise
                reason = type(error).__name__
                wait = self._backoff_for(attempt)
            else:
                if attempt >= self._max_retries or not may_retry(request, response.status_code):
                    return response
                reason = f"HTTP {response.status_code}"
                asked = rate_limit_wait(response) if response.status_code == 429 else None
                wait = min(asked, MAX_RETRY_AFTER_SECONDS) if asked is not None else self._backoff_for(attempt)
                response.close()
            attempt += 1
            self._logger.warning(
                "Alloy %s %s: %s; retry %d of %d in %.1f s",
                request.method,
                request.url.path,
                reason,
                attempt,
                self._max_retries,
                wait,
            )
            self._sleep(wait)

    def _backoff_for(self, attempt: int) -> float:
        return min(self._max_wait, self._backoff * 2**attempt) * random.uniform(0.8, 1.0)

    def close(self) -> None:
        self._wrapped.close()
