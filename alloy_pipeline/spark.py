"""Spark settings: local Spark tuned for a small machine, or a Spark Connect server when asked."""

from __future__ import annotations

LOCAL_SPARK_CONFIG: dict[str, str] = {
    "spark.master": "local[2]",
    "spark.app.name": "alloy-pipeline",
    "spark.driver.memory": "4g",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def spark_config(remote: str | None) -> dict[str, str]:
    """The session config for `PySparkResource`: Spark Connect if `remote` is set, else local.

    A Connect session refuses static settings such as the master, so it gets only its URL and
    the runtime settings that make results independent of the server's time zone.
    """
    if remote:
        return {"spark.remote": remote}
    return dict(LOCAL_SPARK_CONFIG)
