"""Metrics, slice tables, curves and latency of a binary classifier's probabilities.

Implemented with numpy (and scipy's ranks) so the project does not depend on scikit-learn;
the definitions follow scikit-learn's where one exists, and the tests check them against it
when it happens to be installed:

* ``roc_auc``: the Mann-Whitney statistic, ties counted one half (``roc_auc_score``).
* ``average_precision`` (``pr_auc``): ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores
  in decreasing order, no interpolation (``average_precision_score``).
* ``log_loss``: probabilities clipped to ``[eps, 1 - eps]`` with float64's eps (``log_loss``).
* ``brier``: mean squared difference (``brier_score_loss``).
* ``expected_calibration_error``: 10 equal-width bins ``[0, .1), [.1, .2), ..., [.9, 1]``;
  ``sum_b n_b / n * |mean predicted_b - observed rate_b|``. The calibration curve reports
  the same bins (non-empty ones only).

A metric that is undefined on the data (AUC with one class) is ``None``, never 0.0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy.stats import rankdata

CALIBRATION_BINS = 10


# --------------------------------------------------------------------------------------------
# Metrics


def _arrays(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values, y_prob {p.size}")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must be 0/1")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("y_prob must be probabilities in [0, 1] without NaN")
    return y, p


def roc_auc(y_true, y_prob) -> float | None:
    """Area under the ROC curve; ``None`` when only one class is present."""
    y, p = _arrays(y_true, y_prob)
    positives = y.sum()
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(p)  # average ranks: a tie between a positive and a negative counts 1/2
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def _descending_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (distinct scores, decreasing) and the true/false positives at ``p >= t``."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p_sorted)), y.size - 1]
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return p_sorted[last_of_tie], tps, fps


def average_precision(y_true, y_prob) -> float | None:
    """Average precision (area under the precision-recall curve, step-wise)."""
    y, p = _arrays(y_true, y_prob)
    positives = y.sum()
    if positives == 0:
        return None
    _, tps, fps = _descending_counts(y, p)
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(y_true, y_prob) -> float:
    y, p = _arrays(y_true, y_prob)
    eps = np.finfo(np.float64).eps
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier(y_true, y_prob) -> float:
    y, p = _arrays(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def _bin_of(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((p * bins).astype(np.int64), bins - 1)


def calibration_curve(y_true, y_prob, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Per non-empty equal-width bin: its edges, mean predicted probability, observed rate
    and row count."""
    y, p = _arrays(y_true, y_prob)
    which = _bin_of(p, bins)
    count = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=p, minlength=bins)
    observed = np.bincount(which, weights=y, minlength=bins)
    return [
        {
            "bin_lower": b / bins,
            "bin_upper": (b + 1) / bins,
            "mean_predicted": float(predicted[b] / count[b]),
            "observed_rate": float(observed[b] / count[b]),
            "count": int(count[b]),
        }
        for b in range(bins)
        if count[b] > 0
    ]


def expected_calibration_error(y_true, y_prob, bins: int = CALIBRATION_BINS) -> float:
    curve = calibration_curve(y_true, y_prob, bins)
    n = sum(b["count"] for b in curve)
    return float(sum(b["count"] / n * abs(b["mean_predicted"] - b["observed_rate"]) for b in curve))


def roc_curve(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct threshold, from (0, 0) to (1, 1)."""
    y, p = _arrays(y_true, y_prob)
    _, tps, fps = _descending_counts(y, p)
    positives, negatives = y.sum(), y.size - y.sum()
    fpr = np.r_[0.0, fps / negatives] if negatives else np.r_[0.0, np.zeros_like(fps)]
    tpr = np.r_[0.0, tps / positives] if positives else np.r_[0.0, np.zeros_like(tps)]
    return fpr, tpr


def precision_recall_curve(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each distinct threshold, in decreasing threshold order."""
    y, p = _arrays(y_true, y_prob)
    _, tps, fps = _descending_counts(y, p)
    positives = y.sum()
    return (tps / positives if positives else np.zeros_like(tps)), tps / (tps + fps)


def best_f1_threshold(y_true, y_prob) -> float | None:
    """The threshold ``t`` (predict positive when ``p >= t``) with the highest F1 on the given
    data; among equal F1 the highest threshold. ``None`` when there is no positive."""
    y, p = _arrays(y_true, y_prob)
    positives = y.sum()
    if positives == 0:
        return None
    thresholds, tps, fps = _descending_counts(y, p)
    f1 = 2 * tps / (tps + fps + positives)
    return float(thresholds[int(np.argmax(f1))])


def _classification(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    predicted = p >= threshold
    per_class = {}
    for label, truth, pred in (("1", y == 1, predicted), ("0", y == 0, ~predicted)):
        tp = float(np.sum(truth & pred))
        precision = tp / pred.sum() if pred.sum() else 0.0
        recall = tp / truth.sum() if truth.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(truth.sum()),
        }
    return per_class


def evaluate(y_true, y_prob, *, threshold: float | None = None) -> dict[str, Any]:
    """Every metric of one set of predictions.

    ``threshold`` is the operating point (predict positive when ``p >= threshold``). When it
    is ``None`` the threshold maximising F1 on *this* data is chosen (``threshold_source`` is
    then ``"max_f1"``): right on validation data, optimistic on test data, so evaluate the
    test set with the threshold chosen on validation. Precision, recall and F1 (top level:
    the positive class; ``per_class``: both classes, 0.0 when undefined) are at that
    threshold. Scalars are at the top level; ``per_class`` and ``calibration`` are nested.
    """
    y, p = _arrays(y_true, y_prob)
    source = "given"
    if threshold is None:
        threshold = best_f1_threshold(y, p)
        source = "max_f1"
        if threshold is None:
            threshold, source = 0.5, "default_no_positives"
    per_class = _classification(y, p, threshold)
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()),
        "roc_auc": roc_auc(y, p),
        "pr_auc": average_precision(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
        "mean_predicted": float(p.mean()),
        "threshold": float(threshold),
        "threshold_source": source,
        "predicted_positive_rate": float(np.mean(p >= threshold)),
        "precision": per_class["1"]["precision"],
        "recall": per_class["1"]["recall"],
        "f1": per_class["1"]["f1"],
        "per_class": per_class,
        "calibration": calibration_curve(y, p),
    }


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of an ``evaluate`` result, nested keys joined with ``.``
    (``per_class.0.recall``), ready to log as metrics. Undefined metrics (``None``), text and
    the calibration curve are left out; log the curve as an artifact."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (bool, np.bool_)):
            flat[name] = float(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            flat[name] = float(value)
    return flat


# --------------------------------------------------------------------------------------------
# Slices


SLICE_METRICS = ("roc_auc", "log_loss", "brier", "precision", "recall")


def evaluate_slices(
    frame: pd.DataFrame,
    y_true,
    y_prob,
    slice_columns: Sequence[str],
    threshold: float,
    min_rows: int = 200,
) -> pd.DataFrame:
    """One row per value of each slice column (missing values are their own slice, with
    ``value`` None).

    Slices with fewer than ``min_rows`` rows keep their counts but get no metrics
    (``small`` is True): a metric on a handful of rows is noise that a gate must not act on.
    ``roc_auc`` is also ``None`` when the slice holds one class.
    """
    y, p = _arrays(y_true, y_prob)
    if len(frame) != y.size:
        raise ValueError(f"frame has {len(frame)} rows, y_true and y_prob {y.size}")
    rows = []
    for column in slice_columns:
        values = frame[column].reset_index(drop=True)
        groups = pd.Series(np.arange(len(values))).groupby(values.astype(object), dropna=False, sort=False)
        for value in _ordered(groups.indices):
            index = groups.indices[value]
            ys, ps = y[index], p[index]
            small = ys.size < min_rows
            per_class = None if small else _classification(ys, ps, threshold)
            rows.append({
                "slice": column,
                "value": None if _is_missing(value) else value,
                "n": int(ys.size),
                "positives": int(ys.sum()),
                "prevalence": float(ys.mean()),
                "small": small,
                "roc_auc": None if small else roc_auc(ys, ps),
                "log_loss": None if small else log_loss(ys, ps),
                "brier": None if small else brier(ys, ps),
                "precision": None if small else per_class["1"]["precision"],
                "recall": None if small else per_class["1"]["recall"],
            })
    table = pd.DataFrame(rows, columns=[
        "slice", "value", "n", "positives", "prevalence", "small", *SLICE_METRICS,
    ])
    # Object columns keep None (not NaN) for an undefined metric: it serialises to JSON null
    # and a comparison against it raises instead of quietly being False in a gate.
    for metric in SLICE_METRICS:
        table[metric] = pd.Series([row[metric] for row in rows], dtype=object, index=table.index)
    return table


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _ordered(values) -> list:
    """Slice values in their natural order (text order if they do not compare), missing last."""
    present = [v for v in values if not _is_missing(v)]
    try:
        present.sort()
    except TypeError:
        present.sort(key=str)
    return present + [v for v in values if _is_missing(v)]


# --------------------------------------------------------------------------------------------
# Latency


class _Scorer(Protocol):
    def matrix(self, frame: pd.DataFrame) -> np.ndarray: ...
    def row_matrix(self, values: Mapping[str, Any]) -> np.ndarray: ...
    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray: ...
    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...

    @property
    def features(self) -> tuple[str, ...]: ...


def _percentiles(samples_ns: np.ndarray, unit_ns: float, name: str) -> dict[str, float]:
    return {
        f"{name}_p{q}": float(np.percentile(samples_ns, q) / unit_ns) for q in (50, 95, 99)
    }


def latency(
    model: _Scorer,
    frame: pd.DataFrame,
    *,
    single_rows: int = 300,
    batch_size: int = 1000,
    repeats: int = 5,
) -> dict[str, float]:
    """Scoring latency of ``model`` (a ``keel.ml.modeling.TrainedModel``) on rows of ``frame``.

    * ``single_row_us_*``: ``predict_matrix`` on a 1-row float64 numpy array, the serving
      path once features are looked up and encoded; ``single_rows`` rows, each timed once.
    * ``single_row_record_us_*``: ``row_matrix`` + ``predict_matrix`` from a dict of raw
      values (encoding included, no pandas), the rest of the serving path.
    * ``single_row_frame_us_*``: ``predict`` on a 1-row DataFrame (at most 100 rows), to show
      what pandas costs per request.
    * ``batch_ms_*``: ``predict`` on ``batch_size`` rows of ``frame``, ``repeats`` times.

    Each path is warmed up first. Timed with ``time.perf_counter_ns``.
    """
    if frame.empty:
        raise ValueError("latency: the frame is empty")
    matrix = model.matrix(frame)
    single = min(single_rows, len(frame))
    for i in range(min(10, single)):
        model.predict_matrix(matrix[i : i + 1])
        model.predict(frame.iloc[i : i + 1])

    row_ns = np.empty(single, dtype=np.int64)
    for i in range(single):
        row = matrix[i : i + 1]
        start = time.perf_counter_ns()
        model.predict_matrix(row)
        row_ns[i] = time.perf_counter_ns() - start

    records = frame[list(model.features)].iloc[:single].to_dict("records")
    record_ns = np.empty(single, dtype=np.int64)
    for i, record in enumerate(records):
        start = time.perf_counter_ns()
        model.predict_matrix(model.row_matrix(record))
        record_ns[i] = time.perf_counter_ns() - start

    frame_rows = min(single, 100)
    frame_ns = np.empty(frame_rows, dtype=np.int64)
    for i in range(frame_rows):
        row_frame = frame.iloc[i : i + 1]
        start = time.perf_counter_ns()
        model.predict(row_frame)
        frame_ns[i] = time.perf_counter_ns() - start

    batch = frame.iloc[: min(batch_size, len(frame))]
    model.predict(batch)
    batch_ns = np.empty(repeats, dtype=np.int64)
    for r in range(repeats):
        start = time.perf_counter_ns()
        model.predict(batch)
        batch_ns[r] = time.perf_counter_ns() - start

    return {
        **_percentiles(row_ns, 1e3, "single_row_us"),
        **_percentiles(record_ns, 1e3, "single_row_record_us"),
        **_percentiles(frame_ns, 1e3, "single_row_frame_us"),
        **_percentiles(batch_ns, 1e6, "batch_ms"),
        "batch_rows": float(len(batch)),
        "batch_us_per_row": float(np.median(batch_ns) / 1e3 / len(batch)),
        "single_rows": float(single),
        "repeats": float(repeats),
    }


# --------------------------------------------------------------------------------------------
# Comparison and curves

COMPARED = (
    "n", "prevalence", "roc_auc", "pr_auc", "log_loss", "brier", "ece", "threshold",
    "precision", "recall", "f1", "predicted_positive_rate",
)


def compare(candidates: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Metrics of several models on the same holdout side by side: one row per metric, one
    column per model (``evaluate`` results). The holdouts must have the same size."""
    sizes = {name: result.get("n") for name, result in candidates.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"compare: the candidates were evaluated on different rows: {sizes}")
    table = pd.DataFrame(
        {name: [result.get(metric) for metric in COMPARED] for name, result in candidates.items()},
        index=pd.Index(COMPARED, name="metric"),
    )
    return table


def curves(y_true, probabilities: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per model, the ROC curve (``fpr``, ``tpr``, ``roc_auc``) and the precision-recall
    curve (``recall``, ``precision``, ``average_precision``) on the same labels, as
    ``keel.render.plots`` draws them."""
    result = {}
    for name, y_prob in probabilities.items():
        fpr, tpr = roc_curve(y_true, y_prob)
        recall, precision = precision_recall_curve(y_true, y_prob)
        result[name] = {
            "fpr": fpr, "tpr": tpr, "roc_auc": roc_auc(y_true, y_prob),
            "recall": recall, "precision": precision, "average_precision": average_precision(y_true, y_prob),
        }
    return result
