"""Pure DataFrame functions: no paths, no I/O, so they read the same locally and on a cluster."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def _empty_as_null(name: str) -> Column:
    return F.when(F.col(name) == "", F.lit(None)).otherwise(F.col(name)).alias(name)


def conform_csv(frame: DataFrame, columns: list[str], stamp: dict[str, str | datetime]) -> DataFrame:
    """Name the CSV's columns `columns`, turn empty cells into nulls, add the `stamp` columns.

    Every value stays a string: Alloy exports are text, and types are the analyst's choice.
    """
    if len(columns) != len(frame.columns):
        raise ValueError(f"header has {len(columns)} names but Spark read {len(frame.columns)} columns")
    return frame.toDF(*columns).select(
        *(_empty_as_null(name) for name in columns),
        *(F.lit(value).alias(name) for name, value in stamp.items()),
    )
