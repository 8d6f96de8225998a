"""Shared fixtures: a Keel home per test, a replayed landing zone, and in-process runs.

Every test gets its own ``KEEL_HOME`` (and ``DAGSTER_HOME`` under it), so tests run in
parallel under pytest-xdist without sharing a DuckDB file. The twelve days of March 2013 are
replayed once per worker into a template and copied per test: a copy takes milliseconds.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from keel.landing import file_for
from keel.replay import replay
from keel.settings import KeelPaths, load_usecase, prepare_environment



def pytest_configure(config):
    # Keel stands on per-partition checks and single-run backfills on purpose (see
    # definitions.py); Dagster's preview/beta notices about them are not test findings.
    for category in ("dagster.PreviewWarning", "dagster.BetaWarning"):
        config.addinivalue_line("filterwarnings", f"ignore::{category}")


USECASE = load_usecase()
FIRST_DAY = dt.date(2013, 3, 1)
LAST_DAY = dt.date(2013, 3, 12)
FAULT_DAY = dt.date(2013, 3, 10)
DAYS = USECASE.days(FIRST_DAY, LAST_DAY)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture(scope="session")
def replayed_template(tmp_path_factory) -> Path:
    """A Keel home whose landing zone holds 2013-03-01..2013-03-12 and the snapshots, clean."""
    home = tmp_path_factory.mktemp("replayed_template") / "keel"
    replay(USECASE, KeelPaths(home).landing, FIRST_DAY, LAST_DAY)
    return home


@pytest.fixture
def keel_home(tmp_path, monkeypatch) -> KeelPaths:
    """An empty Keel home for this test, with Dagster's home inside it."""
    home = tmp_path / "keel"
    monkeypatch.setenv("KEEL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return prepare_environment()


@pytest.fixture
def replayed_home(keel_home, replayed_template) -> KeelPaths:
    """This test's Keel home, with the template's twelve clean days already landed."""
    shutil.copytree(replayed_template / "landing", keel_home.landing, dirs_exist_ok=True)
    return keel_home


@pytest.fixture
def pipeline(keel_home) -> Pipeline:
    return Pipeline(keel_home)


def data_lines(path: Path) -> int:
    """Lines after the header, counting a last line that has no newline."""
    content = path.read_bytes()
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return max(len(lines) - 1, 0)


def query(warehouse: Path, sql: str, params: Sequence = ()) -> list[tuple]:
    """Rows of one read-only query; the connection is closed before returning."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


class Pipeline:
    """Keel's jobs run in process against one Keel home, and its warehouse read back."""

    def __init__(self, paths: KeelPaths):
        self.paths = paths
        self.instance = dg.DagsterInstance.ephemeral()

    def _job(self, name: str):
        from definitions import defs

        return defs.resolve_job_def(name)

    def ingest_days(self, start: dt.date, end: dt.date) -> dg.ExecuteInProcessResult:
        """``ingest_daily`` over ``start..end`` as one run, as the sensor launches it."""
        return self._job("ingest_daily").execute_in_process(
            instance=self.instance,
            tags={RANGE_START: start.isoformat(), RANGE_END: end.isoformat()},
            raise_on_error=False,
        )

    def ingest_day(self, day: dt.date) -> dg.ExecuteInProcessResult:
        return self._job("ingest_daily").execute_in_process(
            instance=self.instance, partition_key=day.isoformat(), raise_on_error=False
        )

    def ingest_snapshots(self) -> dg.ExecuteInProcessResult:
        return self._job("ingest_snapshots").execute_in_process(
            instance=self.instance, raise_on_error=False
        )

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return query(self.paths.warehouse, sql, params)

    def partition_stats(self, table: str) -> dict[dt.date | None, tuple[int, int, int]]:
        """(landed, valid, quarantined) per partition, from audit.partition_stats."""
        rows = self.query(
            "select partition_date, landed, valid, quarantined from audit.partition_stats "
            "where table_name = ?",
            [table],
        )
        return {day: (landed, valid, quarantined) for day, landed, valid, quarantined in rows}

    def gate_status(self) -> dict[tuple[str, dt.date | None], tuple[bool, str]]:
        rows = self.query("select table_name, partition_date, passed, failed_checks from audit.gate_status")
        return {(table, day): (passed, failed) for table, day, passed, failed in rows}

    def check_results(self) -> dict[tuple[str, dt.date | None, str], tuple[bool, bool, str]]:
        """(passed, blocking, message) per table, partition and gate, from audit.check_results."""
        rows = self.query(
            "select table_name, partition_date, check_name, passed, blocking, message "
            "from audit.check_results"
        )
        return {(t, d, name): (passed, blocking, message) for t, d, name, passed, blocking, message in rows}

    def landing_file(self, table: str, day: dt.date | None) -> Path:
        return file_for(self.paths.landing, USECASE.table(table), day)
