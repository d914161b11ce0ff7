"""Spark sessions: a client of a Spark Connect server (the local engine or a cluster), or local Spark."""

from __future__ import annotations

import atexit
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import dagster as dg
import grpc
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import SparkSession
from pyspark.sql.connect.client import DefaultChannelBuilder
from pyspark.sql.connect.client.retries import DefaultPolicy, RetryPolicyState

from alloy_pipeline.loopback import is_loopback
from alloy_pipeline.resource_environment import held_environment

SESSION_SETTINGS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
}
"""Runtime settings every session carries, whatever the server's defaults: results must not
depend on the engine's time zone, and partition values (`import_month=03`) stay strings."""

LOCAL_SPARK_CONFIG: dict[str, str] = {
    "spark.master": "local[2]",
    "spark.app.name": "alloy-pipeline",
    "spark.driver.memory": "4g",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    **SESSION_SETTINGS,
}
"""Spark in one JVM tuned for a small machine: the engine's settings, and in-process Spark's."""


ENGINE_PATIENCE_SECONDS = 10.0
"""How long a client of a server on this machine (the engine) waits for it: to answer its first
call, and to answer again once a call finds it unavailable. A live engine answers on loopback
in milliseconds, and nothing brings a dead one back for this client (a new engine has a new token),
so waiting longer only delays the step's failure. pyspark's own policy waits about 10 minutes per
call, which suits a cluster that is restarting, and spends as long again when Python exits."""


def endpoint(remote: str) -> str:
    """A Spark Connect URL without its parameters (`/;token=…` and the like), safe to log."""
    return remote.split(";", 1)[0].rstrip("/")


def on_loopback(remote: str) -> bool:
    """Whether a Spark Connect URL names this machine."""
    return is_loopback(urlsplit(endpoint(remote)).hostname)


class SparkConnectRefused(RuntimeError):
    """A Spark Connect server refused this client's credentials (a missing or wrong token)."""


class SparkConnectUnreachable(RuntimeError):
    """The Spark Connect server on this machine does not answer: the engine is not running, or hangs."""


def _unreachable(remote: str, what: str) -> SparkConnectUnreachable:
    """The error of a client whose engine does not answer: its endpoint (never its token) and the fix."""
    return SparkConnectUnreachable(
        f"the Spark engine at {endpoint(remote)} {what}: start it with `alloy-pipeline engine start` and "
        "set SPARK_REMOTE to the URL it prints (each start makes a new token)"
    )


def _unavailable(error: BaseException | None) -> bool:
    """Whether a call failed because its server could not be reached (gRPC's UNAVAILABLE)."""
    return isinstance(error, grpc.RpcError) and cast(grpc.Call, error).code() == grpc.StatusCode.UNAVAILABLE


PROBE_METHOD = "/alloy_pipeline.Probe/Answer"
"""A gRPC method no server implements: any answer to it (UNIMPLEMENTED, or UNAUTHENTICATED from a
server that refuses the token) shows the server is there and answering."""


def _await_answer(remote: str, seconds: float) -> None:
    """Return once the server at `remote` answers a call; else raise `SparkConnectUnreachable`.

    A port nothing listens on fails at once rather than after pyspark's retries, and one that
    accepts but never answers (a hung engine) fails after `seconds` rather than after gRPC's 20 s
    connect timeout times each retry. The probe's channel is built as the session's will be
    (pyspark's builder, the URL's credentials); a call, unlike watching the channel's state, costs
    a few milliseconds, closing included.
    """
    channel = DefaultChannelBuilder(remote).toChannel()
    probe = channel.unary_unary(PROBE_METHOD, request_serializer=bytes, response_deserializer=bytes)
    try:
        probe(b"", timeout=seconds)
    except grpc.RpcError as error:
        code = cast(grpc.Call, error).code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise _unreachable(remote, f"does not answer ({cast(grpc.Call, error).details()})") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise _unreachable(remote, f"accepted a connection but did not answer within {seconds:g} s") from None
    finally:
        channel.close()


class _EngineRetryPolicy(DefaultPolicy):
    """pyspark's choice of the errors worth retrying, with the patience of `ENGINE_PATIENCE_SECONDS`.

    It gives up on an unavailable engine by raising `SparkConnectUnreachable`, and remembers that
    it did, so the client's later calls fail on their first unanswered attempt instead of waiting
    again: the query after the settings lookup pyspark makes first (and whose failure it swallows),
    a step's next query, the session's release at the end of `connected`.
    """

    def __init__(self, remote: str) -> None:
        super().__init__(max_retries=None, max_backoff=1000, max_server_retry_delay=1000)
        self.remote = remote
        self.engine_gone = False

    def to_state(self) -> RetryPolicyState:
        return _EngineRetryState(self)


class _EngineRetryState(RetryPolicyState):
    """The retries of one call, whose patience runs from its first failure (not its start: a long
    query that then meets a retryable error still gets its retries)."""

    def __init__(self, policy: _EngineRetryPolicy) -> None:
        super().__init__(policy)
        self._engine_policy = policy
        self._first_failure: float | None = None

    def next_attempt(self, exception: BaseException | None = None) -> int | None:
        policy = self._engine_policy
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        wait = super().next_attempt(exception)
        if (
            not policy.engine_gone
            and wait is not None
            and now + wait / 1000 - self._first_failure <= ENGINE_PATIENCE_SECONDS
        ):
            return wait
        if not _unavailable(exception):
            return None  # pyspark raises the error itself: the engine answered, with an error
        policy.engine_gone = True
        details = cast(grpc.Call, exception).details()
        raise _unreachable(policy.remote, f"stopped answering ({details})") from exception


def connect_session(remote: str) -> SparkSession:
    """A Spark Connect session on `remote` carrying `SESSION_SETTINGS`.

    It switches this process's pyspark into Connect mode (`pyspark.sql.functions` then build
    Connect expressions), so a process is either a client or runs local Spark, never both.

    A client of a server on this machine (the engine) differs from pyspark's defaults in three ways:

    - It fails fast when the engine is gone: it first waits for an answer (`_await_answer`),
      and its calls retry an unavailable engine for `ENGINE_PATIENCE_SECONDS`, not pyspark's ten
      minutes, then raise `SparkConnectUnreachable` naming the endpoint and `engine start`.
    - It closes its channel when Python exits, before pyspark's own exit hook would call the engine
      (to clear an ML cache this pipeline never fills): a process whose engine died exits at once.
    - It does without reattachable execution, which lets a client resume a result stream that the
      network cut, for about 20 ms more per operation: a connection on loopback cannot be cut that
      way, and a snapshot day runs a dozen operations.

    A server that refuses the client's token raises `SparkConnectRefused`, naming the endpoint
    only: the URL's token stays out of the message.
    """
    local = on_loopback(remote)
    if local:
        _await_answer(remote, ENGINE_PATIENCE_SECONDS)
    session = SparkSession.builder.remote(remote).getOrCreate()  # makes no call: the settings below do
    client = session.client
    if local and not any(isinstance(policy, _EngineRetryPolicy) for policy in client.get_retry_policies()):
        client.set_retry_policies([_EngineRetryPolicy(remote)])
        client.disable_reattachable_execute()
        atexit.register(client.close)  # runs before the exit hook pyspark registered with the client
    try:
        for name, value in SESSION_SETTINGS.items():
            session.conf.set(name, value)
    except SparkConnectGrpcException as error:
        if error.getGrpcStatusCode() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        session.stop()  # else this process's next getOrCreate would return the refused session
        raise SparkConnectRefused(
            f"the Spark Connect server at {endpoint(remote)} refused this client's credentials: for the "
            "local engine, SPARK_REMOTE must be the URL `alloy-pipeline engine start` prints, with its "
            "`;token=…`; for a cluster, the credentials its endpoint asks for"
        ) from error
    return session


@contextmanager
def connected(remote: str) -> Iterator[SparkSession]:
    """A Connect session stopped at the end of the block, which releases its state on the server
    (its cached relations, temporary views and settings) instead of leaving it to time out."""
    session = connect_session(remote)
    try:
        yield session
    finally:
        session.stop()


class SparkResource(PySparkResource):
    """The Spark session of a step: a Spark Connect client when `remote` is set, else local Spark.

    With `remote`, a step starts no JVM: it talks to the engine (`alloy-pipeline engine start`)
    or a cluster's Connect endpoint, and catalog registration runs in that server's session. The
    step's log names its session, whose id the server's log and Spark UI show against each job;
    the URL's parameters (the engine's token, a Databricks token) are never logged.
    """

    remote: str | None = Field(
        default=None, description="SPARK_REMOTE: a Spark Connect URL (sc://host:port); unset for local Spark."
    )
    spark_config: dict[str, Any] = Field(
        default=LOCAL_SPARK_CONFIG, description="Settings of local Spark, used when `remote` is unset."
    )

    ENVIRONMENT: ClassVar[dict[str, str]] = {"remote": "SPARK_REMOTE"}
    """The field the code location sets from the environment (README, "Configuration")."""

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        held_environment(self, self.ENVIRONMENT)
        if not self.remote:
            super().setup_for_execution(context)
            return
        self._spark_session = connect_session(self.remote)
        if context.log is not None:
            context.log.info(f"Spark Connect session {self._spark_session.session_id} on {endpoint(self.remote)}")
