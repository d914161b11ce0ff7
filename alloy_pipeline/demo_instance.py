"""The Dagster instance of a data folder, `<data>/dagster_home`, which the demo makes afresh and
`dev` serves: where it is, what the demo records there, and the environment `dagster dev` gets."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

DEMO_API_KEY = "demo-key"
INSTANCE_FOLDER = "dagster_home"
"""The Dagster instance of a data folder, `<data>/dagster_home`: the demo records its runs there and
`dev` serves it, whatever DAGSTER_HOME says (the demo wipes it, so it must be the demo's own)."""
DEMO_RECORD = "alloy-demo.json"
"""The demo's record in its instance folder: its calendar, for `dev`, and the mark that the folder
is the demo's to wipe."""
TELEMETRY_FOLDER = ".telemetry"
"""Dagster's id of an instance, kept when the demo wipes its instance: a new one would print
Dagster's telemetry notice and welcome on every demo."""


class DemoRecord(BaseModel):
    """What a demo leaves beside its runs, in `<data>/dagster_home/alloy-demo.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partitions_start: dt.date
    """The demo's first day: `dev` starts the calendar there, so the UI shows the demo's days as all
    of the partitions, not 3 of a thousand since 2024."""
    days: list[dt.date]


def project_root() -> Path:
    """The checkout the package is installed from (editable, `make install`): `deploy/` and
    `workspace.yaml` live there, beside the package, and are not part of it."""
    return Path(__file__).resolve().parent.parent


def instance_config() -> Path:
    """The project's `deploy/dagster.yaml`, which the demo's and `dev`'s instances run with."""
    path = project_root() / "deploy" / "dagster.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"the instance configuration {path} is missing: `alloy-pipeline demo` and `dev` run from a checkout "
            "of the repository, installed with `pip install -e .` (`make install`)"
        )
    return path


def example_queries() -> Path:
    """The checkout's `aqs_queries/`: the demo's and `dev`'s AQS files when ALLOY_AQS_DIR is unset,
    from whatever folder they are run."""
    return project_root() / "aqs_queries"


def demo_record(home: Path) -> DemoRecord | None:
    """The record of the demo whose instance `home` is, or None when no demo made it."""
    path = home / DEMO_RECORD
    if home.is_symlink() or not path.is_file():
        return None
    try:
        return DemoRecord.model_validate_json(path.read_text())
    except ValidationError as error:
        raise ValueError(f"{path} is not a demo's record ({error.error_count()} errors): remove it") from error


def make_data_option(data: Path) -> str:
    """The `DATA=` a make command needs to name the data folder `data` (none for the default)."""
    return "" if data == Path("data").resolve() else f" DATA={data}"


def fresh_demo_instance(home: Path, record: DemoRecord) -> None:
    """Make `home` a new, empty instance with the project's configuration and `record`.

    Only a folder a demo made (it holds the demo's record) is wiped. Anything else found there (a
    folder `make dev` used before demos had records, a link to someone's DAGSTER_HOME) is moved
    aside, never deleted, and the demo says where.
    """
    config = instance_config()
    if demo_record(home) is not None:
        for entry in home.iterdir():
            if entry.name == TELEMETRY_FOLDER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif home.is_dir() and not home.is_symlink() and not any(home.iterdir()):
        home.rmdir()
    elif home.exists() or home.is_symlink():
        aside = home.with_name(f"{home.name}.before-demo-{dt.datetime.now():%Y%m%d-%H%M%S}")
        home.rename(aside)
        print(f"Moved {home}, which no demo made, to {aside}: the demo starts its instance afresh")
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, home / "dagster.yaml")
    (home / DEMO_RECORD).write_text(record.model_dump_json(indent=2) + "\n")


def dev_environment(data: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment `dev` gives `dagster dev`, less the engine and the simulator: `environ`, with
    the instance, lake and AQS folder of `data` and the calendar of the demo recorded there.

    The instance is always `<data>/dagster_home`. The others are defaults: a variable set in
    `environ` (a user's own ALLOY_PARTITIONS_START, say) wins. Paths are absolute, since the
    code server and run workers need not share the caller's working directory.
    """
    home = data / INSTANCE_FOLDER
    defaults = {"ALLOY_RAW_ZONE": str(data / "raw-zone"), "ALLOY_REFINED_ZONE": str(data / "refined-zone")}
    record = demo_record(home)
    if record is not None:
        defaults["ALLOY_PARTITIONS_START"] = record.partitions_start.isoformat()
    aqs_dir = Path(environ.get("ALLOY_AQS_DIR") or example_queries()).resolve()
    return defaults | dict(environ) | {"ALLOY_AQS_DIR": str(aqs_dir), "DAGSTER_HOME": str(home)}
