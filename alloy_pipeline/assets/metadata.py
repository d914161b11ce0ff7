"""What the Dagster UI shows about a table: its schema, its catalog name and a few rows."""

import dagster as dg
from pyspark.sql import DataFrame

from alloy_pipeline.lake import TableOutput

PREVIEW_ROWS = 5


def table_schema(output: TableOutput) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=name, type=kind) for name, kind in output.column_types])


def preview(frame: DataFrame, output: TableOutput) -> dg.TableMetadataValue:
    """The first rows of a committed table, as strings."""
    records = [
        dg.TableRecord({name: None if value is None else str(value) for name, value in row.asDict().items()})
        for row in frame.limit(PREVIEW_ROWS).collect()
    ]
    return dg.MetadataValue.table(records=records, schema=table_schema(output))
