"""What a catalog needs to know to make one partition of one table queryable by name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Registration(BaseModel):
    """One partition of one table, as a catalog needs to know it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database: str
    table: str
    location: str
    columns: tuple[tuple[str, str], ...]
    partition_keys: tuple[str, ...]
    partition_values: tuple[str, ...]
    partition_location: str

    @property
    def data_columns(self) -> list[tuple[str, str]]:
        return [(name, kind) for name, kind in self.columns if name not in self.partition_keys]

    @property
    def qualified_name(self) -> str:
        return f"{self.database}.{self.table}"
