"""The retraining trigger: day-by-day decisions recorded with their reasons, the sensor's
requests, and a sharp upstream shift carried from the landing zone to the promotion gates."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pandas as pd
import pytest
from conftest import USECASE, write_config
from model_fixtures import PRIMARY, registry, train

from keel.monitoring import store as monitoring_store
from keel.monitoring import retraining
from keel.core.config import current
from keel.core.policies import RetrainPolicy, TriggerPolicy
from keel.registry.promotion import GATES
from keel.monitoring.retraining import Champion
from keel.core.warehouse import connect

CHAMPION = Champion("flight_disruption", 1, dt.date(2013, 2, 28))


def _day(n: int) -> dt.date:
    return dt.date(2013, 3, n)


def write_monitoring(con, shares: dict[dt.date, float], auc: float = 0.72, rows: int = 5000) -> None:
    """Drift and performance rows as the monitoring assets write them."""
    days = sorted(shares)
    drift = pd.DataFrame({
        "day": days, "model_name": "flight_disruption", "model_version": 1, "rows": 900,
        "n_features": 20, "n_drifted": [round(s * 20) for s in shares.values()],
        "share_drifted": list(shares.values()), "important_drift_share": list(shares.values()),
        "dataset_drifted": [s >= 0.5 for s in shares.values()], "drifted_features": "[]",
        "flagged_features": "{}",
    })
    performance = pd.DataFrame({
        "day": days, "model_versions": "{}", "rows": 900, "positives": 200, "roc_auc": auc,
        "trailing_start": [d - dt.timedelta(days=6) for d in days], "trailing_end": days,
        "trailing_days_with_data": 7, "trailing_rows": rows, "trailing_positives": 1000,
        "trailing_roc_auc": auc,
    })
    monitoring_store.replace_days(con, {"drift_daily": drift, "performance": performance}, days)


@pytest.fixture
def con(tmp_path):
    with connect(tmp_path / "warehouse.duckdb") as connection:
        yield connection


def settings(**trigger) -> RetrainPolicy:
    return RetrainPolicy(trigger=TriggerPolicy(**trigger), training_days=84, valid_weeks=2, test_weeks=2)


def decide_all(con, settings: RetrainPolicy, champion: Champion = CHAMPION) -> list:
    out = []
    for day in retraining.days_to_decide(con, champion, None, settings.decide_every_days):
        decision = retraining.decide(con, settings, champion, day)
        window = settings.window(day, dt.date(2013, 1, 1)) if decision.retrain else None
        retraining.record(con, decision, champion, window=window, run_key=None)
        out.append(decision)
    return out


def test_sustained_drift_fires_on_the_third_drifted_day_and_every_decision_is_recorded(con):
    write_monitoring(con, {_day(1): 0.5, _day(2): 0.1, _day(3): 0.6, _day(4): 0.7, _day(5): 0.9})
    decisions = decide_all(con, settings())
    assert [d.retrain for d in decisions] == [False, False, False, True, False]
    fired = decisions[3]
    assert fired.fired == ["important_drift"]
    assert "on 3 of the last 5 days" in fired.reasons[0]
    assert decisions[4].blocked_by_cooldown
    recorded = retraining.decisions(con)
    assert [r["day"] for r in recorded] == [f"2013-03-0{i}" for i in range(1, 6)]
    assert [r["retrain"] for r in recorded] == [False, False, False, True, False]
    # 84 days back from March 4 would start in 2012: the window starts with the calendar.
    assert recorded[3]["training_window"] == ["2013-01-01", "2013-03-04"]
    assert "cooldown" in recorded[4]["reasons"][-1]
    assert recorded[0]["reasons"][0] == "no retraining signal fired"


def test_one_drifted_day_does_not_retrain(con):
    write_monitoring(con, {_day(i): (0.9 if i == 3 else 0.05) for i in range(1, 9)})
    assert not any(d.retrain for d in decide_all(con, settings()))


def test_trailing_auc_below_the_minimum_fires_once_the_window_is_the_champions_own(con):
    write_monitoring(con, {_day(i): 0.0 for i in range(1, 10)}, auc=0.6)
    decisions = decide_all(con, settings(min_auc=0.65))
    # Until March 6 the trailing window starts before the champion's last training day.
    assert [d.retrain for d in decisions][:6] == [False] * 5 + [True]
    assert decisions[5].fired == ["performance"]
    assert "0.600 < minimum 0.65" in decisions[5].reasons[0]


def test_model_age_fires_after_its_maximum(con):
    write_monitoring(con, {_day(i): 0.0 for i in range(1, 12)})
    decisions = decide_all(con, settings(max_model_age_days=9))
    assert [d.today for d in decisions if d.retrain] == ["2013-03-10"]


def test_redeciding_a_day_replaces_its_record_and_only_earlier_requests_cool_it_down(con):
    write_monitoring(con, {_day(i): 0.9 for i in range(1, 5)})
    first = decide_all(con, settings())
    again = decide_all(con, settings())
    assert [d.retrain for d in first] == [d.retrain for d in again] == [False, False, True, False]
    (count,) = con.execute("select count(*) from audit.retrain_decisions").fetchone()
    assert count == 4


def test_only_days_after_the_champions_window_are_decided_and_weekly_decisions_skip_the_rest(con):
    write_monitoring(con, {dt.date(2013, 2, 27): 0.9, **{_day(i): 0.0 for i in range(1, 16)}})
    days = retraining.days_to_decide(con, CHAMPION, None)
    assert days[0] == _day(1) and dt.date(2013, 2, 27) not in days
    assert retraining.days_to_decide(con, CHAMPION, _day(10)) == [_day(i) for i in range(11, 16)]
    assert retraining.days_to_decide(con, CHAMPION, None, every=7) == [_day(7), _day(14)]


def test_a_day_monitored_after_later_days_were_decided_is_decided_once(con):
    # Regression: the trigger's cursor is the last day decided, so a day that landed late,
    # after later days were decided, was never decided.
    write_monitoring(con, {_day(i): 0.0 for i in (1, 2, 4)})
    retraining.ensure_table(con)
    assert len(decide_all(con, settings())) == 3
    write_monitoring(con, {_day(3): 0.0})
    assert retraining.days_to_decide(con, CHAMPION, _day(4)) == []
    assert retraining.late_days(con, CHAMPION, _day(4)) == [_day(3)]
    decision = retraining.decide(con, settings(), CHAMPION, _day(3))
    retraining.record(con, decision, CHAMPION, window=None, run_key=None)
    assert retraining.late_days(con, CHAMPION, _day(4)) == []
    assert retraining.late_days(con, CHAMPION, None) == []
    (days,) = con.execute("select count(distinct day) from audit.retrain_decisions").fetchone()
    assert days == 4


def test_settings_refuse_a_window_too_short_for_its_split():
    with pytest.raises(ValueError, match="training_days"):
        RetrainPolicy(trigger=TriggerPolicy(), training_days=20, valid_weeks=2, test_weeks=2)


# --------------------------------------------------------------------------------------------
# The sensor, on a real home with a registered champion


def evaluate_trigger(cursor: str | None = None, **policy):
    """The sensor's tick, with ``policy`` as the home's keel.toml [retraining]."""
    from definitions import defs

    write_config(current().home, retraining=policy)
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.get(), cursor=cursor, definitions=defs,
        resources={"keel": defs.resources["keel"], "mlflow": defs.resources["mlflow"]},
    ) as context:
        return defs.resolve_sensor_def("retraining_trigger").evaluate_tick(context)


def test_the_sensor_skips_while_no_champion_exists(home):
    data = evaluate_trigger()
    assert not data.run_requests
    assert "no model registered yet" in data.skip_message


def test_the_sensor_requests_train_models_on_the_window_ending_the_day_it_fired(trained):
    paths, _ = trained
    with connect(paths.warehouse) as con:
        write_monitoring(con, {_day(i): 0.8 for i in range(1, 6)})
    data = evaluate_trigger(training_days=42)
    (request,) = data.run_requests
    assert data.cursor == "2013-03-03"
    assert request.job_name in (None, "train_models")
    assert request.tags["keel/trigger_day"] == "2013-03-03"
    assert request.tags["keel/trigger_fired"] == "important_drift"
    window = request.run_config["ops"]["models__training_set"]["config"]
    assert (window["start"], window["end"]) == ("2013-01-21", "2013-03-03")
    # The next tick goes on from the cursor: the cooldown holds the following days.
    again = evaluate_trigger(cursor=data.cursor, training_days=42)
    assert not again.run_requests and again.cursor == "2013-03-05"
    with connect(paths.warehouse, read_only=True) as con:
        recorded = retraining.decisions(con)
    assert [(r["day"], r["retrain"]) for r in recorded] == [
        ("2013-03-01", False), ("2013-03-02", False), ("2013-03-03", True),
        ("2013-03-04", False), ("2013-03-05", False),
    ]
    assert recorded[2]["run_key"] == request.run_key
    assert json.dumps(recorded[2]["signals"]["important_drift"]["days"])
    # keel status --json shows the same decisions, and the monitored days.
    from keel.app.status import collect

    doc = collect(paths.warehouse, _day(1), _day(5))
    assert [(d["day"], d["retrain"], d["fired"]) for d in doc["retraining"]] == [
        (r["day"], r["retrain"], r["fired"]) for r in recorded]
    assert list(doc["monitoring"]) == [_day(i).isoformat() for i in range(1, 6)]
    assert doc["monitoring"]["2013-03-03"]["important_drift_share"] == 0.8
    # Run again from scratch (a lost cursor): the same decisions, no duplicate rows.
    evaluate_trigger(training_days=42)
    with connect(paths.warehouse, read_only=True) as con:
        assert len(retraining.decisions(con)) == 5


# --------------------------------------------------------------------------------------------
# A sharp shift, from the landing zone to the promotion gates


def send_a_botched_release(landing, day: dt.date) -> int:
    """Rewrite a day's flights file as a botched upstream release would send it: the airlines
    under internal codes never seen before (one per airline, so no flight's key collides) and
    the destination field stuck on one value. Its contract still holds (well-formed codes),
    so no gate stops it; only drift monitoring can."""
    from keel.data.landing import file_for, write_atomically

    path = file_for(landing, USECASE.table("flights"), day)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    codes = {carrier: f"Z{chr(65 + i)}" for i, carrier in enumerate(sorted(frame["carrier"].unique()))}
    frame["carrier"] = frame["carrier"].map(codes)
    frame["dest"] = "ORD"
    write_atomically(path, frame.to_csv(index=False).encode())
    return len(frame)


@pytest.mark.slow
def test_a_stuck_feed_fails_the_drift_check_requests_a_retrain_and_the_gates_decide(home):
    from definitions import defs
    from keel.data.replay import replay
    from keel.app.simulate import SimulatedDaemon

    assert train().success  # the champion, v1, trained through February 28
    write_config(home.home, retraining={"training_days": 42})
    lines: list[str] = []
    daemon = SimulatedDaemon(defs, dg.DagsterInstance.get(), out=lines.append)
    daemon.tick(dt.date(2013, 2, 28))  # the deployment's first tick: the champion's reference
    days = [_day(i) for i in range(1, 5)]
    replay(USECASE, home.landing, days[0], days[-1])
    assert all(send_a_botched_release(home.landing, day) > 500 for day in days)

    daemon.tick(days[-1])

    with connect(home.warehouse, read_only=True) as con:
        gates = con.execute(
            "select count(*) filter (where passed) from audit.gate_status where partition_date between ? and ?",
            [days[0], days[-1]]).fetchone()
        drift = con.execute(
            "select day, calibrated_drift_share, calibrated_drifted_features from monitoring.drift_daily "
            "where day between ? and ? order by day", [days[0], days[-1]]).fetchall()
        recorded = retraining.decisions(con, days[0], days[-1])
    assert gates == (2 * len(days),), "the stuck feed passes every data gate"
    assert [d for d, *_ in drift] == days
    for _, share, beyond in drift:
        assert share >= current().trigger.calibrated_drift_share
        assert {"carrier", "dest"} <= {f["feature"] for f in json.loads(beyond)}
    failed = {(f["check"], f["partition"]) for f in daemon.state.failed_checks}
    assert {("important_feature_drift", day.isoformat()) for day in days} <= failed
    # Three drifted days of five: the trigger fires on the third, then the cooldown holds.
    assert [(r["day"], r["retrain"]) for r in recorded] == [
        (day.isoformat(), day == days[2]) for day in days
    ]
    assert recorded[2]["fired"] == ["important_drift"]
    requested, decided = daemon.state.events
    assert (requested.kind, requested.day) == ("retrain_requested", "2013-03-03")
    # Every promotion gate judged the challenger, on a holdout that holds the stuck days; the
    # champion moved only if all of them passed.
    assert set(decided.gates) == set(GATES)
    assert decided.kind == ("promoted" if all(decided.gates.values()) else "rejected")
    champion = registry(home).get_alias(PRIMARY, "champion")
    assert champion == (decided.version if decided.kind == "promoted" else 1)
