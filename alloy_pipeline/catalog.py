"""Catalog registration: every raw and snapshot table queryable by name, in place of crawlers.

Each materialization registers its partitions right after committing them: the database, the
table (`<query>_<table>`, parquet, Hive-style partition keys), its current columns, and the
partition. Registration is idempotent, so re-running a day adds nothing, and the next run
repairs a catalog that a failed registration left behind.

Two backends: `spark` (the step session's own catalog: the engine's Hive metastore locally,
whatever the cluster is configured with otherwise, e.g. Glue on EMR) and `glue` (the AWS Glue
Data Catalog through boto3, which Athena reads).

In-process local Spark (no `SPARK_REMOTE`) has an in-memory catalog that ends with the step's
process. Registration still runs there, costing a few statements, and says in the step's log
that the tables it registered will not outlive the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import ClassVar, Literal

import dagster as dg
from pydantic import Field, PrivateAttr
from pyspark.sql import SparkSession

from alloy_pipeline.glue_catalog import GlueResource, register_in_glue, registrations_in_glue
from alloy_pipeline.lake import RAW, REFINED, Layer, TableOutput
from alloy_pipeline.partitions import Day
from alloy_pipeline.registration import Registration
from alloy_pipeline.resource_environment import held_environment
from alloy_pipeline.spark_catalog import KnownTable, register_in_session
from alloy_pipeline.tables import run_together


class CatalogError(RuntimeError):
    """A registration the catalog refused; the data it describes is already committed."""


def _warn_if_ephemeral(spark: SparkSession) -> None:
    if spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "in-memory":
        dg.get_dagster_logger().warning(
            "registering in local Spark's in-memory catalog, which ends with this step: "
            "set SPARK_REMOTE (e.g. `alloy-pipeline engine start`) to keep tables queryable by name"
        )


class CatalogResource(dg.ConfigurableResource):
    """Where tables are registered by name: Spark's catalog or the AWS Glue Data Catalog."""

    backend: Literal["spark", "glue"] = Field(default="spark", description="ALLOY_CATALOG: spark or glue.")
    raw_database: str = Field(default="alloy_raw", description="Database of the raw tables.")
    refined_database: str = Field(default="alloy_refined", description="Database of the snapshot tables.")
    glue: GlueResource = Field(
        default_factory=GlueResource, description="The Glue client's AWS settings, used when backend is glue."
    )

    _known: dict[str, KnownTable] = PrivateAttr(default_factory=dict)
    """The tables this step registered in, by name: later days skip the lookups."""

    ENVIRONMENT: ClassVar[dict[str, str]] = {
        "backend": "ALLOY_CATALOG",
        "raw_database": "ALLOY_RAW_DATABASE",
        "refined_database": "ALLOY_REFINED_DATABASE",
    }
    """The fields the code location sets from the environment (README, "Configuration")."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        held_environment(self, self.ENVIRONMENT)

    def register(self, spark: SparkSession, registrations: Sequence[Registration]) -> None:
        """Register partitions, a table each at once (`run_together`: each is a few round trips to
        the catalog); a refusal is a CatalogError that says the data is in place."""
        names = ", ".join(f"{r.qualified_name} ({'/'.join(r.partition_values)})" for r in registrations)
        try:
            if self.backend == "glue":
                client = self.glue.get_client()
                run_together({r.qualified_name: partial(register_in_glue, client, r) for r in registrations})
            else:
                if not self._known:
                    _warn_if_ephemeral(spark)
                self._known |= run_together(
                    {
                        r.qualified_name: partial(register_in_session, spark, r, self._known.get(r.qualified_name))
                        for r in registrations
                    }
                )
        except Exception as error:
            raise CatalogError(
                f"registering {names} in the {self.backend} catalog failed ({error}); the data is committed "
                "and the next successful run of this partition registers it"
            ) from error

    def database(self, layer: Layer) -> str:
        return self.raw_database if layer is RAW else self.refined_database

    def table_name(self, layer: Layer, query: str, table: str) -> str:
        database = self.database(layer)
        return f"{database}.{query}_{table}"

    def register_tables(
        self,
        spark: SparkSession,
        layer: Layer,
        query: str,
        day: Day,
        tables: Mapping[str, TableOutput],
        root: Callable[[str], str],
    ) -> None:
        """Register one day of each of a query's tables; `root(table)` is the table's location.

        Partitioned by the layer's keys: `import_*` for raw tables, `snapshot_*` for snapshots.
        """
        fields = day.fields(layer.partition_prefix)
        registrations = []
        for table, output in tables.items():
            database, name = self.table_name(layer, query, table).split(".")
            registrations.append(
                Registration(
                    database=database,
                    table=name,
                    location=root(table),
                    columns=output.column_types,
                    partition_keys=tuple(fields),
                    partition_values=tuple(fields.values()),
                    partition_location=output.path,
                )
            )
        self.register(spark, registrations)

    def queryable(self, spark: SparkSession) -> SparkSession:
        """`spark`, able to query this catalog's tables by name: a Glue catalog is replayed into it
        first, since local Spark has no Glue client (on EMR, set `ALLOY_CATALOG=spark` instead and
        the cluster reads Glue directly)."""
        if self.backend == "glue":
            databases = [self.database(RAW), self.database(REFINED)]
            for registration in registrations_in_glue(self.glue.get_client(), databases):
                register_in_session(spark, registration)
        return spark
