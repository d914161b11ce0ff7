"""What the Dagster UI shows about a table: its schema, its catalog name and a few rows."""

import dagster as dg
from pyspark.sql import DataFrame

from alloy_pipeline.columns import KEY_COLUMN
from alloy_pipeline.lake import SnapshotTable, TableOutput

PREVIEW_ROWS = 5
_PARTITION = "the London day of the raw partition the row came from"
_SNAPSHOT = "the London day of the snapshot"
COLUMN_DESCRIPTIONS = {
    KEY_COLUMN: "Alloy item ID of the root item: one row per item, the key snapshots upsert by.",
    "import_year": f"Year (YYYY) of {_PARTITION}.",
    "import_month": f"Month (MM) of {_PARTITION}.",
    "import_day": f"Day of the month (DD) of {_PARTITION}.",
    "import_date": f"Date (YYYYMMDD) of {_PARTITION}.",
    "import_datetime": "When the run that extracted the row asked Alloy for it (UTC).",
    "import_timestamp": "import_datetime as epoch seconds, as text.",
    "snapshot_year": f"Year (YYYY) of {_SNAPSHOT}.",
    "snapshot_month": f"Month (MM) of {_SNAPSHOT}.",
    "snapshot_day": f"Day of the month (DD) of {_SNAPSHOT}.",
    "snapshot_date": f"Date (YYYYMMDD) of {_SNAPSHOT}.",
}
"""What the pipeline itself knows of a main table's columns, by their names before any mapping file."""
ITEM_IDS_SUFFIX = "_item_ids"


def describe_column(name: str) -> str | None:
    """What `name` (as the pipeline names it, before renames) holds, where the pipeline knows it."""
    if name in COLUMN_DESCRIPTIONS:
        return COLUMN_DESCRIPTIONS[name]
    if name.endswith(ITEM_IDS_SUFFIX):
        return "Alloy item IDs of the items this join path reaches from the root item (the joined table's item_id)."
    return None


def table_schema(output: TableOutput) -> dg.TableSchema:
    """The columns as stored, each described by what it held before its mapping file renamed it."""
    original = {new: old for old, new in output.renames.items()} if isinstance(output, SnapshotTable) else {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=kind, description=describe_column(original.get(name, name)))
            for name, kind in output.column_types
        ]
    )


def preview(frame: DataFrame, output: TableOutput) -> dg.TableMetadataValue:
    """The first rows of a committed table, as strings."""
    records = [
        dg.TableRecord({name: None if value is None else str(value) for name, value in row.asDict().items()})
        for row in frame.limit(PREVIEW_ROWS).collect()
    ]
    return dg.MetadataValue.table(records=records, schema=table_schema(output))
