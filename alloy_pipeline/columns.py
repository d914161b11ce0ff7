"""Column names: the established header cleaning, kept exact so existing mapping files still match."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

_BOM = "\ufeff"


def clean_name(header: str) -> str:
    """Lower-case, each run of non-alphanumerics to `_`, one trailing `_` dropped, BOM ignored."""
    cleaned = re.sub(r"[^a-z0-9]+", "_", header.replace(_BOM, "").lower())
    return cleaned[:-1] if cleaned.endswith("_") else cleaned


def clean_headers(headers: list[str]) -> list[str]:
    """Clean a CSV header row, keeping duplicates distinct the way Spark's CSV reader does.

    Spark suffixes every occurrence of a repeated header with its column index (`notes6`,
    `notes9`) and names an empty header `_c<index>`; the old jobs cleaned names after that.
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


def read_header(csv_file: Path) -> list[str]:
    """The header row of a CSV file (BOM tolerated); an empty file is an error naming it."""
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        row = next(csv.reader(handle), None)
    if not row:
        raise ValueError(f"{csv_file.name}: the CSV has no header row")
    return row
