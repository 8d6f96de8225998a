"""What a use case may leave open: the end of its calendar (its days run up to today) and its
replay source (its upstream system writes the landing zone itself); and the thresholds a
small use case sets for its own volume.

The use cases here are electricity's, with ``end`` or ``source`` taken away, built in a
scratch module that ``KEEL_USECASE`` names, as a team's module would be.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from assets.partitions import partitions_for
from keel.app.cli import main
from keel.core import config
from keel.core.config import current
from keel.core.policies import TriggerPolicy
from keel.data.replay import replay
from keel.monitoring.trigger import decide_retrain
from usecases.electricity import USECASE as ELECTRICITY

ROOT = Path(__file__).resolve().parents[1]
KEEL = Path(sys.executable).parent / "keel"
HALF_HOURS = 48


def today_in(timezone: str) -> dt.date:
    return dt.datetime.now(ZoneInfo(timezone)).date()


def scratch_module(tmp_path: Path, monkeypatch, name: str, changes: str) -> Path:
    """A use case module ``name`` that is electricity's with ``changes`` (keyword arguments of
    ``dataclasses.replace``), named by KEEL_USECASE; returns its folder."""
    folder = tmp_path / "mods"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(f"""
        import dataclasses
        from usecases.electricity import USECASE as ELECTRICITY

        USECASE = dataclasses.replace(ELECTRICITY, {changes})
    """))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("KEEL_USECASE", name)
    return folder


@pytest.fixture
def clean_home(tmp_path, monkeypatch) -> Path:
    """A Keel home of its own and none of the variables the deployment reads."""
    for variable in config.env.DEPLOYMENT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    home = tmp_path / "keel"
    home.mkdir()
    monkeypatch.setenv("KEEL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return home


@pytest.fixture
def open_ended(clean_home, tmp_path, monkeypatch):
    scratch_module(tmp_path, monkeypatch, "open_electricity", "end=None")
    yield current().usecase
    sys.modules.pop("open_electricity", None)


@pytest.fixture
def sourceless(clean_home, tmp_path, monkeypatch):
    folder = scratch_module(tmp_path, monkeypatch, "sourceless_electricity", "end=None, source=None")
    yield folder
    sys.modules.pop("sourceless_electricity", None)


# --------------------------------------------------------------------------------------------
# An open-ended calendar


def test_an_open_ended_calendar_runs_to_today_in_the_use_cases_time_zone():
    usecase = dataclasses.replace(ELECTRICITY, end=None)
    today = today_in("Australia/Brisbane")
    assert usecase.last_day() == today
    last_week = usecase.days(today - dt.timedelta(days=6))
    assert len(last_week) == 7 and last_week[-1] == today
    assert len(usecase.days()) == (today - dt.date(2014, 1, 1)).days + 1
    with pytest.raises(ValueError, match=rf"outside electricity_peaks's calendar 2014-01-01\.\.today \({today}\)"):
        usecase.days(today, today + dt.timedelta(days=1))
    # A closed calendar keeps its end, and says so.
    with pytest.raises(ValueError, match=r"calendar 2014-01-01\.\.2014-12-31"):
        ELECTRICITY.days(dt.date(2014, 12, 31), dt.date(2015, 1, 1))


def test_an_open_ended_calendar_has_daily_partitions_without_an_end_up_to_today():
    today = today_in("Australia/Brisbane")
    partitions = partitions_for(dataclasses.replace(ELECTRICITY, end=None))
    assert partitions.end is None and partitions.timezone == "Australia/Brisbane"
    keys = partitions.get_partition_keys()
    # Today's partition exists (the day in progress), as UseCase.days has it; tomorrow's does not.
    assert keys[0] == "2014-01-01" and keys[-1] == today.isoformat()
    assert len(keys) == (today - dt.date(2014, 1, 1)).days + 1
    closed = partitions_for(ELECTRICITY).get_partition_keys()
    assert (closed[0], closed[-1], len(closed)) == ("2014-01-01", "2014-12-31", 365)


def test_run_and_replay_after_today_on_an_open_ended_calendar_exit_2(open_ended, clean_home, capsys):
    tomorrow = (today_in("Australia/Brisbane") + dt.timedelta(days=1)).isoformat()
    assert open_ended.end is None
    assert main(["run", "--start", tomorrow]) == 2
    err = capsys.readouterr().err
    assert "keel run: days" in err and "outside electricity_peaks's calendar 2014-01-01..today (" in err
    assert main(["replay", "--start", tomorrow]) == 2
    assert "keel replay: days" in capsys.readouterr().err
    assert not list((clean_home / "landing").rglob("*.csv")), "nothing lands when the command is wrong"
    # A day of the open calendar replays as a closed calendar's does.
    assert main(["replay", "--start", "2014-06-02"]) == 0
    assert [p.name for p in (clean_home / "landing" / "demand").iterdir()] == ["2014-06-02.csv"]


# --------------------------------------------------------------------------------------------
# No replay source


def test_replay_and_simulate_without_a_replay_source_exit_2_and_land_nothing(sourceless, clean_home, capsys):
    assert main(["replay", "--start", "2014-06-02", "--end", "2014-06-03"]) == 2
    err = capsys.readouterr().err
    assert "keel replay: use case 'electricity_peaks' has no replay source (UseCase.source)" in err
    assert "keel run ingests what is there" in err
    assert main(["simulate", "--start", "2014-06-01", "--end", "2014-09-30"]) == 2
    assert "keel simulate: use case 'electricity_peaks' has no replay source" in capsys.readouterr().err
    assert not (clean_home / "landing").exists() or not list((clean_home / "landing").rglob("*"))


def test_run_without_a_replay_source_and_nothing_landed_exits_2_saying_where_files_go(sourceless, clean_home, capsys):
    assert main(["run", "--start", "2014-06-02"]) == 2
    err = capsys.readouterr().err
    assert "has no replay source and its landing zone" in err and str(clean_home / "landing") in err
    assert "(<table>/YYYY-MM-DD.csv), or give --end" in err


@pytest.mark.slow
def test_run_without_a_replay_source_ingests_what_landed_up_to_the_last_landed_day(sourceless, clean_home, tmp_path):
    # The upstream system wrote June 2 and June 4; June 3 never came.
    landing = clean_home / "landing"
    for day in (dt.date(2014, 6, 2), dt.date(2014, 6, 4)):
        replay(ELECTRICITY, landing, day, day)
    before = {p.name: p.stat().st_mtime_ns for p in (landing / "demand").iterdir()}
    assert sorted(before) == ["2014-06-02.csv", "2014-06-04.csv"]
    keep = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env = {**keep, "KEEL_USECASE": "sourceless_electricity", "KEEL_HOME": str(clean_home),
           "DAGSTER_HOME": str(clean_home / "dagster"), "DO_NOT_TRACK": "true", "DAGSTER_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(sourceless)])}
    run = subprocess.run([str(KEEL), "run", "--start", "2014-06-02"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    out = run.stdout
    # June 3's landed_on_time gate holds it back: exit 1, and the other two days flow.
    assert run.returncode == 1, out + run.stderr
    assert f"no replay source: 1 day without every daily file in {landing}; ingesting what is there" in out
    assert "land missing files" not in out
    assert {p.name: p.stat().st_mtime_ns for p in (landing / "demand").iterdir()} == before, "nothing was landed"
    con = duckdb.connect(str(clean_home / "warehouse.duckdb"), read_only=True)
    try:
        validated = con.execute("select _partition_date, count(*) from validated.demand "
                                "group by 1 order by 1").fetchall()
        gates = con.execute("select partition_date, passed from audit.gate_status order by 1").fetchall()
    finally:
        con.close()
    assert [(str(d), n) for d, n in validated] == [("2014-06-02", HALF_HOURS), ("2014-06-04", HALF_HOURS)]
    # The run covered June 2 to the last landed day, June 4: not today.
    assert [(str(p), passed) for p, passed in gates] == [
        ("2014-06-02", True), ("2014-06-03", False), ("2014-06-04", True)]


# --------------------------------------------------------------------------------------------
# A small use case's own thresholds


def test_electricitys_thresholds_for_48_rows_a_day_take_effect_and_keel_toml_overrides_them(clean_home, monkeypatch):
    monkeypatch.setenv("KEEL_USECASE", "usecases.electricity")
    deployment = current()
    assert deployment.usecase.name == "electricity_peaks"
    assert deployment.trigger.min_auc_rows == 300 != TriggerPolicy().min_auc_rows
    assert deployment.promotion.gates.slice_min_rows == 100
    assert deployment.promotion.gates.max_ece == 0.12
    # A trailing week of electricity is 7 x 48 = 336 labelled half hours: enough for its own
    # trigger to judge a poor AUC, never for the defaults' 1,000 rows.
    week = {"roc_auc": 0.55, "n": 7 * HALF_HOURS, "start": "2014-06-09", "end": "2014-06-15"}
    decide = dict(today=dt.date(2014, 6, 15), champion_trained_at=dt.date(2014, 6, 8),
                  last_retrain_requested_at=None, drift_history=[], performance_7d=week)
    own = decide_retrain(deployment.trigger, **decide)
    assert own.retrain and own.fired == ["performance"]
    assert not decide_retrain(TriggerPolicy(), **decide).retrain

    (clean_home / "keel.toml").write_text("[retraining]\nmin_auc_rows = 400\n[promotion]\nslice_min_rows = 50\n")
    written = current()
    assert (written.trigger.min_auc_rows, written.promotion.gates.slice_min_rows) == (400, 50)
    assert written.promotion.gates.max_ece == 0.12, "what keel.toml leaves alone stays the use case's"
    assert not decide_retrain(written.trigger, **decide).retrain
    monkeypatch.setenv("KEEL_PROMOTION_POLICY", "manual")
    assert current().promotion.policy == "manual" and current().trigger.min_auc_rows == 400
