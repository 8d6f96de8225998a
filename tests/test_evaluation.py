"""Metrics against hand-computed values, scipy and (when installed) scikit-learn; slices,
latency, comparison and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from keel.ml import evaluation as ev
from keel.ml.encoding import CategoryEncoder
from keel.ml.modeling import BaselineModel, TrainedModel

# y = [0, 0, 1, 1], p = [.1, .4, .35, .8]: of the four positive-negative pairs, (0.35, 0.4)
# is ranked wrong, so AUC = 3/4. At thresholds .8, .4, .35, .1 precision is 1, 1/2, 2/3, 1/2
# and recall 1/2, 1/2, 1, 1, so AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
SMALL_Y = np.array([0, 0, 1, 1])
SMALL_P = np.array([0.1, 0.4, 0.35, 0.8])


@pytest.fixture(scope="module")
def noisy_scores() -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to two decimals, so ties between classes are common."""
    rng = np.random.default_rng(4)
    y = (rng.random(5_000) < 0.22).astype(int)
    p = np.clip(np.round(0.15 + 0.25 * y + rng.normal(0, 0.15, y.size), 2), 0, 1)
    return y, p


def test_metrics_of_a_small_hand_computed_example():
    assert ev.roc_auc(SMALL_Y, SMALL_P) == pytest.approx(0.75)
    assert ev.average_precision(SMALL_Y, SMALL_P) == pytest.approx(5 / 6)
    assert ev.brier(SMALL_Y, SMALL_P) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    expected_log_loss = -(np.log(0.9) + np.log(0.6) + np.log(0.35) + np.log(0.8)) / 4
    assert ev.log_loss(SMALL_Y, SMALL_P) == pytest.approx(expected_log_loss)
    # F1 at each threshold: .8 -> 2/3, .4 -> 1/2, .35 -> 4/5, .1 -> 2/3
    assert ev.best_f1_threshold(SMALL_Y, SMALL_P) == 0.35


def test_auc_is_the_mann_whitney_statistic_with_ties(noisy_scores):
    y, p = noisy_scores
    u = mannwhitneyu(p[y == 1], p[y == 0]).statistic
    assert ev.roc_auc(y, p) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), rel=1e-12)


def test_metrics_match_scikit_learn(noisy_scores):
    metrics = pytest.importorskip("sklearn.metrics")
    y, p = noisy_scores
    assert ev.roc_auc(y, p) == pytest.approx(metrics.roc_auc_score(y, p), rel=1e-12)
    assert ev.average_precision(y, p) == pytest.approx(metrics.average_precision_score(y, p), rel=1e-12)
    assert ev.log_loss(y, p) == pytest.approx(metrics.log_loss(y, p), rel=1e-12)
    assert ev.brier(y, p) == pytest.approx(metrics.brier_score_loss(y, p), rel=1e-12)
    result = ev.evaluate(y, p, threshold=0.3)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y, p >= 0.3, zero_division=0)
    for label in (0, 1):
        assert result["per_class"][str(label)] == {
            "precision": pytest.approx(precision[label]),
            "recall": pytest.approx(recall[label]),
            "f1": pytest.approx(f1[label]),
            "support": support[label],
        }


def test_default_threshold_maximises_f1_on_the_data(noisy_scores):
    y, p = noisy_scores
    result = ev.evaluate(y, p)
    assert result["threshold_source"] == "max_f1"
    f1_at = {t: ev.evaluate(y, p, threshold=t)["f1"] for t in np.unique(p)}
    assert result["f1"] == pytest.approx(max(f1_at.values()))
    assert result["threshold"] == max(t for t, f1 in f1_at.items() if f1 == pytest.approx(max(f1_at.values())))


def test_evaluate_reports_the_given_threshold_and_counts(noisy_scores):
    y, p = noisy_scores
    result = ev.evaluate(y, p, threshold=0.5)
    assert result["threshold"] == 0.5 and result["threshold_source"] == "given"
    assert result["n"] == y.size and result["positives"] == y.sum()
    assert result["predicted_positive_rate"] == pytest.approx(np.mean(p >= 0.5))
    assert result["prevalence"] == pytest.approx(y.mean())
    assert sum(b["count"] for b in result["calibration"]) == y.size


def test_undefined_metrics_are_none_not_zero():
    result = ev.evaluate([0, 0, 0], [0.1, 0.2, 0.3])
    assert result["roc_auc"] is None and result["pr_auc"] is None
    assert result["threshold_source"] == "default_no_positives"
    assert "roc_auc" not in ev.flat_metrics(result)


def test_ece_is_near_zero_when_calibrated_and_large_when_distorted():
    rng = np.random.default_rng(12)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert ev.expected_calibration_error(y, p) < 0.005
    overconfident = np.where(p > 0.5, 1 - (1 - p) ** 3, p**3)
    assert ev.expected_calibration_error(y, overconfident) > 0.08
    assert ev.expected_calibration_error(y, p**3) > 0.15


def test_ece_of_a_hand_computed_example():
    # Bin [.1, .2): predicted .1, .15, observed 0, 1 -> gap |.125 - .5| over 2 of 4 rows;
    # bin [.9, 1]: predicted .9, 1.0, observed 1, 1 -> gap |.95 - 1| over 2 of 4 rows.
    assert ev.expected_calibration_error([0, 1, 1, 1], [0.1, 0.15, 0.9, 1.0]) == pytest.approx(
        0.5 * 0.375 + 0.5 * 0.05
    )
    curve = ev.calibration_curve([0, 1, 1, 1], [0.1, 0.15, 0.9, 1.0])
    assert [(b["bin_lower"], b["count"], b["observed_rate"]) for b in curve] == [(0.1, 2, 0.5), (0.9, 2, 1.0)]


def test_flat_metrics_keep_numbers_and_drop_the_curve(noisy_scores):
    flat = ev.flat_metrics(ev.evaluate(*noisy_scores), prefix="test.")
    assert flat["test.per_class.0.recall"] == pytest.approx(ev.evaluate(*noisy_scores)["per_class"]["0"]["recall"])
    assert not any(k.startswith("test.calibration") for k in flat)
    assert "test.threshold_source" not in flat
    assert all(isinstance(v, float) for v in flat.values())


# --- slices ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    n = 3_000
    frame = pd.DataFrame({
        "origin": rng.choice(["EWR", "JFK", "LGA"], n, p=[0.5, 0.45, 0.05]),
        "carrier": rng.choice(["AA", "B6", "UA", None], n, p=[0.4, 0.3, 0.28, 0.02]),
        "route_rate": np.clip(rng.beta(2, 6, n), 0, 1),
    })
    frame["disrupted"] = (rng.random(n) < frame["route_rate"]).astype(int)
    return frame


def test_slice_table_has_a_row_per_value_and_metrics_only_for_large_slices(holdout):
    y, p = holdout["disrupted"], holdout["route_rate"]
    table = ev.evaluate_slices(holdout, y, p, ["origin", "carrier"], threshold=0.3, min_rows=200)
    assert table[["slice", "value"]].values.tolist() == [
        ["origin", "EWR"], ["origin", "JFK"], ["origin", "LGA"],
        ["carrier", "AA"], ["carrier", "B6"], ["carrier", "UA"], ["carrier", None],
    ]
    assert table.groupby("slice")["n"].sum().to_dict() == {"origin": 3000, "carrier": 3000}
    small = table[table["small"]]
    assert set(small["value"].tolist()) == {"LGA", None}
    assert small[["roc_auc", "log_loss", "precision"]].isna().all().all()
    jfk = table[(table["slice"] == "origin") & (table["value"] == "JFK")].iloc[0]
    mask = (holdout["origin"] == "JFK").to_numpy()
    expected = ev.evaluate(y[mask], p[mask], threshold=0.3)
    assert jfk["n"] == mask.sum() and jfk["positives"] == expected["positives"]
    for metric in ("roc_auc", "log_loss", "brier", "precision", "recall"):
        assert jfk[metric] == pytest.approx(expected[metric])


def test_a_slice_with_one_class_has_no_auc():
    frame = pd.DataFrame({"origin": ["EWR"] * 300 + ["JFK"] * 300})
    y = np.r_[np.zeros(300), np.tile([0, 1], 150)]
    table = ev.evaluate_slices(frame, y, np.full(600, 0.3), ["origin"], threshold=0.5)
    assert table.loc[0, "roc_auc"] is None and table.loc[0, "log_loss"] == pytest.approx(-np.log(0.7))
    assert table.loc[1, "roc_auc"] == pytest.approx(0.5)


# --- latency, comparison, plots --------------------------------------------------------------


def test_latency_reports_ordered_percentiles(holdout):
    model = TrainedModel(
        kind="baseline", features=("route_rate",), encoder=CategoryEncoder(), params={},
        baseline=BaselineModel("route_rate", 0.2),
    )
    result = ev.latency(model, holdout, single_rows=50, batch_size=500, repeats=3)
    for name in ("single_row_us", "single_row_record_us", "single_row_frame_us", "batch_ms"):
        assert 0 < result[f"{name}_p50"] <= result[f"{name}_p95"] <= result[f"{name}_p99"]
    assert result["batch_rows"] == 500 and result["single_rows"] == 50


def test_compare_puts_models_side_by_side(holdout):
    y = holdout["disrupted"]
    candidates = {
        "route_rate": ev.evaluate(y, holdout["route_rate"], threshold=0.3),
        "base_rate": ev.evaluate(y, np.full(len(y), y.mean()), threshold=0.3),
    }
    table = ev.compare(candidates)
    assert list(table.columns) == ["route_rate", "base_rate"]
    assert table.loc["roc_auc", "base_rate"] == pytest.approx(0.5)
    assert table.loc["log_loss", "route_rate"] < table.loc["log_loss", "base_rate"]
    with pytest.raises(ValueError, match="different rows"):
        ev.compare({**candidates, "half": ev.evaluate(y[:100], holdout["route_rate"][:100])})


def test_curves_hold_each_models_roc_and_pr_on_the_same_labels(holdout):
    y, p = holdout["disrupted"], holdout["route_rate"]
    curves = ev.curves(y, {"route_rate": p})["route_rate"]
    fpr, tpr = ev.roc_curve(y, p)
    recall, precision = ev.precision_recall_curve(y, p)
    assert np.array_equal(curves["fpr"], fpr) and np.array_equal(curves["tpr"], tpr)
    assert np.array_equal(curves["recall"], recall) and np.array_equal(curves["precision"], precision)
    assert curves["roc_auc"] == ev.roc_auc(y, p)
    assert curves["average_precision"] == ev.average_precision(y, p)