"""Monitoring: drift figures against scipy, sharp faults detected, performance windows, and
the retraining trigger's sustained-drift rule, cooldown and reasons."""

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from keel.monitoring.drift import PSI_EMPTY_BIN_SHARE
from keel.core.policies import TriggerPolicy
from keel.monitoring.trigger import decide_retrain
from keel.monitoring.daily import (
    INTENSITY_CAP,
    build_reference,
    calibrated_drift,
    drift_baseline,
    drift_intensity,
    feature_drift,
    performance,
    prediction_drift,
)

NUMERIC = ["temp", "wind_speed", "dep_hour"]
CATEGORICAL = ["carrier", "origin"]
CARRIERS = ["UA", "B6", "EV", "DL", "AA"]
CARRIER_P = [0.3, 0.25, 0.2, 0.15, 0.1]
IMPORTANCE = {"temp": 6.0, "wind_speed": 1.0, "dep_hour": 1.0, "carrier": 2.0}  # origin: none


def flights(seed, rows, *, temp_shift=0.0, carrier_p=CARRIER_P):
    """A day of flight features as the weather and schedule feeds deliver them (rounded)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "temp": np.round(rng.normal(12.0 + temp_shift, 8.0, rows), 1),
        "wind_speed": np.round(rng.gamma(3.0, 3.5, rows)),
        "dep_hour": rng.integers(5, 24, rows).astype(float),
        "carrier": rng.choice(CARRIERS, rows, p=carrier_p),
        "origin": rng.choice(["EWR", "JFK", "LGA"], rows, p=[0.4, 0.3, 0.3]),
    })


@pytest.fixture(scope="module")
def training():
    return flights(1, 5_000)


@pytest.fixture(scope="module")
def reference(training):
    return build_reference(training, NUMERIC, CATEGORICAL, scores=None)


def psi_by_hand(ref_counts, cur_counts):
    ref = np.asarray(ref_counts, float) / np.sum(ref_counts)
    cur = np.asarray(cur_counts, float) / np.sum(cur_counts)
    ref = np.where(ref == 0, PSI_EMPTY_BIN_SHARE, ref)
    cur = np.where(cur == 0, PSI_EMPTY_BIN_SHARE, cur)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def decile_bin_counts(reference_values, values):
    """Counts in (-inf, d1), [d1, d2), ..., [d9, inf) over the reference deciles."""
    edges = np.unique(np.quantile(reference_values, np.linspace(0, 1, 11)[1:-1]))
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)


# --- drift figures against scipy ---------------------------------------------------------


def test_numeric_drift_figures_equal_scipy_and_a_hand_psi(training, reference):
    current = flights(2, 1_200, temp_shift=1.5)

    result = feature_drift(reference, current)["features"]["temp"]

    expected = stats.ks_2samp(training["temp"], current["temp"], method="asymp")
    assert result["ks_stat"] == pytest.approx(expected.statistic, abs=1e-12)
    assert result["ks_pvalue"] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert result["ks_stat_error_bound"] == 0.0  # 0.1-degree readings: stored exactly
    wasserstein = stats.wasserstein_distance(training["temp"], current["temp"]) / np.std(training["temp"])
    assert result["wasserstein_norm"] == pytest.approx(wasserstein, rel=1e-9)
    by_hand = psi_by_hand(decile_bin_counts(training["temp"], training["temp"]),
                          decile_bin_counts(training["temp"], current["temp"]))
    assert result["psi"] == pytest.approx(by_hand, rel=1e-12)
    # 5,000 reference rows: Evidently's large-reference test decides, the KS is reported.
    assert result["stattest"] == "wasserstein"
    assert result["drift_score"] == result["wasserstein_norm"]


def test_categorical_drift_figures_equal_scipy_and_a_hand_psi(training, reference):
    current = flights(3, 1_200, carrier_p=[0.2, 0.25, 0.2, 0.15, 0.2])

    result = feature_drift(reference, current)["features"]["carrier"]

    ref_counts = training["carrier"].value_counts().reindex(CARRIERS).to_numpy()
    cur_counts = current["carrier"].value_counts().reindex(CARRIERS).to_numpy()
    chi2 = stats.chisquare(cur_counts, ref_counts * cur_counts.sum() / ref_counts.sum())
    assert result["chi2_stat"] == pytest.approx(chi2.statistic, rel=1e-12)
    assert result["chi2_pvalue"] == pytest.approx(chi2.pvalue, rel=1e-9, abs=1e-300)
    js = distance.jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    assert result["js_distance"] == pytest.approx(js, rel=1e-12)
    assert result["psi"] == pytest.approx(psi_by_hand(ref_counts, cur_counts), rel=1e-12)
    assert result["stattest"] == "jensenshannon" and result["drift_score"] == result["js_distance"]
    assert result["unseen_share"] == 0.0


# --- sharp faults ------------------------------------------------------------------------


def broken_day():
    """A weather feed stuck on its last reading, and 30 % of flights by a carrier never seen."""
    day = flights(4, 1_000)
    day["temp"] = 14.4
    day.loc[: 299, "carrier"] = "ZZ"
    return day


def test_a_stuck_weather_feed_and_an_unseen_carrier_are_detected(reference):
    result = feature_drift(reference, broken_day(), importance=IMPORTANCE, day="2013-03-10")

    assert result["drifted_features"] == ["temp", "carrier"]
    assert result["n_drifted"] == 2 and result["share_drifted"] == pytest.approx(2 / 5)
    temp, carrier = result["features"]["temp"], result["features"]["carrier"]
    assert temp["drifted"] and temp["wasserstein_norm"] > 0.5 and temp["ks_stat"] > 0.4
    assert carrier["drifted"] and carrier["js_distance"] >= carrier["threshold"]
    assert carrier["unseen_share"] == pytest.approx(0.3)
    assert carrier["unseen_categories"] == {"ZZ": 300}
    assert carrier["chi2_pvalue"] == 0.0 and carrier["chi2_stat"] is None  # inf is not JSON
    assert result["important_drift_share"] == pytest.approx((6 + 2) / 10)
    assert result["date"] == "2013-03-10"


def test_an_unchanged_sample_does_not_drift(reference):
    result = feature_drift(reference, flights(5, 1_000), importance=IMPORTANCE)

    assert result["drifted_features"] == []
    assert result["important_drift_share"] == 0.0
    assert all(f["unseen_share"] in (None, 0.0) for f in result["features"].values())


def test_importance_is_normalised_and_ranks_the_features(reference):
    result = feature_drift(reference, broken_day(), importance=IMPORTANCE)

    ranked = [(f["feature"], f["importance"], f["drifted"]) for f in result["important_features"]]
    assert ranked[:2] == [("temp", pytest.approx(0.6), True), ("carrier", pytest.approx(0.2), True)]
    assert ranked[-1] == ("origin", 0.0, False)
    assert result["importance_source"] == "given"

    uniform = feature_drift(reference, broken_day())
    assert uniform["importance_source"] == "uniform"
    assert uniform["important_drift_share"] == pytest.approx(uniform["share_drifted"])


def test_importance_of_an_unprofiled_feature_is_an_error(reference):
    with pytest.raises(KeyError, match="distance"):
        feature_drift(reference, flights(6, 100), importance={**IMPORTANCE, "distance": 3.0})


def test_the_reference_and_the_drift_round_trip_through_strict_json(reference):
    stored = json.loads(json.dumps(reference, allow_nan=False))
    day = broken_day()

    result = feature_drift(stored, day, importance=IMPORTANCE)

    assert result == feature_drift(reference, day, importance=IMPORTANCE)
    json.dumps(result, allow_nan=False)


# --- prediction drift --------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_scores():
    return np.random.default_rng(10).beta(2.0, 6.0, 30_000)


@pytest.fixture(scope="module")
def scored_reference(training, training_scores):
    return build_reference(training, NUMERIC, CATEGORICAL, scores=training_scores, threshold=0.4)


def test_drift_intensity_weighs_each_feature_in_units_of_its_threshold():
    scores = {
        "temp": ("wasserstein", 0.25, 0.1),  # 2.5 thresholds
        "carrier": ("jensenshannon", 0.05, 0.1),  # half a threshold
        "dep_hour": ("ks", 1e-4, 0.05),  # a p-value: log(1e-4) / log(0.05)
        "wind_speed": ("wasserstein", 50.0, 0.1),  # capped
        "origin": ("chisquare", None, 0.05),  # no current values: nothing
    }
    weights = {"temp": 0.4, "carrier": 0.3, "dep_hour": 0.2, "wind_speed": 0.1, "origin": 0.0}
    expected = 0.4 * 2.5 + 0.3 * 0.5 + 0.2 * math.log(1e-4) / math.log(0.05) + 0.1 * INTENSITY_CAP
    assert drift_intensity(scores, weights) == pytest.approx(expected, rel=1e-12)


def test_each_feature_is_held_to_its_own_ordinary_day_bar(reference):
    days = pd.date_range("2013-01-01", periods=20).date
    frame = pd.concat([flights(100 + i, 500).assign(day=day) for i, day in enumerate(days)], ignore_index=True)
    baseline = drift_baseline(reference, frame, "day", importance=IMPORTANCE)
    assert baseline["days"] == 20 and set(baseline["features"]) == set(NUMERIC + CATEGORICAL)
    for name, bar in baseline["features"].items():
        scores = []
        for day in days:
            values = feature_drift(reference, frame.loc[frame["day"] == day, NUMERIC + CATEGORICAL],
                                   importance=IMPORTANCE)["features"][name]
            scores.append(values["drift_score"] / values["threshold"] if values["stattest"] in (
                "wasserstein", "jensenshannon") else math.log(values["drift_score"]) / math.log(values["threshold"]))
        assert bar["mean"] == pytest.approx(np.mean(scores), rel=1e-9)
        assert bar["bar"] == pytest.approx(max(1.0, np.mean(scores) + 3 * np.std(scores, ddof=1)), rel=1e-9)
    ordinary = [calibrated_drift(feature_drift(reference, flights(200 + i, 500), importance=IMPORTANCE), baseline)
                for i in range(40)]
    # New ordinary days stay within the bars of the 20 they were set on.
    assert np.mean([o["calibrated_drift_share"] == 0.0 for o in ordinary]) >= 0.85
    # Warmer weather: temp, the most important feature, goes beyond its bar; nothing else does.
    shifted = calibrated_drift(feature_drift(reference, flights(7, 500, temp_shift=8.0), importance=IMPORTANCE),
                               baseline)
    assert [f["feature"] for f in shifted["calibrated_drifted_features"]] == ["temp"]
    assert shifted["calibrated_drift_share"] == pytest.approx(0.6)


def test_the_trigger_counts_calibrated_drift_when_the_history_has_it():
    today = dt.date(2013, 6, 10)
    history = [
        {"date": (today - dt.timedelta(days=i)).isoformat(), "important_drift_share": 0.9,
         "calibrated_drift_share": share}
        for i, share in enumerate([0.4, 0.1, 0.25, 0.0, 0.3])
    ]
    decision = decide_retrain(TriggerPolicy(), today=today, champion_trained_at="2013-06-01",
                              last_retrain_requested_at=None, drift_history=history, performance_7d=None)
    assert decision.fired == ["important_drift"]
    assert decision.signals["important_drift"]["measure"] == "calibrated_drift_share"
    assert "beyond its ordinary-day bar >= 0.20 on 3 of the last 5 days" in decision.reasons[0]
    calmer = [{**r, "calibrated_drift_share": 0.1} if r["calibrated_drift_share"] == 0.25 else r for r in history]
    assert not decide_retrain(TriggerPolicy(), today=today, champion_trained_at="2013-06-01",
                              last_retrain_requested_at=None, drift_history=calmer,
                              performance_7d=None).retrain


def test_prediction_drift_detects_a_shifted_score_distribution(training_scores, scored_reference):
    same = np.random.default_rng(11).beta(2.0, 6.0, 2_000)
    shifted = np.random.default_rng(12).beta(3.0, 5.0, 2_000)

    unchanged, moved = prediction_drift(scored_reference, same), prediction_drift(scored_reference, shifted)

    assert not unchanged["drifted"] and unchanged["psi"] < 0.1
    assert moved["drifted"] and moved["psi"] > 0.2
    # 30,000 distinct training scores are stored as quantiles: KS within the stored bound.
    expected = stats.ks_2samp(training_scores, shifted, method="asymp")
    bound = moved["ks_stat_error_bound"]
    assert 0 < bound < 1e-3
    assert abs(moved["ks_stat"] - expected.statistic) <= bound
    assert moved["ks_pvalue"] < 1e-10 and unchanged["ks_pvalue"] > 0.01
    by_hand = psi_by_hand(decile_bin_counts(training_scores, training_scores),
                          decile_bin_counts(training_scores, shifted))
    assert moved["psi"] == pytest.approx(by_hand, rel=1e-12)


def test_prediction_drift_reports_positive_rate_and_confidence_against_the_reference(
    training_scores, scored_reference
):
    shifted = np.random.default_rng(12).beta(3.0, 5.0, 2_000)

    moved = prediction_drift(scored_reference, shifted)

    rate = moved["positive_rate"]
    assert rate["threshold"] == 0.4
    assert rate["current"] == pytest.approx(np.mean(shifted >= 0.4))
    assert rate["reference"] == pytest.approx(np.mean(training_scores >= 0.4))
    assert rate["change"] == pytest.approx(rate["current"] - rate["reference"]) and rate["change"] > 0.1
    confidence = moved["mean_confidence"]
    assert confidence["current"] == pytest.approx(np.mean(np.abs(shifted - 0.5) * 2))
    assert confidence["reference"] == pytest.approx(np.mean(np.abs(training_scores - 0.5) * 2))
    assert sum(moved["histogram"]["current"]) == 2_000
    assert sum(moved["histogram"]["reference"]) == 30_000


def test_prediction_drift_needs_a_reference_with_scores(reference):
    with pytest.raises(ValueError, match="no scores"):
        prediction_drift(reference, np.array([0.2, 0.3]))


# --- performance -------------------------------------------------------------------------


def test_performance_per_day_and_over_the_trailing_week_of_a_hand_checked_example():
    rows = [  # (departure time, label, probability); March 3 and 5-8 have no flights
        ("2013-03-01 06:00", 0, 0.1), ("2013-03-01 09:30", 1, 0.8),
        ("2013-03-01 13:15", 0, 0.4), ("2013-03-01 21:40", 1, 0.3),
        ("2013-03-02 07:00", 0, 0.2), ("2013-03-02 08:00", 0, 0.6),
        ("2013-03-04 10:00", 1, 0.9), ("2013-03-04 11:00", 0, 0.5), ("2013-03-04 12:00", 1, 0.7),
        ("2013-03-09 15:00", 1, 0.2), ("2013-03-09 16:00", 0, 0.6),
    ]
    shuffled = [rows[i] for i in np.random.default_rng(20).permutation(len(rows))]
    dates, y, p = (list(column) for column in zip(*shuffled))

    result = performance(y, p, pd.to_datetime(dates))

    by_day = {day["date"]: day for day in result["days"]}
    assert list(by_day) == ["2013-03-01", "2013-03-02", "2013-03-04", "2013-03-09"]
    first = by_day["2013-03-01"]
    assert first["roc_auc"] == pytest.approx(3 / 4)
    assert first["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.3)) / 4)
    assert first["brier"] == pytest.approx((0.01 + 0.04 + 0.16 + 0.49) / 4)
    assert (first["n"], first["positive_rate"]) == (4, 0.5)
    assert by_day["2013-03-02"]["roc_auc"] is None  # one class
    assert by_day["2013-03-09"]["roc_auc"] == 0.0

    week_to_4th = by_day["2013-03-04"]["trailing"]
    assert (week_to_4th["start"], week_to_4th["end"]) == ("2013-02-26", "2013-03-04")
    assert (week_to_4th["n"], week_to_4th["days_with_data"]) == (9, 3)
    assert week_to_4th["roc_auc"] == pytest.approx(17 / 20)
    assert week_to_4th["positive_rate"] == pytest.approx(4 / 9)

    week_to_9th = result["trailing"]  # March 3..9: March 1 and 2 have left the window
    assert week_to_9th == by_day["2013-03-09"]["trailing"]
    assert (week_to_9th["start"], week_to_9th["n"], week_to_9th["days_with_data"]) == ("2013-03-03", 5, 2)
    assert week_to_9th["roc_auc"] == pytest.approx(4 / 6)
    assert week_to_9th["mean_predicted"] == pytest.approx((0.9 + 0.5 + 0.7 + 0.2 + 0.6) / 5)


# --- the retraining trigger --------------------------------------------------------------

TODAY = dt.date(2013, 4, 10)
TRAINED = dt.date(2013, 3, 20)  # 21 days old
GOOD_WEEK = {"start": "2013-04-04", "end": "2013-04-10", "n": 6_300, "roc_auc": 0.72}


def history(shares, *, end=TODAY):
    """Drift records of consecutive days ending on ``end``, one share per day."""
    return [
        {"date": (end - dt.timedelta(days=len(shares) - 1 - i)).isoformat(), "important_drift_share": share}
        for i, share in enumerate(shares)
    ]


def decide(*, policy=TriggerPolicy(), trained=TRAINED, last_request=None, drift=(), week=GOOD_WEEK):
    return decide_retrain(
        policy, today=TODAY, champion_trained_at=trained, last_retrain_requested_at=last_request,
        drift_history=history(list(drift)), performance_7d=week,
    )


def test_sustained_important_drift_fires():
    decision = decide(drift=[0.1, 0.4, 0.45, 0.2, 0.5])

    assert decision.retrain and decision.fired == ["important_drift"]
    assert decision.signals["important_drift"]["value"] == 3
    assert "on 3 of the last 5 days" in decision.reasons[0] and "needs 3" in decision.reasons[0]
    assert ">= 0.30" in decision.reasons[0] and "latest 0.500" in decision.reasons[0]


@pytest.mark.parametrize("shares", [
    pytest.param([0.1, 0.1, 0.9, 0.1, 0.1], id="one-isolated-day"),
    pytest.param([0.9, 0.1, 0.1, 0.1, 0.9], id="two-days-apart"),
    pytest.param([0.9] * 5 + [0.0] * 5, id="drift-that-has-passed"),
])
def test_drift_that_is_not_sustained_does_not_fire(shares):
    decision = decide(drift=shares)

    assert not decision.retrain and decision.fired == []
    assert decision.signals["important_drift"]["value"] < 3
    assert decision.reasons[0] == "no retraining signal fired"


def test_drift_measured_against_the_previous_champion_does_not_count():
    # Regression guard: the reference changes with the champion, so older records are moot.
    decision = decide(trained=dt.date(2013, 4, 9), drift=[0.9] * 5)

    assert not decision.retrain
    assert decision.signals["important_drift"]["value"] == 2
    assert [d["date"] for d in decision.signals["important_drift"]["days"]] == ["2013-04-09", "2013-04-10"]


def test_low_trailing_auc_fires():
    decision = decide(week={**GOOD_WEEK, "roc_auc": 0.6})

    assert decision.retrain and decision.fired == ["performance"]
    assert "0.600 < minimum 0.65" in decision.reasons[0]


def test_low_auc_on_too_few_rows_is_not_evaluated():
    decision = decide(week={**GOOD_WEEK, "roc_auc": 0.4, "n": 200})

    assert not decision.retrain
    assert any("200 rows, fewer than the 1000 needed" in reason for reason in decision.reasons)


def test_a_trailing_window_that_began_under_the_previous_champion_is_not_evaluated():
    decision = decide(trained=dt.date(2013, 4, 6), week={**GOOD_WEEK, "roc_auc": 0.5})

    assert not decision.retrain
    assert decision.signals["performance"]["value"] == 0.5
    assert any("starts before the champion was trained on 2013-04-06" in r for r in decision.reasons)


@pytest.mark.parametrize("age, fires", [(35, False), (36, True)])
def test_a_model_older_than_the_maximum_age_fires(age, fires):
    decision = decide(trained=TODAY - dt.timedelta(days=age))

    assert decision.retrain is fires
    assert decision.fired == (["model_age"] if fires else [])
    assert (decision.signals["model_age"]["value"], decision.signals["model_age"]["threshold"]) == (age, 35)
    assert any(f"model age: {age} days" in reason and "maximum 35" in reason for reason in decision.reasons)


def test_cooldown_suppresses_a_second_request_and_says_so():
    stale = dt.date(2013, 2, 1)

    decision = decide(trained=stale, last_request=dt.date(2013, 4, 6), drift=[0.9] * 5)

    assert not decision.retrain and decision.blocked_by_cooldown
    # Still reported as fired; the champion's age counts from the request 4 days ago.
    assert decision.fired == ["important_drift"]
    assert decision.reasons[-1] == (
        "suppressed by cooldown: 4 days since the last request on 2013-04-06 < cooldown of 7 days"
    )
    after = decide(trained=stale, last_request=dt.date(2013, 4, 3), drift=[0.9] * 5)
    assert after.retrain and not after.blocked_by_cooldown


def test_a_champion_that_survived_a_challenge_ages_from_that_challenge():
    trained = dt.date(2013, 2, 1)
    challenged = decide(trained=trained, last_request=dt.date(2013, 3, 20), drift=[0.0] * 5)
    assert not challenged.retrain
    age = challenged.signals["model_age"]
    assert (age["value"], age["since"]) == ((TODAY - dt.date(2013, 3, 20)).days, "2013-03-20")
    assert "since the champion was last challenged on 2013-03-20" in age["reason"]
    unchallenged = decide(trained=trained, last_request=None, drift=[0.0] * 5)
    assert unchallenged.fired == ["model_age"]
    assert "since the champion's training window ended on 2013-02-01" in unchallenged.signals["model_age"]["reason"]


def test_cooldown_without_a_signal_blocks_nothing():
    decision = decide(last_request=dt.date(2013, 4, 9))

    assert not decision.retrain and not decision.blocked_by_cooldown
    assert decision.signals["cooldown"]["active"]


@pytest.mark.parametrize("case", [
    dict(),
    dict(drift=[0.5] * 5),
    dict(week={**GOOD_WEEK, "roc_auc": 0.5}),
    dict(trained=dt.date(2013, 1, 1), last_request=dt.date(2013, 4, 8)),
    dict(week=None),
    dict(week={**GOOD_WEEK, "roc_auc": None}),
])
def test_every_decision_gives_each_signal_with_its_value_and_threshold(case):
    decision = decide(**case)

    text = " | ".join(decision.reasons)
    assert ">= 0.30 on" in text and "needs 3" in text
    assert "0.65" in text
    assert "maximum 35" in text
    for signal in decision.signals.values():
        assert {"value", "threshold"} <= set(signal)
    stored = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert stored["retrain"] is decision.retrain and stored["reasons"] == decision.reasons
    assert stored["policy"]["cooldown_days"] == 7


def test_a_week_of_broken_feeds_triggers_a_retrain_end_to_end(reference):
    days = [TODAY - dt.timedelta(days=i) for i in range(4, -1, -1)]
    frames = [flights(30, 900), flights(31, 900), broken_day(), broken_day(), broken_day()]
    records = [feature_drift(reference, frame, importance=IMPORTANCE, day=day) for day, frame in zip(days, frames)]

    decision = decide_retrain(
        TriggerPolicy(), today=TODAY, champion_trained_at=TRAINED, last_retrain_requested_at=None,
        drift_history=records, performance_7d=GOOD_WEEK,
    )

    assert [r["important_drift_share"] for r in records] == [0.0, 0.0, 0.8, 0.8, 0.8]
    assert decision.retrain and decision.fired == ["important_drift"]


def test_a_policy_that_can_never_fire_is_rejected():
    with pytest.raises(ValueError, match="drift_days_required"):
        TriggerPolicy(drift_days_required=6, drift_window_days=5)
