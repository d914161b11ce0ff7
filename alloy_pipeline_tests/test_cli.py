"""`alloy-pipeline rebuild`, `pools` and `engine status` as a script calls them: arguments in, exit status, output
and the runs launched out."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from alloy_pipeline import cli
from alloy_pipeline.demo_instance import instance_config
from alloy_pipeline.engine import EngineSettings
from alloy_pipeline.pools import ALLOY_POOL, snapshot_pool
from alloy_pipeline_tests.harness import REPO, Pipeline

QUERY = "gully_inspections"
"""The example query without joins: one table per day, the least Spark work a snapshot day can be."""
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]
START, END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def dagster_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty folder of the test's own as DAGSTER_HOME, where the command records its runs."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def launched(home: Path) -> list[dg.RunRecord]:
    """The runs recorded in the instance at `home`, oldest first."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(reversed(instance.get_run_records()))


def configured(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The environment a user sets for the pipeline's lake, catalog and engine, with two days a run,
    and DAGSTER_HOME, which is returned."""
    for name in [name for name in os.environ if name.startswith("ALLOY_")]:
        monkeypatch.delenv(name)
    catalog = pipeline.session_catalog()
    for name, value in {
        "ALLOY_AQS_DIR": str(pipeline.aqs_dir),
        "ALLOY_RAW_ZONE": pipeline.lake.raw_zone,
        "ALLOY_REFINED_ZONE": pipeline.lake.refined_zone,
        "ALLOY_MAPPING_LOCATION": pipeline.mapping_location,
        "ALLOY_RAW_DATABASE": catalog.raw_database,
        "ALLOY_REFINED_DATABASE": catalog.refined_database,
        "ALLOY_SNAPSHOT_DAYS_PER_RUN": "2",
        "SPARK_REMOTE": pipeline.remote,
    }.items():
        monkeypatch.setenv(name, value)
    return dagster_home(monkeypatch, tmp_path)


def test_a_rebuild_longer_than_a_run_is_split_into_runs_of_the_configured_days_in_date_order(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Days 2 and 3 carry day 1 forward: only day 1 needs an extract. A rebuild from a day before
    any raw partition fails at that day, says so last (after Dagster's own log of the failed
    step) and stops."""
    pipeline.keep_only("Gully Inspections").run(DAYS[0], group="alloy_raw")
    home = configured(pipeline, monkeypatch, tmp_path)

    assert cli.main(["rebuild", "--from", DAYS[0], "--to", DAYS[-1]]) == 0
    runs = launched(home)
    assert [(run.dagster_run.tags[START], run.dagster_run.tags[END]) for run in runs] == [
        (DAYS[0], DAYS[1]),
        (DAYS[2], DAYS[2]),
    ]
    assert {run.dagster_run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    committed_by = {manifest.day.isoformat(): manifest.run_id for manifest in pipeline.lake.snapshot_manifests(QUERY)}
    assert committed_by == {day: runs[number // 2].dagster_run.run_id for number, day in enumerate(DAYS)}
    assert capsys.readouterr().out.splitlines() == [
        f"rebuilt {DAYS[0]}..{DAYS[1]} (2 days) in run {runs[0].dagster_run.run_id}",
        f"rebuilt {DAYS[2]}..{DAYS[2]} (1 day) in run {runs[1].dagster_run.run_id}",
    ]

    assert cli.main(["rebuild", "--from", "2024-02-28", "--to", DAYS[-1]]) == 1
    failed = launched(home)[2:]
    assert [run.dagster_run.status for run in failed] == [dg.DagsterRunStatus.FAILURE], "no run after a failed one"
    output = capsys.readouterr()
    assert output.out == ""
    line = output.err.splitlines()[-1]
    assert line.startswith(f"alloy-pipeline rebuild: run {failed[0].dagster_run.run_id} over 2024-02-28..2024-02-29")
    assert f"query {QUERY}, partition 2024-02-28: the run over 2024-02-28..2024-02-29 stopped at this day" in line
    assert committed_by == {m.day.isoformat(): m.run_id for m in pipeline.lake.snapshot_manifests(QUERY)}


def test_a_rebuild_to_a_day_before_its_first_is_refused_and_launches_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    home = dagster_home(monkeypatch, tmp_path)
    assert cli.main(["rebuild", "--from", DAYS[-1], "--to", DAYS[0]]) == 2
    assert capsys.readouterr().err == f"alloy-pipeline rebuild: --to {DAYS[0]} is before --from {DAYS[-1]}\n"
    assert list(home.iterdir()) == [], "nothing launched: the instance was not even opened"


def test_a_rebuild_without_queries_says_so_and_launches_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "aqs"
    empty.mkdir()
    monkeypatch.setenv("ALLOY_AQS_DIR", str(empty))
    home = dagster_home(monkeypatch, tmp_path)
    assert cli.main(["rebuild", "--from", DAYS[0], "--to", DAYS[-1]]) == 2
    assert capsys.readouterr().err == f"alloy-pipeline rebuild: AQS folder {empty} holds no *.json query files\n"
    assert list(home.iterdir()) == []


def test_engine_status_exits_0_and_prints_the_url_while_the_folders_engine_runs(
    engine: EngineSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["engine", "status", "--data", str(engine.home.parent), "--port", str(engine.port)]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"{engine.url}\n" and printed.err.startswith("Spark engine running (pid ")


def test_engine_status_exits_1_when_no_engine_runs_from_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["engine", "status", "--data", str(tmp_path)]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == f"no Spark engine is running from {tmp_path.resolve() / 'engine'}\n"


def test_pools_limits_every_querys_snapshot_pool_to_one_and_says_what_each_was(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the project's instance configuration, whose `default_limit` (4, for `alloy_api`) would
    otherwise let four steps build one query's snapshots at once. A limit set by hand is corrected,
    a second call changes nothing, and a pool of no query is left alone."""
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    home = dagster_home(monkeypatch, tmp_path)
    shutil.copyfile(instance_config(), home / "dagster.yaml")
    pools = [snapshot_pool(query) for query in ("dw_container_job", "graffiti_reports", "gully_inspections")]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert {info.limit for info in instance.event_log_storage.get_concurrency_infos(pools).values()} == {4}
        instance.event_log_storage.set_concurrency_slots(pools[1], 3)
        instance.event_log_storage.set_concurrency_slots("alloy_snapshot_retired_query", 2)

    assert cli.main(["pools"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{pools[0]}: 1, was none of its own",
        f"{pools[1]}: 1, was 3",
        f"{pools[2]}: 1, was none of its own",
    ]
    assert cli.main(["pools"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{pool}: 1, as it was" for pool in pools]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        infos = instance.event_log_storage.get_concurrency_infos([*pools, "alloy_snapshot_retired_query", ALLOY_POOL])
    assert [(infos[pool].limit, infos[pool].using_default_limit) for pool in pools] == [(1, False)] * 3
    assert infos["alloy_snapshot_retired_query"].limit == 2
    assert (infos[ALLOY_POOL].limit, infos[ALLOY_POOL].using_default_limit) == (4, True)


def test_pools_without_dagster_home_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A throwaway instance would take the limits and forget them."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("ALLOY_AQS_DIR", str(REPO / "aqs_queries"))
    assert cli.main(["pools"]) == 2
    assert capsys.readouterr().err.startswith("alloy-pipeline pools: DAGSTER_HOME is not set")
