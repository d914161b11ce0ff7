"""Pure DataFrame functions: no paths, no I/O, so they read the same locally and on a cluster."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def _column(name: str) -> Column:
    """A column by its exact name: a mapping's new name may hold dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def _empty_as_null(name: str) -> Column:
    return F.when(_column(name) == "", F.lit(None)).otherwise(_column(name)).alias(name)


def _same_ignoring_case(names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for name in names:
        if name.lower() in seen:
            clashes.append(f"{seen[name.lower()]!r} and {name!r}")
        seen.setdefault(name.lower(), name)
    return clashes


def conform_csv(frame: DataFrame, columns: list[str], stamp: dict[str, str | datetime]) -> DataFrame:
    """Name the CSV's columns `columns`, turn empty cells into nulls, add the `stamp` columns.

    Every value stays a string: Alloy exports are text, and types are the analyst's choice.
    Names must be distinct from each other and from the stamp's, ignoring case as Spark does:
    otherwise a stamp would hide an Alloy column, or the parquet write would fail far from here.
    """
    if len(columns) != len(frame.columns):
        raise ValueError(f"header has {len(columns)} names but Spark read {len(frame.columns)} columns")
    clashes = _same_ignoring_case([*columns, *stamp])
    if clashes:
        raise ValueError(
            f"column names clash (Spark ignores case): {'; '.join(clashes)}; name the header with "
            "alloy_pipeline.columns.name_columns, which keeps names unique and clear of the import_* columns"
        )
    return frame.toDF(*columns).select(
        *(_empty_as_null(name) for name in columns),
        *(F.lit(value).alias(name) for name, value in stamp.items()),
    )


def drop_root_items(current: DataFrame, changed: DataFrame, key: str) -> DataFrame:
    """Rows of `current` whose `key` is not among `changed`'s `item_id`s, columns in place.

    `changed` may repeat an id: an anti-join only asks whether one matches, so making them
    distinct first would cost a shuffle for nothing.
    """
    changed_keys = F.broadcast(changed.select(F.col("item_id").alias("_changed_root")))
    return current.join(changed_keys, current[key] == changed_keys["_changed_root"], how="left_anti")


def upsert_root_items(current: DataFrame, increment: DataFrame, changed: DataFrame, key: str) -> DataFrame:
    """Replace, for every root item in `changed` (one column, `item_id`), all of its rows.

    `key` is the column that names a row's root item: `item_id` in the main table,
    `primary_item` in a joined table, so an item whose link was cleared loses its joined rows.
    Columns are unioned by name; a column one side lacks is null there.
    """
    return drop_root_items(current, changed, key).unionByName(increment, allowMissingColumns=True)


def rename_columns(frame: DataFrame, renames: dict[str, str]) -> DataFrame:
    """Rename columns by `renames` (already validated); other columns keep their names.

    One projection, every new name taken from the original columns: renaming one at a time
    (`withColumnsRenamed` folds over the map) turns a swap `{a: b, b: a}` into two `a`s and a
    chain `{a: b, b: c}` into two `c`s.
    """
    if not renames or not any(name in renames for name in frame.columns):
        return frame
    return frame.select(*(_column(name).alias(renames.get(name, name)) for name in frame.columns))


def epoch_seconds_text(moment: Column) -> Column:
    """A timestamp as Python's `str(datetime.timestamp())` writes it: `1709254800.123456`, `1709254800.5`,
    `1709254800.0` (at most six decimals, trailing zeros dropped, at least one kept)."""
    seconds = (F.unix_micros(moment).cast("decimal(20,0)") / F.lit(1_000_000)).cast("decimal(20,6)").cast("string")
    return F.regexp_replace(F.regexp_replace(seconds, r"0+$", ""), r"\.$", ".0")


def current_import_types(frame: DataFrame, column_types: dict[str, str]) -> DataFrame:
    """A table written before `import_datetime` became a timestamp and `import_timestamp` a string of
    epoch seconds, given the types it was written with, read with today's types (other columns as they are).

    The old `import_datetime` text is the same UTC moment (`yyyy-MM-dd HH:mm:ss`), read in the session's
    UTC. Deciding from the recorded types costs no schema request.
    """
    upgrades: dict[str, Column] = {}
    if column_types.get("import_datetime") == "string":
        upgrades["import_datetime"] = F.to_timestamp(_column("import_datetime"), "yyyy-MM-dd HH:mm:ss")
    if column_types.get("import_timestamp") == "timestamp":
        upgrades["import_timestamp"] = epoch_seconds_text(_column("import_timestamp"))
    return frame.withColumns(upgrades) if upgrades else frame


def stamp_columns(frame: DataFrame, stamp: dict[str, str]) -> DataFrame:
    """Set constant string columns (replacing any of the same name)."""
    return frame.withColumns({name: F.lit(value) for name, value in stamp.items()})
