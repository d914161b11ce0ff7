"""Spark sessions: a client of a Spark Connect server (the local engine or a cluster), or local Spark."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import grpc
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import SparkSession

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


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def endpoint(remote: str) -> str:
    """A Spark Connect URL without its parameters (`/;token=…` and the like), safe to log."""
    return remote.split(";", 1)[0].rstrip("/")


def on_loopback(remote: str) -> bool:
    """Whether a Spark Connect URL names this machine."""
    return urlsplit(endpoint(remote)).hostname in LOOPBACK_HOSTS


class SparkConnectRefused(RuntimeError):
    """A Spark Connect server refused this client's credentials (a missing or wrong token)."""


def connect_session(remote: str) -> SparkSession:
    """A Spark Connect session on `remote` carrying `SESSION_SETTINGS`.

    It switches this process's pyspark into Connect mode (`pyspark.sql.functions` then build
    Connect expressions), so a process is either a client or runs local Spark, never both.

    Reattachable execution lets a client resume a result stream that the network cut, for about
    20 ms more per operation; a connection on loopback (the local engine) cannot be cut that way,
    and a snapshot day runs a dozen operations, so its clients do without it.

    A server that refuses the client's token raises `SparkConnectRefused`, naming the endpoint
    only: the URL's token stays out of the message.
    """
    try:
        session = SparkSession.builder.remote(remote).config(map=SESSION_SETTINGS).getOrCreate()
    except SparkConnectGrpcException as error:
        if error.getGrpcStatusCode() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        refused = SparkSession.getActiveSession()
        if refused is not None:
            refused.stop()  # else this process's next getOrCreate would return the refused session
        raise SparkConnectRefused(
            f"the Spark Connect server at {endpoint(remote)} refused this client's credentials: for the "
            "local engine, SPARK_REMOTE must be the URL `alloy-pipeline engine start` prints, with its "
            "`;token=…`; for a cluster, the credentials its endpoint asks for"
        ) from error
    if on_loopback(remote):
        session.client.disable_reattachable_execute()
    return session


@contextmanager
def connected(remote: str) -> Iterator[SparkSession]:
    """A Connect session closed at the end of the block, while its server still runs: a client
    left open past its server's stop spends minutes retrying to say goodbye when Python exits."""
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

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if not self.remote:
            super().setup_for_execution(context)
            return
        self._spark_session = connect_session(self.remote)
        if context.log is not None:
            context.log.info(f"Spark Connect session {self._spark_session.session_id} on {endpoint(self.remote)}")
