"""The second use case, end to end: half-hourly electricity demand, configured only by
``usecases/electricity.py`` and ``usecases/electricity_dbt``.

``keel run`` and the monitoring job run as their own processes with ``KEEL_USECASE`` set, as a
team would run them: the definitions are built for one use case per process. Six weeks of
Victoria's winter of 2014 land (with the upstream's camelCase headers), pass the gates, become
features and labels, train and promote three models, are scored and monitored.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]
KEEL = Path(sys.executable).parent / "keel"
START, END = "2014-06-02", "2014-07-13"
DAYS, HALF_HOURS = 42, 48

pytestmark = pytest.mark.slow

MONITOR = textwrap.dedent("""
    import sys
    import dagster as dg
    from definitions import defs

    instance = dg.DagsterInstance.get()
    # The champion's reference first (automation builds it once per new champion), then the days.
    reference = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(["monitoring", "reference"])],
    )
    # Evidently's HTML report takes seconds a day and is Evidently's, not the use case's.
    result = defs.resolve_job_def("monitor_daily").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"monitoring__feature_drift": {"config": {"evidently_html": "never"}}}},
        tags={"dagster/asset_partition_range_start": sys.argv[1],
              "dagster/asset_partition_range_end": sys.argv[2]},
    )
    print("monitored" if reference.success and result.success else "monitoring failed")
""")


def _environment(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return {**keep, "KEEL_USECASE": "usecases.electricity", "KEEL_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"), "DO_NOT_TRACK": "true",
            "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def electricity_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("electricity") / "keel"
    env = _environment(home)
    run = subprocess.run([str(KEEL), "run", "--start", START, "--end", END], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    (home / "run.txt").write_text(run.stdout)
    monitor = subprocess.run([sys.executable, "-c", MONITOR, START, END], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert "monitored" in monitor.stdout, monitor.stdout[-3000:] + monitor.stderr[-3000:]
    return home


def _query(home: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_camel_case_files_land_under_the_contract_columns_and_pass_every_gate(electricity_home):
    header = (electricity_home / "landing" / "demand" / f"{START}.csv").read_text().splitlines()[0]
    assert header.replace('"', "") == "IntervalStart,Demand,WorkDay,Temperature"
    assert _query(electricity_home, "select count(*), count(distinct _partition_date), count(demand_gw) "
                                    "from validated.demand") == [(DAYS * HALF_HOURS, DAYS, DAYS * HALF_HOURS)]
    # Every file column matched a contract column by its rename: nothing was left over in raw._extra.
    assert _query(electricity_home, "select count(*), count(*) filter (where _extra is not null) "
                                    "from raw.demand") == [(DAYS * HALF_HOURS, 0)]
    gates = _query(electricity_home, "select count(*), count(*) filter (where passed) from audit.gate_status")
    assert gates == [(DAYS, DAYS)]


def test_the_use_case_marts_hold_every_half_hour_with_its_label(electricity_home):
    features = _query(electricity_home, "select count(*), count(distinct market_date), count(slot_peak_rate_28d) "
                                        "from marts.demand_features")
    labels = _query(electricity_home, "select count(*), count(*) filter (where is_peak), "
                                      "count(*) filter (where (demand_gw >= 5.0) <> is_peak) from marts.demand_labels")
    assert features[0][:2] == (DAYS * HALF_HOURS, DAYS)
    assert features[0][2] == (DAYS - 1) * HALF_HOURS  # the first day has no history yet
    assert labels[0][0] == DAYS * HALF_HOURS and 0 < labels[0][1] < labels[0][0] and labels[0][2] == 0
    summary = (electricity_home / "run.txt").read_text()
    assert f"marts.demand_features      {DAYS * HALF_HOURS:,} rows over {DAYS} days" in summary


def test_three_models_are_promoted_and_score_every_half_hour(electricity_home):
    summary = (electricity_home / "run.txt").read_text()
    assert "promoted automatically" in summary, summary
    scored = _query(electricity_home, "select count(*), count(distinct interval_id), min(market_date), "
                                      "max(market_date), count(*) filter (where tier = 'primary'), "
                                      "count(*) filter (where score between 0 and 1) from serving.predictions")
    assert scored[0][:2] == (DAYS * HALF_HOURS, DAYS * HALF_HOURS)
    assert (str(scored[0][2]), str(scored[0][3])) == (START, END)
    assert scored[0][4] == scored[0][5] == DAYS * HALF_HOURS


def test_every_scored_day_is_monitored_for_drift_and_performance(electricity_home):
    drift = _query(electricity_home, "select count(distinct day), min(rows), max(n_features) from monitoring.drift_daily")
    performance = _query(electricity_home, "select count(distinct day), min(rows), max(roc_auc) from monitoring.performance")
    assert drift[0][:2] == (DAYS, HALF_HOURS) and drift[0][2] > 0
    assert performance[0][0] == DAYS and performance[0][1] == HALF_HOURS
    assert 0.5 < performance[0][2] <= 1.0
    status = subprocess.run([str(KEEL), "status", "--json"], cwd=ROOT, env=_environment(electricity_home),
                            capture_output=True, text=True, timeout=300)
    doc = json.loads(status.stdout)
    assert doc["deployment"]["usecase"] == "usecases.electricity"
    assert doc["deployment"]["serving_keys"] == {"key": "interval_id", "date_column": "market_date"}
    assert doc["deployment"]["retraining"]["min_auc_rows"] == 300
