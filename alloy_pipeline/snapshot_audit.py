"""Auditing a snapshot day's main table, as written, against what its inputs say it must hold.

The inputs decide the items: those of the base snapshot (the previous one, unless a full extract
replaced it) and of the raw partitions applied to it, since the merge keeps or replaces every
item and only a full extract removes any. Nothing here looks at the merge: a broken one shows as
a table that differs from its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from alloy_pipeline.lake import SnapshotTable, TableOutput
from alloy_pipeline.partitions import Day
from alloy_pipeline.snapshot_merge import ITEM_ID
from alloy_pipeline.snapshot_plan import SnapshotPlan
from alloy_pipeline.tables import ddl_schema, read_table


@dataclass(frozen=True)
class MergeCounts:
    """How the main table changed against the previous snapshot, in root items, from the inputs alone."""

    inserted: int
    replaced: int
    carried_forward: int
    removed: int


@dataclass(frozen=True)
class WrittenKeys:
    """The main table as written, against the items its inputs say it must hold."""

    rows: int
    distinct: int
    """Distinct item ids written."""
    repeated: int
    """Item ids written more than once."""
    examples: tuple[str, ...]
    """Some of the repeated item ids."""
    expected: int
    """Distinct item ids of the base snapshot and the raws."""
    missing: int
    """Expected item ids not written."""
    unexpected: int
    """Item ids written that no input holds."""
    stale: int
    """Raw item ids written with a row that none of the raws holds: an older version, kept."""
    changes: MergeCounts


def _stored_columns(spark: SparkSession, entry: TableOutput, renames: Mapping[str, str], *names: str) -> DataFrame:
    """Columns `names` of a stored table alone, read under the names its mapping gave them."""
    kinds = dict(entry.column_types)
    stored = [renames.get(name, name) for name in names]
    return spark.read.schema(ddl_schema(tuple((name, kinds[name]) for name in stored))).parquet(entry.path).toDF(*names)


def _digest(where: Column | None = None) -> Column:
    """The XOR of the 64-bit hashes of the `item_id`s (of the rows `where` holds).

    Beside a count it proves a table holds each of a set of ids once: with as many rows as ids,
    only the ids of odd multiplicity survive the XOR, so it equals the set's own exactly when
    every id appears once (or, for a different set, by chance with odds of about 2^-64). Unlike
    a sum it needs no decimal arithmetic, which would cost the write of a large table seconds.
    The condition goes outside the hash, which hashes a null to its seed, not to nothing.
    """
    hashed = F.xxhash64(F.col(ITEM_ID))
    return F.coalesce(F.bit_xor(hashed if where is None else F.when(where, hashed)), F.lit(0).cast("long"))


@dataclass(frozen=True)
class ExpectedKeys:
    """What the main table must hold, from the plan's inputs alone."""

    items: int
    """Distinct item ids of the base snapshot and the raws: the table's rows, one each."""
    digest: int
    """Their `_digest`."""
    raw_items: int
    """Distinct item ids of the raws: the table's rows that must come from the raws."""
    changes: MergeCounts


def expected_keys(spark: SparkSession, plan: SnapshotPlan) -> ExpectedKeys:
    """The item ids the plan's inputs say its main table must hold, counted and digested.

    One query of single-row aggregates: the raws' distinct ids, and the previous snapshot's
    ids with those the raws also hold. On an incremental day the raws are the day's changes, and
    broadcast; the previous snapshot is read for its ids alone, without a shuffle. Independent of
    the merge and of the write, so it runs while the tables are written.
    """
    parts: list[DataFrame] = []
    raw_ids = (
        reduce(DataFrame.union, [_stored_columns(spark, raw.tables[raw.main_table], {}, ITEM_ID) for raw in plan.raws])
        .distinct()
        .withColumn("in_raws", F.lit(True))
        if plan.raws
        else None
    )
    if raw_ids is not None:
        parts.append(raw_ids.agg(F.count(F.lit(1)).alias("raw_items"), _digest().alias("raw_digest")))
    if plan.previous is not None:
        entry = plan.previous.tables[plan.previous.main_table]
        previous = _stored_columns(spark, entry, entry.renames, ITEM_ID)
        if raw_ids is not None:
            # After a full extract the raws are the whole table, too large to broadcast.
            previous = previous.join(F.broadcast(raw_ids) if plan.base else raw_ids, ITEM_ID, "left")
        else:
            previous = previous.withColumn("in_raws", F.lit(False))
        shared = F.coalesce(F.col("in_raws"), F.lit(False))
        parts.append(
            previous.agg(
                F.count(F.lit(1)).alias("previous_rows"),
                _digest().alias("previous_digest"),
                F.count_if(shared).alias("shared"),
                _digest(shared).alias("shared_digest"),
            )
        )
    [row] = reduce(DataFrame.crossJoin, parts).collect()
    found = row.asDict()
    raw_items, previous_rows, shared_items = (found.get(name, 0) for name in ("raw_items", "previous_rows", "shared"))
    raw_digest = found.get("raw_digest", 0)
    if plan.base is None:
        return ExpectedKeys(
            items=raw_items,
            digest=raw_digest,
            raw_items=raw_items,
            changes=MergeCounts(
                inserted=raw_items - shared_items,
                replaced=shared_items,
                carried_forward=0,
                removed=previous_rows - shared_items,
            ),
        )
    return ExpectedKeys(
        items=previous_rows + raw_items - shared_items,
        digest=found["previous_digest"] ^ raw_digest ^ found["shared_digest"],
        raw_items=raw_items,
        changes=MergeCounts(
            inserted=raw_items - shared_items,
            replaced=shared_items,
            carried_forward=previous_rows - shared_items,
            removed=0,
        ),
    )


def _raw_dates(plan: SnapshotPlan) -> list[str]:
    """The `import_date`s of the plan's raw partitions: rows with one of them came from the raws."""
    return [Day(raw.day).compact for raw in plan.raws]


def written_keys(plan: SnapshotPlan) -> list[Column]:
    """What `audit_main_table` needs of the main table, counted by an observation of its write:
    beside its rows (`observe_rows`), their ids' digest and the rows whose `import_date` is a raw
    partition's (a base snapshot's rows are older). The write sees every row the table gets, so
    no second pass reads it back."""
    return [
        _digest().alias("digest"),
        F.count_if(F.col("import_date").isin(_raw_dates(plan))).alias("from_raws"),
    ]


def audit_main_table(
    spark: SparkSession,
    plan: SnapshotPlan,
    written: SnapshotTable,
    found: Mapping[str, int],
    expected: ExpectedKeys,
) -> WrittenKeys:
    """Measure the main table as `written` against what its inputs say it must hold, never its merge.

    `found` is what its write counted (`written_keys`). The table holds each expected item once,
    and each raw item with its raw row, exactly when those equal the expected count, digest and
    raw items. Only when they differ does `_measure` read the table back and count, with a
    shuffle of every id, what is wrong.
    """
    if (found["rows"], found["digest"], found["from_raws"]) != (expected.items, expected.digest, expected.raw_items):
        rows = _stored_columns(spark, written, written.renames, ITEM_ID, "import_date")
        return _measure(spark, plan, rows, expected.changes)
    return WrittenKeys(
        rows=expected.items,
        distinct=expected.items,
        repeated=0,
        examples=(),
        expected=expected.items,
        missing=0,
        unexpected=0,
        stale=0,
        changes=expected.changes,
    )


def _measure(spark: SparkSession, plan: SnapshotPlan, rows: DataFrame, changes: MergeCounts) -> WrittenKeys:
    """What is wrong with a written main table (`rows`: its ids and import dates), counted exactly.

    One aggregate over the ids of the table, the previous snapshot and the raws, grouped by item;
    a second query names some repeated ids when there are any.
    """
    sources = [rows.select(ITEM_ID, F.lit("written").alias("source"), F.col("import_date").isin(_raw_dates(plan)))]
    previous = plan.previous.tables[plan.previous.main_table] if plan.previous else None
    inputs = [(previous, previous.renames, "previous")] if previous else []
    inputs += [(raw.tables[raw.main_table], {}, "raw") for raw in plan.raws]
    sources += [
        _stored_columns(spark, entry, renames, ITEM_ID).select(ITEM_ID, F.lit(source).alias("source"), F.lit(False))
        for entry, renames, source in inputs
    ]
    items = (
        reduce(DataFrame.union, sources)
        .toDF(ITEM_ID, "source", "from_raws")
        .groupBy(ITEM_ID)
        .agg(
            F.count_if(F.col("source") == "written").alias("written"),
            F.bool_or(F.col("from_raws")).alias("written_from_raws"),
            F.bool_or(F.col("source") == "previous").alias("previous"),
            F.bool_or(F.col("source") == "raw").alias("raw"),
        )
    )
    written, in_raws = F.col("written"), F.col("raw")
    expected = (F.col("previous") & F.lit(plan.base is not None)) | in_raws
    [totals] = items.agg(
        F.coalesce(F.sum(written), F.lit(0)).alias("rows"),
        F.count_if(written > 0).alias("distinct"),
        F.count_if(written > 1).alias("repeated"),
        F.count_if(expected).alias("expected"),
        F.count_if(expected & (written == 0)).alias("missing"),
        F.count_if(~expected & (written > 0)).alias("unexpected"),
        F.count_if(in_raws & (written > 0) & ~F.col("written_from_raws")).alias("stale"),
    ).collect()
    repeated = items.where(written > 1).select(ITEM_ID).orderBy(ITEM_ID).limit(5) if totals["repeated"] else None
    return WrittenKeys(
        rows=totals["rows"],
        distinct=totals["distinct"],
        repeated=totals["repeated"],
        examples=tuple(row[ITEM_ID] for row in repeated.collect()) if repeated else (),
        expected=totals["expected"],
        missing=totals["missing"],
        unexpected=totals["unexpected"],
        stale=totals["stale"],
        changes=changes,
    )


@dataclass(frozen=True)
class RawKeys:
    """Item ids that appear twice in one raw partition's main table."""

    duplicated: int
    examples: tuple[str, ...]


def inspect_raw_keys(spark: SparkSession, plan: SnapshotPlan) -> RawKeys:
    """Root items that appear twice in one raw partition: why a written table repeats an item, when it does.

    One aggregate (rows, item-day pairs); only when rows outnumber pairs does a second query
    name the repeated items.
    """
    if not plan.raws:
        return RawKeys(duplicated=0, examples=())
    ids = reduce(
        DataFrame.unionByName,
        (read_table(spark, raw.tables[raw.main_table]).select("import_date", ITEM_ID) for raw in plan.raws),
    )
    [totals] = ids.agg(
        F.count(F.lit(1)).alias("rows"), F.count_distinct("import_date", ITEM_ID).alias("pairs")
    ).collect()
    if totals["rows"] == totals["pairs"]:
        return RawKeys(duplicated=0, examples=())
    repeated = ids.groupBy("import_date", ITEM_ID).count().where(F.col("count") > 1).select(ITEM_ID).distinct()
    examples = tuple(row[ITEM_ID] for row in repeated.orderBy(ITEM_ID).limit(5).collect())
    return RawKeys(duplicated=repeated.count(), examples=examples)
