"""Under the real daemon of ``keel dev``, a day that lands flows by itself to its trigger decision.

The test starts ``keel dev`` on a home that ``keel run`` built (2013-02-01..03-14, so that a
champion exists), lands days with ``keel replay`` as the upstream system would, and reads
the warehouse and the Dagster instance until each day got where it should, within a bound.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from keel.core.warehouse import WarehouseBusy, connect_for_reading

pytestmark = pytest.mark.slow

BUILT = ("2013-02-01", "2013-03-14")
# On an idle machine a day flows in about two minutes; a shared one can take several times that.
BOUND_S = 15 * 60
# `dagster dev` started from a non-interactive shell ignores SIGINT and SIGTERM; the wrapper
# gives it the default handlers back, so that kill -INT stops it cleanly.
WRAPPER = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
           "signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])")
KEEL = str(Path(sys.executable).with_name("keel"))


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "DAGSTER_"))}
    return {**env, "KEEL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


def keel(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([KEEL, *args], env=_env(home), capture_output=True, text=True, timeout=900)
    if check and done.returncode not in (0, 1):
        pytest.fail(f"keel {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@pytest.fixture
def built_home(tmp_path) -> Path:
    """A home that keel run built over BUILT, in place: a copied home does not work yet (its
    MLflow experiment stores the absolute path of its artifacts). KEEL_TEST_DAEMON_TEMPLATE
    names a home already built that way, for a rerun without the set-up; the test runs in it
    and changes it."""
    if os.environ.get("KEEL_TEST_DAEMON_TEMPLATE"):
        return Path(os.environ["KEEL_TEST_DAEMON_TEMPLATE"])
    home = tmp_path / "keel"
    done = keel(home, "run", "--start", BUILT[0], "--end", BUILT[1])
    assert "promoted" in done.stdout, done.stdout[-3000:]
    return home


@contextmanager
def keel_dev(home: Path, log: Path) -> Iterator[subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, KEEL, "dev", "--port", str(port)],
                                env=_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("keel dev did not stop on SIGINT within 90 s")


def _rows(warehouse: Path, sql: str, params=()) -> list[tuple] | None:
    rows = _read(warehouse, [(sql, params)])
    return None if rows is None else rows[0]


def _read(warehouse: Path, reads: list[tuple[str, list]]) -> list[list[tuple]] | None:
    """Rows of each read through one connection, or None while a run writes (the next poll
    reads again). It holds the home's lock like every reader of Keel: an open file, even
    read-only, fails a writer."""
    try:
        with connect_for_reading(warehouse, wait_s=1) as con:
            out = []
            for sql, params in reads:
                try:
                    out.append(con.execute(sql, list(params)).fetchall())
                except duckdb.CatalogException:
                    out.append([])
            return out
    except WarehouseBusy:
        return None


def day_state(home: Path, day: dt.date) -> dict[str, object] | None:
    reads = {
        "features": ("select count(*) from marts.flight_features where flight_date = ?", [day]),
        "predictions": ("select count(*) from serving.predictions where flight_date = ?", [day]),
        "drift": ("select count(*) from monitoring.drift_daily where day = ?", [day]),
        "performance": ("select count(*) from monitoring.performance where day = ?", [day]),
        "decision": ("select count(*) from audit.retrain_decisions where day = ?", [day]),
        "flights_gate": ("select passed from audit.gate_status where table_name = 'flights' "
                         "and partition_date = ? order by evaluated_at desc limit 1", [day]),
    }
    rows = _read(home / "warehouse.duckdb", list(reads.values()))
    if rows is None:
        return None
    return {name: (r[0][0] if r else None) for name, r in zip(reads, rows)}


def feature_skew_passed(home: Path, day: dt.date) -> bool:
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=5000)
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.check_name == "feature_skew" and evaluation.partition == day.isoformat():
            return bool(evaluation.passed)
    return False


def wait_until(what: str, done: Callable[[], bool], log: Path, bound_s: float = BOUND_S,
               state: Callable[[], object] | None = None) -> float:
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if done():
            return time.monotonic() - started
        time.sleep(20)  # a reader holds the home for its read: poll gently
    where = f"; where it stands: {state()}" if state is not None else ""
    pytest.fail(f"{what} not reached within {bound_s:.0f} s{where}; keel dev's log ends:\n"
                f"{log.read_text()[-4000:]}")


def run_report(home: Path, last: int = 12) -> list[str]:
    """The instance's latest runs: status, job, partition range and the assets it selected."""
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    out = []
    for record in instance.get_run_records(limit=last):
        run, tags = record.dagster_run, record.dagster_run.tags
        span = tags.get("dagster/partition") or "..".join(
            t for t in (tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")) if t)
        selected = sorted("/".join(k.path) for k in (run.asset_selection or ()))
        out.append(f"{run.status.value} {run.job_name} {span} {selected}")
    return out


def day_report(home: Path, *days: dt.date) -> dict[str, object]:
    """What a day has, for a failure message: its rows per stage and its skew check."""
    report: dict[str, object] = {d.isoformat(): {**(day_state(home, d) or {"state": "warehouse busy"}),
                                                 "feature_skew_passed": feature_skew_passed(home, d)} for d in days}
    report["runs"] = run_report(home)
    return report


def flowed(home: Path, day: dt.date) -> bool:
    state = day_state(home, day)
    return bool(state and state["flights_gate"] and all(
        state[k] for k in ("features", "predictions", "drift", "performance", "decision")
    ) and feature_skew_passed(home, day))


def test_landed_days_flow_under_the_real_daemon_and_a_failed_gate_stops_its_day(built_home, tmp_path):
    # Regression: under the real daemon a landed day went no further than ingestion:
    # in_latest_time_window(60 days) counted from the calendar's last day, not the newest landed.
    home = built_home
    log = tmp_path / "keel-dev.log"
    d15, d16, d17, d18 = (dt.date(2013, 3, d) for d in (15, 16, 17, 18))
    with keel_dev(home, log) as proc:
        keel(home, "replay", "--start", "2013-03-15", "--end", "2013-03-16")
        took = wait_until("2013-03-15 and 03-16 through to the trigger's decision",
                          lambda: flowed(home, d15) and flowed(home, d16), log,
                          state=lambda: day_report(home, d15, d16))
        print(f"03-15..16 flowed in {took:.0f} s")
        landed = {d: day_state(home, d)["features"] for d in (d15, d16)}
        expected = _rows(home / "warehouse.duckdb",
                         "select _partition_date, count(*) from validated.flights "
                         "where _partition_date in (?, ?) group by 1", [d15, d16])
        assert landed == dict(expected), "every valid flight of each day has its feature row"

        # A day whose flights fail their gate stops there; the day before it, missing until
        # then, lands late and flows.
        keel(home, "replay", "--start", "2013-03-18", "--fault", "missing_column", "--fault-date", "2013-03-18")
        wait_until("the gate verdict of 2013-03-18",
                   lambda: (day_state(home, d18) or {}).get("flights_gate") is False, log)
        keel(home, "replay", "--start", "2013-03-17")
        took = wait_until("2013-03-17, landed late, through to the trigger's decision",
                          lambda: flowed(home, d17), log, state=lambda: day_report(home, d17, d18))
        print(f"03-17 (late) flowed in {took:.0f} s")
        stopped = day_state(home, d18)
        assert stopped["flights_gate"] is False
        assert stopped["features"] == 0 and stopped["predictions"] == 0

        # keel run beside the live daemon: it waits for the daemon's run in progress (if any),
        # and the daemon's sensors skip while it writes; nobody meets DuckDB's lock.
        before = {d: day_state(home, d)["predictions"] for d in (d15, d16)}
        done = keel(home, "run", "--start", "2013-03-15", "--end", "2013-03-16")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "Could not set lock" not in done.stderr
        # keel run's materializations make the daemon's automation run their downstream again,
        # which holds the warehouse for minutes on a loaded machine: wait as long as any step.
        wait_until("a readable warehouse after keel run", lambda: day_state(home, d15) is not None, log)
        assert {d: day_state(home, d)["predictions"] for d in (d15, d16)} == before
        assert proc.poll() is None, "keel dev is still running"
    assert proc.returncode == 0 or proc.returncode == -signal.SIGINT
