"""Column names: the established header cleaning, kept exact so existing mapping files still match,
then made unique, non-empty and clear of the columns the pipeline adds itself.

The naming rule, in order (README "Columns" carries the same wording):

1. The established cleaning, unchanged: a UTF-8 BOM is ignored; a header repeated (ignoring case)
   takes its 0-based column index (`notes6`, `notes9`) and an empty header is named `_c<index>`,
   as Spark's CSV reader does; then each name is lower-cased, each run of non-alphanumerics
   becomes `_`, one trailing `_` is dropped; a name repeated after cleaning takes its column index.
2. The key column, the first whose header cleans to `item_id`, is named `item_id`.
3. Every other name that step 1 made unique, non-empty and not reserved is kept as it is.
   Reserved: `item_id` and the columns the pipeline adds (`import_*` and `snapshot_*` below).
4. A name step 1 gave to several columns is kept by the column whose header cleans to exactly
   that name, or else by the leftmost of them.
5. The remaining columns, left to right: an empty name becomes `_c<index>`, a reserved name
   gets the suffix `_alloy` (`import_date_alloy`), a repeated name stays as it is; then, while
   that name is taken, `_2`, `_3`, … is appended (`a_b2_2`).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_BOM = "\ufeff"

KEY_COLUMN = "item_id"
IMPORT_COLUMNS = ("import_year", "import_month", "import_day", "import_date", "import_datetime", "import_timestamp")
"""Added to every raw table from the partition and the export's request time."""
SNAPSHOT_COLUMNS = ("snapshot_year", "snapshot_month", "snapshot_day", "snapshot_date")
"""Added to every snapshot table from its partition."""
RESERVED_COLUMNS = frozenset({KEY_COLUMN, *IMPORT_COLUMNS, *SNAPSHOT_COLUMNS})
"""Names an Alloy attribute may not take: the pipeline's own columns would replace or clash with it.

Only these exact names: an attribute cleaned to `import_notes` kept its name before this rule
existed, and mapping files may use it.
"""
RESERVED_SUFFIX = "_alloy"

Rule = Literal["key", "duplicate", "empty", "reserved"]


class RenamedHeader(BaseModel):
    """A column whose name differs from the established cleaning's, and the rule that chose it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(description="0-based position of the column in the CSV header.")
    header: str = Field(description="The header as received (BOM dropped).")
    established: str = Field(description="The name the established cleaning gives ('' when nothing was left).")
    name: str = Field(description="The column's name in the lake.")
    rule: Rule = Field(description="Which step of the naming rule chose the name.")


class ColumnNames(BaseModel):
    """A CSV's column names in the lake, and every column named differently from the established cleaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: tuple[str, ...]
    renamed: tuple[RenamedHeader, ...] = ()


def clean_name(header: str) -> str:
    """Lower-case, each run of non-alphanumerics to `_`, one trailing `_` dropped, BOM ignored."""
    cleaned = re.sub(r"[^a-z0-9]+", "_", header.replace(_BOM, "").lower())
    return cleaned[:-1] if cleaned.endswith("_") else cleaned


def established_names(headers: Sequence[str]) -> list[str]:
    """Step 1 of the rule: the names the old jobs gave, which existing mapping files use.

    Spark suffixes every occurrence of a repeated header with its column index (`notes6`,
    `notes9`) and names an empty header `_c<index>`; the old jobs cleaned names after that. The
    result can still repeat a name, be empty, or take a reserved name.
    """
    raw = [header.replace(_BOM, "") for header in headers]
    counts = Counter(name.lower() for name in raw if name)
    spark_names = [
        f"_c{index}" if not name else f"{name}{index}" if counts[name.lower()] > 1 else name
        for index, name in enumerate(raw)
    ]
    cleaned = [clean_name(name) for name in spark_names]
    repeated = {name for name, count in Counter(cleaned).items() if count > 1}
    return [f"{name}{index}" if name in repeated else name for index, name in enumerate(cleaned)]


def _usable(name: str) -> bool:
    return bool(name) and name not in RESERVED_COLUMNS


def _rule(established: str, *, is_key: bool) -> Rule:
    if is_key:
        return "key"
    if not established:
        return "empty"
    return "reserved" if established in RESERVED_COLUMNS else "duplicate"


def name_columns(headers: Sequence[str]) -> ColumnNames:
    """Unique, non-empty, unreserved column names for a CSV header row (the module's rule).

    A name that the established cleaning already made usable never changes, so mapping files
    written for it keep working; `renamed` lists every other column, for the raw manifest.
    """
    established = established_names(headers)
    key = next((index for index, header in enumerate(headers) if clean_name(header) == KEY_COLUMN), None)
    names: dict[int, str] = {} if key is None else {key: KEY_COLUMN}
    holders: dict[str, list[int]] = {}
    for index, name in enumerate(established):
        if index != key and _usable(name):
            holders.setdefault(name, []).append(index)
    for name, indexes in holders.items():
        own = [index for index in indexes if clean_name(headers[index]) == name]
        names[(own or indexes)[0]] = name
    taken = set(names.values())
    for index, name in enumerate(established):
        if index in names:
            continue
        wanted = f"_c{index}" if not name else f"{name}{RESERVED_SUFFIX}" if name in RESERVED_COLUMNS else name
        candidate, number = wanted, 1
        while candidate in taken:
            number += 1
            candidate = f"{wanted}_{number}"
        names[index] = candidate
        taken.add(candidate)
    columns = tuple(names[index] for index in range(len(headers)))
    renamed = tuple(
        RenamedHeader(
            index=index,
            header=headers[index].replace(_BOM, ""),
            established=established[index],
            name=columns[index],
            rule=_rule(established[index], is_key=index == key),
        )
        for index in range(len(headers))
        if columns[index] != established[index]
    )
    return ColumnNames(columns=columns, renamed=renamed)


def clean_headers(headers: Sequence[str]) -> list[str]:
    """The column names of `name_columns`, for callers that do not record the renames."""
    return list(name_columns(headers).columns)


def read_header(csv_file: Path) -> list[str]:
    """The header row of a CSV file (BOM tolerated); an empty file is an error naming it."""
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        row = next(csv.reader(handle), None)
    if not row:
        raise ValueError(f"{csv_file.name}: the CSV has no header row")
    return row
