"""The per-day statistics of the serving champion, without Dagster.

Four measurements, each a plain function of data that returns plain, JSON-ready dicts
(never pickled), so the monitoring assets only wire them:

* :func:`build_reference` summarises the champion's training data once: a
  :class:`keel.monitoring.drift.ReferenceProfile` of its features and, given the training scores, a
  summary of its predicted probabilities.
* :func:`feature_drift` scores a day of features against it (the decisions are
  :func:`keel.monitoring.drift.compare`'s, i.e. Evidently's DataDriftPreset defaults) and weights the
  drifted features by the model's importance.
* :func:`prediction_drift` compares the day's scores with the training scores.
* :func:`performance` measures the scores against the labels per day and over a trailing
  window.

The retraining trigger (:mod:`keel.monitoring.trigger`) decides on their history.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from keel.core.dates import as_date
from keel.core.plain import json_ready
from keel.monitoring.drift import FeatureDrift, ReferenceProfile, compare
from keel.ml.evaluation import brier, log_loss, roc_auc

REFERENCE_FORMAT = "keel.monitoring.reference/1"
SCORE_COLUMN = "score"
SCORE_HISTOGRAM_BINS = 20
DECILES = tuple(np.round(np.linspace(0.0, 1.0, 11), 1))
TRAILING_DAYS = 7

# FeatureDrift fields surfaced per feature, in the order a reader compares them.
_FEATURE_FIELDS = (
    "kind", "stattest", "drift_score", "threshold", "drifted", "flag",
    "ks_stat", "ks_pvalue", "ks_stat_error_bound", "wasserstein_norm",
    "wasserstein_norm_error_bound", "chi2_stat", "chi2_pvalue", "js_distance", "psi",
    "unseen_share", "unseen_categories", "n_ref", "n_cur", "null_share_ref", "null_share_cur",
)


# --------------------------------------------------------------------------------------------
# Reference


def build_reference(
    training_frame: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    scores: np.ndarray | None,
    threshold: float = 0.5,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """The champion's reference for monitoring, as a JSON-ready dict; built once per champion.

    ``scores`` are the champion's predicted probabilities on ``training_frame`` (or on the
    split its threshold was chosen on); ``None`` leaves prediction drift unavailable.
    ``threshold`` is the champion's operating threshold (positive when ``p >= threshold``):
    pass the one chosen on validation, since the stored positive rate is taken at it.
    ``labels``, when given, add the observed positive rate of the same rows.

    The scores are stored three ways: a :class:`keel.monitoring.drift.NumericReference` (exact up to
    2,000 distinct values, else 1,000-quantile compressed; see :func:`prediction_drift` for
    what that costs the KS statistic), deciles for people, and a 20-bin histogram on [0, 1]
    for the plot. Positive rate, mean score and mean confidence are computed on the raw
    scores, so they are exact.
    """
    profile = ReferenceProfile.from_frame(training_frame, numeric=numeric, categorical=categorical)
    return json_ready({
        "format": REFERENCE_FORMAT,
        "features": profile.to_dict(),
        "scores": None if scores is None else _score_reference(scores, threshold, labels),
    })


def _score_reference(scores, threshold: float, labels) -> dict[str, Any]:
    p = _probabilities(scores, "reference scores")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    profile = ReferenceProfile.from_frame(pd.DataFrame({SCORE_COLUMN: p}), numeric=[SCORE_COLUMN])
    label_rate = None
    if labels is not None:
        y = np.asarray(labels, dtype=np.float64).ravel()
        if y.shape != p.shape or not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels must be 0/1, one per score")
        label_rate = float(y.mean())
    return {
        "n": int(p.size),
        "threshold": float(threshold),
        "positive_rate": float(np.mean(p >= threshold)),
        "label_rate": label_rate,
        "mean": float(p.mean()),
        "mean_confidence": _mean_confidence(p),
        "deciles": np.quantile(p, DECILES).tolist(),
        "histogram": _histogram(p),
        "profile": profile.to_dict(),
    }


def _profile(reference: Mapping[str, Any]) -> ReferenceProfile:
    if reference.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"not a {REFERENCE_FORMAT} reference: format={reference.get('format')!r}")
    return ReferenceProfile.from_dict(reference["features"])


# --------------------------------------------------------------------------------------------
# Feature drift


def feature_drift(
    reference: Mapping[str, Any],
    current_frame: pd.DataFrame,
    *,
    importance: Mapping[str, float] | None = None,
    day: dt.date | str | None = None,
    method: str = "evidently",
) -> dict[str, Any]:
    """Per-feature drift of ``current_frame`` against ``reference`` and its summaries.

    Each feature reports the decision of :func:`keel.monitoring.drift.compare` (``stattest``,
    ``drift_score``, ``threshold``, ``drifted``) and every statistic that applies to it: KS
    statistic and asymptotic p-value and normalised Wasserstein distance (numeric),
    chi-square and Jensen-Shannon distance (categorical, and numeric with <= 5 values), PSI
    (both), and the share of unseen categories.

    ``importance`` (for instance LightGBM gain per feature) weights the features:
    ``important_drift_share`` is the importance of the drifted features over the total, so
    a drifted top feature counts for more than a drifted minor one. It is normalised here;
    a profiled feature without an entry weighs 0, and a name that is not profiled is an
    error (its drift would be invisible). Without ``importance`` every feature weighs the
    same and the weighted share equals ``share_drifted``.

    A feature with no current values is listed in ``flagged_features`` and, as in
    keel.monitoring.drift, not counted as drifted: a dead feed is the null-rate gate's finding, and
    retraining would not fix it. ``day`` is recorded as ``date`` for the drift history.
    """
    profile = _profile(reference)
    report = compare(profile, current_frame, method=method)
    weights, source = _importance_weights(profile.features, importance)
    features = {drift.feature: _feature_dict(drift, weights[drift.feature]) for drift in report.features}
    drifted = [drift.feature for drift in report.features if drift.drifted]
    ranked = sorted(report.features, key=lambda drift: -weights[drift.feature])
    return json_ready({
        "date": None if day is None else as_date(day).isoformat(),
        "method": method,
        "rows_ref": report.rows_ref,
        "rows_cur": report.rows_cur,
        "n_features": report.n_features,
        "n_drifted": report.n_drifted,
        "share_drifted": report.share_drifted,
        "dataset_drifted": report.dataset_drifted,
        "dataset_drift_share": report.drift_share,
        "drifted_features": drifted,
        "flagged_features": {drift.feature: drift.flag for drift in report.features if drift.flag},
        "importance_source": source,
        "important_drift_share": float(sum(weights[name] for name in drifted)),
        "important_drift_score": drift_intensity(
            {drift.feature: (drift.stattest, drift.drift_score, drift.threshold) for drift in report.features},
            weights,
        ),
        "important_features": [
            {
                "feature": drift.feature,
                "importance": weights[drift.feature],
                "drifted": drift.drifted,
                "stattest": drift.stattest,
                "drift_score": drift.drift_score,
            }
            for drift in ranked
        ],
        "features": features,
    })


# Tests whose score is a distance (drift when score >= threshold); the others score a p-value
# (drift when score < threshold).
DISTANCE_TESTS = frozenset({"wasserstein", "jensenshannon", "psi", "hellinger", "kl_div", "energy_distance"})
INTENSITY_CAP = 100.0
BASELINE_SIGMAS = 3.0  # a feature's bar: this many standard deviations above its ordinary days' mean


def normalised_score(stattest: str | None, score: float | None, threshold: float | None) -> float | None:
    """A feature's drift score in units of its own threshold: 1.0 is exactly at Evidently's
    drift threshold, 2.0 twice as far (for a p-value test, ``log p / log threshold``),
    capped at ``INTENSITY_CAP`` (a p-value of 0 or a constant feed would be infinite); None
    without a score (no current values)."""
    if score is None or threshold is None or not math.isfinite(score) or not math.isfinite(threshold):
        return None
    if stattest in DISTANCE_TESTS:
        ratio = score / threshold if threshold > 0 else INTENSITY_CAP
    elif 0.0 < threshold < 1.0:
        ratio = math.log(max(score, 1e-300)) / math.log(threshold)
    else:
        return None
    return float(min(max(ratio, 0.0), INTENSITY_CAP))


def drift_intensity(scores: Mapping[str, tuple[str | None, float | None, float | None]],
                    weights: Mapping[str, float]) -> float:
    """How far a day's features moved, weighted by importance: the sum over features of
    :func:`normalised_score` times the feature's normalised importance. Reported beside the
    decisions, which use :func:`calibrated_drift`."""
    total = 0.0
    for feature, (stattest, score, threshold) in scores.items():
        value = normalised_score(stattest, score, threshold)
        if value is not None:
            total += weights.get(feature, 0.0) * value
    return float(total)


def drift_baseline(
    reference: Mapping[str, Any],
    frame: pd.DataFrame,
    date_column: str,
    *,
    importance: Mapping[str, float] | None = None,
    method: str = "evidently",
) -> dict[str, Any]:
    """How far each feature moves on ordinary days: the days of ``frame`` measured against
    ``reference``, and per feature the mean and standard deviation of its
    :func:`normalised_score` and its bar (mean + ``BASELINE_SIGMAS`` sd, at least 1.0, i.e.
    never below Evidently's own threshold; a feature seen on fewer than 2 days gets the cap,
    which no score exceeds). Pass days the reference does not contain (for a
    champion, its validation weeks against a profile of its training weeks): a day inside
    the reference is part of what it is compared with and looks closer than new days do.

    Why: a single day is a narrow slice of a many-week reference. Its conditions, its weekday and
    its trailing rates differ from the whole, so Evidently's per-feature tests flag most
    features on most days, ordinary ones included. Each feature is therefore held to what it
    does on ordinary days: a noisy sensor reading gets a high bar, a steady schedule feature a
    low one, and a feed that breaks stands out even when the rest moves as usual."""
    features = _profile(reference).features
    days = pd.to_datetime(frame[date_column]).dt.date
    per_feature: dict[str, list[float]] = {name: [] for name in features}
    n_days = 0
    for _, rows in frame.groupby(days, sort=True):
        result = feature_drift(reference, rows[features], importance=importance, method=method)
        n_days += 1
        for name, values in result["features"].items():
            value = normalised_score(values["stattest"], values["drift_score"], values["threshold"])
            if value is not None:
                per_feature[name].append(value)
    if n_days < 5:
        raise ValueError(f"{n_days} ordinary day(s): at least 5 are needed for a drift baseline")
    bars = {}
    for name, values in per_feature.items():
        if len(values) < 2:
            bars[name] = {"days": len(values), "mean": None, "std": None, "bar": INTENSITY_CAP}
            continue
        mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
        bars[name] = {"days": len(values), "mean": mean, "std": std,
                      "bar": float(min(INTENSITY_CAP, max(1.0, mean + BASELINE_SIGMAS * std)))}
    return json_ready({"days": n_days, "sigmas": BASELINE_SIGMAS, "features": bars})


def calibrated_drift(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The features of a :func:`feature_drift` result beyond their own ordinary-day bar
    (:func:`drift_baseline`), most important first, and their share of the importance:
    ``calibrated_drift_share``, what the check and the retraining trigger decide on."""
    beyond = []
    for name, values in result["features"].items():
        bar = baseline["features"].get(name, {}).get("bar", INTENSITY_CAP)
        value = normalised_score(values["stattest"], values["drift_score"], values["threshold"])
        # Strictly beyond: a feature whose ordinary days already reach the cap can never be.
        if value is not None and value > bar and value >= 1.0:
            beyond.append({"feature": name, "importance": values["importance"], "score": value, "bar": bar})
    beyond.sort(key=lambda item: -item["importance"])
    return json_ready({
        "calibrated_drift_share": float(sum(item["importance"] for item in beyond)),
        "calibrated_drifted_features": beyond,
    })


def _importance_weights(
    features: Sequence[str], importance: Mapping[str, float] | None
) -> tuple[dict[str, float], str]:
    if not features:
        raise ValueError("the reference profiles no feature")
    if importance is None:
        return {name: 1.0 / len(features) for name in features}, "uniform"
    unknown = sorted(set(importance) - set(features))
    if unknown:
        raise KeyError(f"importance names features the reference does not profile: {unknown}")
    raw = {name: float(importance.get(name, 0.0)) for name in features}
    if any(not math.isfinite(value) or value < 0 for value in raw.values()):
        raise ValueError(f"importance must be finite and non-negative: {raw}")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("importance sums to zero over the profiled features")
    return {name: value / total for name, value in raw.items()}, "given"


def _feature_dict(drift: FeatureDrift, weight: float) -> dict[str, Any]:
    values = asdict(drift)
    return {"importance": weight, **{name: values[name] for name in _FEATURE_FIELDS}}


# --------------------------------------------------------------------------------------------
# Prediction drift


def prediction_drift(
    reference: Mapping[str, Any], scores: np.ndarray, *, method: str = "evidently"
) -> dict[str, Any]:
    """Drift of the day's predicted probabilities against the training scores.

    ``drifted`` is decided exactly as a numeric feature would be (:func:`keel.monitoring.drift.compare`
    with ``method``): with more than 1,000 training scores, normalised Wasserstein >= 0.1;
    with ``method="psi"``, PSI >= 0.2. Reported alongside:

    * ``ks_stat``/``ks_pvalue`` (scipy's asymptotic p-value). When the training scores
      have more than 2,000 distinct values (a LightGBM model's usually do) the reference is
      1,000 quantiles with a linearly interpolated CDF in between, so ``ks_stat`` is within
      ``ks_stat_error_bound`` (< 0.001) of the KS statistic on the raw training scores.
    * ``psi`` over the training deciles, counted on the raw training scores: exact.
    * ``positive_rate`` at the champion's operating threshold, ``mean_confidence`` (mean of
      ``|p - 0.5| * 2``) and ``mean_score``: current, reference and change; exact.
    """
    stored = reference.get("scores")
    if stored is None:
        raise ValueError("the reference has no scores: build it with build_reference(scores=...)")
    _profile(reference)
    p = _probabilities(scores, "scores")
    profile = ReferenceProfile.from_dict(stored["profile"])
    drift = compare(profile, pd.DataFrame({SCORE_COLUMN: p}), method=method)[SCORE_COLUMN]
    threshold = stored["threshold"]
    return json_ready({
        "n": int(p.size),
        "n_ref": stored["n"],
        "method": method,
        "stattest": drift.stattest,
        "drift_score": drift.drift_score,
        "drift_threshold": drift.threshold,
        "drifted": drift.drifted,
        "ks_stat": drift.ks_stat,
        "ks_pvalue": drift.ks_pvalue,
        "ks_stat_error_bound": drift.ks_stat_error_bound,
        "wasserstein_norm": drift.wasserstein_norm,
        "psi": drift.psi,
        "positive_rate": _change(
            float(np.mean(p >= threshold)), stored["positive_rate"], threshold=threshold
        ),
        "mean_confidence": _change(_mean_confidence(p), stored["mean_confidence"]),
        "mean_score": _change(float(p.mean()), stored["mean"]),
        "deciles": {"reference": stored["deciles"], "current": np.quantile(p, DECILES).tolist()},
        "histogram": {
            "edges": stored["histogram"]["edges"],
            "reference": stored["histogram"]["counts"],
            "current": _histogram(p)["counts"],
        },
    })


def _change(current: float, reference: float, **extra: float) -> dict[str, float]:
    return {**extra, "current": current, "reference": reference, "change": current - reference}


def _mean_confidence(p: np.ndarray) -> float:
    return float(np.mean(np.abs(p - 0.5) * 2.0))


def _histogram(p: np.ndarray) -> dict[str, list]:
    edges = np.linspace(0.0, 1.0, SCORE_HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(p, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _probabilities(scores, what: str) -> np.ndarray:
    p = np.asarray(scores, dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{what} must be finite probabilities in [0, 1]")
    return p


# --------------------------------------------------------------------------------------------
# Performance


def performance(y_true, y_prob, dates, *, window_days: int = TRAILING_DAYS) -> dict[str, Any]:
    """Metrics per day and over the trailing ``window_days`` calendar days ending each day.

    A trailing window pools the rows of its days (it is not a mean of daily metrics), so a
    small day weighs as little as it should. Days without rows are absent from ``days``;
    each window records how many of its days had rows. ``roc_auc`` is ``None`` when the rows
    hold one class. ``trailing`` is the window ending on the last day: what
    :func:`decide_retrain` takes as ``performance_7d``. ``positive_rate`` is the observed
    label rate and ``mean_predicted`` the mean probability, so calibration drift shows as
    the two parting.
    """
    if window_days < 1:
        raise ValueError("window_days must be >= 1")
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    day = pd.to_datetime(pd.Series(np.asarray(dates).ravel())).dt.normalize()
    if not (y.size == p.size == len(day)):
        raise ValueError(f"y_true has {y.size} values, y_prob {p.size}, dates {len(day)}")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    if day.isna().any():
        raise ValueError("dates must not be missing")
    day_number = (day.dt.tz_localize(None) if day.dt.tz is not None else day).to_numpy()
    day_number = day_number.astype("datetime64[D]").astype(np.int64)
    order = np.argsort(day_number, kind="stable")
    y, p, day_number = y[order], p[order], day_number[order]

    days = []
    for number in np.unique(day_number):
        today = slice(*np.searchsorted(day_number, [number, number + 1]))
        window = slice(*np.searchsorted(day_number, [number - window_days + 1, number + 1]))
        days.append({
            "date": _day_of(number).isoformat(),
            **_metrics(y[today], p[today]),
            "trailing": {
                "start": _day_of(number - window_days + 1).isoformat(),
                "end": _day_of(number).isoformat(),
                "days_with_data": int(np.unique(day_number[window]).size),
                **_metrics(y[window], p[window]),
            },
        })
    return json_ready({"window_days": window_days, "days": days, "trailing": days[-1]["trailing"]})


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "positive_rate": float(y.mean()),
        "mean_predicted": float(p.mean()),
        "roc_auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
    }


def _day_of(number: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(number))
