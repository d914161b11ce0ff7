"""The single-machine peer of a snapshot day: the asset's merge of one raw partition into the previous
snapshot, done in DuckDB, which is what a user would pick instead of a Spark engine for a lake that
fits one machine. The per-size step times it beside the asset's day (`sizes.py`).

It computes the same tables as `merge_tables` and `_stage_tables` in the asset, from the same parquet,
into parquet (snappy), with DuckDB's defaults otherwise. It reads a local lake whose tables have today's
types: the upgrade of older `import_*` types (`current_import_types`) is not repeated.

    python bench/duckdb_peer.py --check   # a tiny day, merged and its output asserted
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from harness import Window

from alloy_pipeline.columns import SNAPSHOT_COLUMNS
from alloy_pipeline.lake import RawManifest, SnapshotManifest, SnapshotTable, TableOutput
from alloy_pipeline.partitions import Day
from alloy_pipeline.snapshot_merge import ITEM_ID, PRIMARY_ITEM

SPILL = "_spill"
"""Where DuckDB spills what does not fit in memory, under the target: by default it is `.tmp` in the
working directory."""


def _name(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _files(uri: str) -> str:
    """The parquet files of a table folder as Spark writes it (`part-*.parquet` beside `_SUCCESS` and
    `.crc` files), from its `file://` URI or path."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"{uri}: the DuckDB peer reads a local lake only")
    return f"{url2pathname(parsed.path)}/*.parquet"


def _read(entry: TableOutput, names: Mapping[str, str] | None = None, dropped: Collection[str] = ()) -> str:
    """A query of a table by its manifest: each column under its name in `names`, less `dropped`.

    A Spark `timestamp` is an instant, which DuckDB reads as one from a `TIMESTAMP_MICROS` column but
    as a UTC wall time without a zone from Spark's default INT96 (and would write it so): it is cast
    to an instant, in the connection's UTC.
    """
    columns = []
    for stored, kind in entry.column_types:
        name = (names or {}).get(stored, stored)
        if name in dropped:
            continue
        value = f"{_name(stored)}::TIMESTAMPTZ" if kind == "timestamp" else _name(stored)
        columns.append(f"{value} AS {_name(name)}")
    return f"SELECT {', '.join(columns)} FROM read_parquet({_text(_files(entry.path))})"


def _read_snapshot(entry: SnapshotTable) -> str:
    """As `read_snapshot_table`: renames undone before the `snapshot_*` columns are dropped."""
    return _read(entry, {new: old for old, new in entry.renames.items()}, SNAPSHOT_COLUMNS)


def _merged(table: str, current: Mapping[str, str], increment: Mapping[str, str], key: str) -> str:
    """As `upsert_root_items` and `drop_root_items`: the rows of the current table whose `key` is not a
    changed item's id (an anti-join, so a row without a key stays), then the raw rows, unioned by name."""
    if table not in current:
        return increment[table]
    kept = f"SELECT * FROM ({current[table]}) AS kept ANTI JOIN changed ON kept.{_name(key)} = changed.item_id"
    return f"{kept} UNION ALL BY NAME {increment[table]}" if table in increment else kept


def duckdb_merge(previous: SnapshotManifest, raw: RawManifest, target: Path) -> Window:
    """Merge the raw partition into the previous snapshot and write each table to `target/<table>.parquet`.

    Each table is stamped with the raw day's `snapshot_*` columns and renamed as the previous snapshot's
    mapping renamed it (the asset reads the mapping file again; the bench has none).
    """
    started = time.time()
    target.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(config={"temp_directory": str(target / SPILL)}) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        increment = {table: _read(entry) for table, entry in raw.tables.items()}
        current: dict[str, str] = {}
        if raw.kind == "incremental":
            current = {table: _read_snapshot(entry) for table, entry in previous.tables.items()}
            connection.execute(f"CREATE TEMP TABLE changed AS SELECT item_id FROM ({increment[raw.main_table]})")
        stamp = Day(raw.day).fields("snapshot")
        for table in sorted(current.keys() | increment.keys()):
            key = ITEM_ID if table == raw.main_table else PRIMARY_ITEM
            merged = _merged(table, current, increment, key)
            renames = previous.tables[table].renames if table in previous.tables else {}
            projection = [
                *(
                    f"{_name(column)} AS {_name(renames.get(column, column))}"
                    for column in connection.sql(merged).columns
                ),
                *(f"{_text(value)} AS {_name(renames.get(column, column))}" for column, value in stamp.items()),
            ]
            output = _text(str(target / f"{table}.parquet"))
            connection.execute(
                f"COPY (SELECT {', '.join(projection)} FROM ({merged})) TO {output} (FORMAT parquet, COMPRESSION snappy)"
            )
    return Window(started, time.time())


# -------------------------------------------------------------------------------------- the check

MAIN, SITES = "records", "records_site"
BEFORE, AFTER = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
ITEMS = 200


def _spark_table(folder: Path, rows: list[dict[str, object]]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A table written as Spark writes one (a folder of snappy parts, INT96 timestamps): its URI and types."""
    table = pa.Table.from_pylist(rows)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.snappy.parquet", use_deprecated_int96_timestamps=True)
    (folder / "_SUCCESS").touch()
    types = {pa.string(): "string", pa.timestamp("us", tz="UTC"): "timestamp"}
    return folder.as_uri(), tuple((field.name, types[field.type]) for field in table.schema)


def _imported(day: dt.date) -> dict[str, object]:
    return {
        "import_date": Day(day).compact,
        "import_datetime": dt.datetime.combine(day, dt.time(3), dt.UTC),
    }


def _tiny_day(folder: Path) -> tuple[SnapshotManifest, RawManifest]:
    """A snapshot of `ITEMS` items, each with a site (item 7 two), its `title` stored as `name`; and a raw
    day that edits item 5, inserts item 201, edits item 7, which has no site any more, and adds a column."""
    stamp = Day(BEFORE).fields("snapshot")
    records = [
        {ITEM_ID: str(item), "name": f"item {item}", **_imported(BEFORE), **stamp} for item in range(1, ITEMS + 1)
    ]
    sites = [
        {
            PRIMARY_ITEM: str(item),
            ITEM_ID: f"site {item}",
            "site_title": f"site of {item}",
            **_imported(BEFORE),
            **stamp,
        }
        for item in [*range(1, ITEMS + 1), 7]
    ]
    snapshot_tables = {}
    for table, rows in ((MAIN, records), (SITES, sites)):
        path, types = _spark_table(folder / "snapshot" / table, rows)
        renames = {"title": "name"} if table == MAIN else {}
        snapshot_tables[table] = SnapshotTable(path=path, rows=len(rows), column_types=types, renames=renames)
    previous = SnapshotManifest(
        query="tiny",
        day=BEFORE,
        run_id="before",
        main_table=MAIN,
        base_day=None,
        raw_days=(BEFORE,),
        inserted=ITEMS,
        replaced=0,
        carried_forward=0,
        removed=0,
        tables=snapshot_tables,
    )
    edited = [
        {ITEM_ID: "5", "title": "edited", "colour": "red", **_imported(AFTER)},
        {ITEM_ID: "201", "title": "inserted", "colour": "blue", **_imported(AFTER)},
        {ITEM_ID: "7", "title": "unlinked", "colour": None, **_imported(AFTER)},
    ]
    linked = [
        {PRIMARY_ITEM: item, ITEM_ID: f"site {item}", "site_title": f"new site of {item}", **_imported(AFTER)}
        for item in ("5", "201")
    ]
    raw_tables = {}
    for table, rows in ((MAIN, edited), (SITES, linked)):
        path, types = _spark_table(folder / "raw" / table, rows)
        raw_tables[table] = TableOutput(path=path, rows=len(rows), column_types=types)
    moment = dt.datetime.combine(AFTER, dt.time(3), dt.UTC)
    raw = RawManifest(
        query="tiny",
        day=AFTER,
        kind="incremental",
        watermark=moment - dt.timedelta(days=1),
        requested_at=moment,
        task_id="task",
        run_id="after",
        main_table=MAIN,
        tables=raw_tables,
    )
    return previous, raw


def _output(target: Path, table: str) -> pa.Table:
    return pq.read_table(target / f"{table}.parquet")


def check(folder: Path) -> None:
    """Merge a tiny day and assert what the asset would write: rows per table, replaced values, columns."""
    previous, raw = _tiny_day(folder)
    duckdb_merge(previous, raw, folder / "merged")
    main, sites = _output(folder / "merged", MAIN), _output(folder / "merged", SITES)
    assert (main.num_rows, sites.num_rows) == (ITEMS + 1, ITEMS), (main.num_rows, sites.num_rows)
    records = {row[ITEM_ID]: row for row in main.to_pylist()}
    assert (records["5"]["name"], records["5"]["colour"]) == ("edited", "red"), records["5"]
    assert (records["201"]["name"], records["7"]["name"]) == ("inserted", "unlinked")
    assert (records["1"]["name"], records["1"]["colour"], records["1"]["import_date"]) == ("item 1", None, "20240301")
    assert main.column_names == [ITEM_ID, "name", "import_date", "import_datetime", "colour", *SNAPSHOT_COLUMNS]
    assert main.schema.field("import_datetime").type == pa.timestamp("us", tz="UTC")
    assert (records["1"]["import_datetime"].hour, records["5"]["import_datetime"].hour) == (3, 3)
    assert {row["snapshot_date"] for row in [*main.to_pylist(), *sites.to_pylist()]} == {"20240302"}
    linked = {row[PRIMARY_ITEM]: row["site_title"] for row in sites.to_pylist()}
    expected = {"5": "new site of 5", "201": "new site of 201", "6": "site of 6", "7": None}
    assert {item: linked.get(item) for item in expected} == expected, linked
    duckdb_merge(previous, raw.model_copy(update={"kind": "full"}), folder / "full")
    full = {table: _output(folder / "full", table).num_rows for table in (MAIN, SITES)}
    assert full == {MAIN: 3, SITES: 2}, full
    print(f"DuckDB peer: {MAIN} {main.num_rows} rows, {SITES} {sites.num_rows} rows, as the asset merges them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", required=True, help="merge a tiny day and assert its output")
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="duckdb-peer-") as folder:
        check(Path(folder))


if __name__ == "__main__":
    main()
