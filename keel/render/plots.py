"""Every plot Keel draws, as a pure function of the figures it shows.

The callers compute (metrics, curves, drift, performance) and hand the results over; nothing
here computes a statistic. Each figure is a matplotlib ``Figure`` on its own Agg canvas, made
by :func:`figure` and written by :func:`save`: no pyplot, so no global figure registry that a
long-running process could leak figures into.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.core.dates import as_date
from keel.core.policies import TriggerPolicy
from keel.render.tables import cell

DPI = 110
THUMBNAIL_DPI = 72


def figure(width: float, height: float):
    """An empty figure of ``width`` x ``height`` inches, laid out by matplotlib's constrained
    layout."""
    # matplotlib loads only when a plot is drawn (about half a second).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(drawn)
    return drawn


def save(drawn, path: Path, *, dpi: int = DPI) -> Path:
    """Write ``drawn`` as a PNG at ``path`` (its folder created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn.savefig(path, dpi=dpi)
    return path


def data_uri(drawn, *, dpi: int = THUMBNAIL_DPI) -> str:
    """``drawn`` as a PNG ``data:`` URI, small enough for the Dagster UI's Markdown."""
    buffer = io.BytesIO()
    drawn.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _date_numbers(days: Sequence[dt.date]) -> np.ndarray:
    # matplotlib loads only when a plot is drawn (about half a second).
    from matplotlib.dates import date2num

    return np.asarray(date2num(days), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Evaluation of a challenger


def plot_calibration(evaluations: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Reliability diagram of one or more ``evaluate`` results (their calibration curves)."""
    drawn = figure(5.5, 5)
    ax = drawn.subplots(1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, result in evaluations.items():
        curve = result["calibration"]
        ax.plot(
            [b["mean_predicted"] for b in curve], [b["observed_rate"] for b in curve],
            marker="o", label=f"{name} (ECE {result['ece']:.3f})",
        )
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1),
           title="Calibration")
    ax.legend(loc="upper left")
    return save(drawn, path)


def plot_roc_pr(curves: Mapping[str, Mapping[str, Any]], prevalence: float, path: Path) -> Path:
    """ROC and precision-recall curves of one or more models on the same labels; ``curves``
    holds per model ``fpr``, ``tpr``, ``roc_auc``, ``recall``, ``precision`` and
    ``average_precision`` (``keel.ml.evaluation.curves``)."""
    drawn = figure(11, 5)
    roc_ax, pr_ax = drawn.subplots(1, 2)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    pr_ax.axhline(prevalence, color="grey", linestyle="--", linewidth=1, label=f"prevalence {prevalence:.3f}")
    for name, curve in curves.items():
        auc, ap = curve["roc_auc"], curve["average_precision"]
        roc_ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
        pr_ax.step(curve["recall"], curve["precision"], where="post",
                   label=f"{name} (AP {ap:.3f})" if ap is not None else name)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02), title="Precision-recall")
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="upper right")
    return save(drawn, path)


def plot_slices(table: pd.DataFrame, path: Path, *, metric: str = "roc_auc") -> Path:
    """Horizontal bars of ``metric`` per slice value (from ``evaluate_slices``); small slices
    are left out."""
    shown = table[~table["small"]].copy()
    shown[metric] = pd.to_numeric(shown[metric], errors="coerce")
    labels = [f"{s}={v} (n={n:,})" for s, v, n in zip(shown["slice"], shown["value"], shown["n"])]
    drawn = figure(7, max(2.5, 0.3 * len(shown) + 1))
    ax = drawn.subplots(1, 1)
    ax.barh(range(len(shown)), shown[metric].fillna(0.0), color="tab:blue")
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=metric, title=f"{metric} by slice")
    return save(drawn, path)


def evaluation_thumbnail(curves: Mapping[str, Mapping[str, Any]],
                         calibrations: Mapping[str, Mapping[str, Any]]) -> str:
    """A small PNG data URI for the UI: ROC curves (``curves``: per label ``fpr``, ``tpr``,
    ``roc_auc``) beside the reliability diagram (``calibrations``: per label an ``evaluate``
    result with ``calibration`` and ``ece``)."""
    drawn = figure(8, 3.4)
    roc_ax, cal_ax = drawn.subplots(1, 2)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    cal_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for label, curve in curves.items():
        roc_ax.plot(curve["fpr"], curve["tpr"], linewidth=1.2, label=f"{label} ({cell(curve['roc_auc'], 3)})")
        result = calibrations[label]
        points = result["calibration"]
        cal_ax.plot([b["mean_predicted"] for b in points], [b["observed_rate"] for b in points], marker=".",
                    linewidth=1.2, label=f"{label} (ECE {result['ece']:.3f})")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUC)")
    cal_ax.set(xlabel="mean predicted", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1), title="Calibration")
    roc_ax.legend(loc="lower right", fontsize=7)
    cal_ax.legend(loc="upper left", fontsize=7)
    return data_uri(drawn)


# --------------------------------------------------------------------------------------------
# Monitoring of the champion


def plot_drift_timeline(
    drift_history: Sequence[Mapping[str, Any]], path: Path, *, policy: TriggerPolicy | None = None
) -> Path:
    """Drift shares per day (and the trigger threshold of ``policy``); below, which features
    drifted."""
    records = sorted(drift_history, key=lambda record: as_date(record["date"]))
    if not records:
        raise ValueError("no drift records to plot")
    days = [as_date(record["date"]) for record in records]
    names = list(records[-1].get("features", {}))
    drawn = figure(9, 5.5 if names else 3.5)
    if names:
        share_ax, grid_ax = drawn.subplots(2, 1, sharex=True, height_ratios=[1, 1.2])
    else:
        share_ax, grid_ax = drawn.subplots(1, 1), None
    share_ax.plot(days, [r.get("important_drift_share") for r in records], marker="o",
                  label="importance-weighted drifted share")
    share_ax.plot(days, [r.get("share_drifted") for r in records], marker=".", linestyle="--",
                  label="drifted share")
    calibrated = any(r.get("calibrated_drift_share") is not None for r in records)
    if calibrated:
        share_ax.plot(days, [r.get("calibrated_drift_share") for r in records], marker="s",
                      label="importance beyond the ordinary-day bars")
    if policy is not None:
        # The trigger and the important_feature_drift check decide on the calibrated share
        # when the records carry it, else on the importance-weighted share.
        bar = policy.calibrated_drift_share if calibrated else policy.important_drift_share
        share_ax.axhline(bar, color="tab:red", linewidth=1, label=f"trigger {bar:.2f}")
    share_ax.set(ylim=(0, 1.02), ylabel="share of features", title="Feature drift")
    share_ax.legend(loc="upper left", fontsize=8)
    if grid_ax is not None:
        drifted = np.array([
            [float(bool(r.get("features", {}).get(name, {}).get("drifted"))) for r in records]
            for name in names
        ])
        day_numbers = _date_numbers(days)
        half = 0.5 if len(days) == 1 else 0.5 * float(np.min(np.diff(day_numbers)))
        grid_ax.imshow(drifted, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest",
                       extent=(day_numbers[0] - half, day_numbers[-1] + half, len(names) - 0.5, -0.5))
        grid_ax.set_yticks(range(len(names)), names, fontsize=7)
        grid_ax.xaxis_date()
        grid_ax.set(title="Drifted features (dark: drifted)")
    drawn.autofmt_xdate()
    return save(drawn, path)


def plot_score_distribution(drift: Mapping[str, Any], path: Path) -> Path:
    """Training and current score histograms (as densities) with the operating threshold,
    from a ``prediction_drift`` result."""
    edges = np.asarray(drift["histogram"]["edges"])
    drawn = figure(7, 4.5)
    ax = drawn.subplots(1, 1)
    for label, counts in (("training", drift["histogram"]["reference"]),
                          ("current", drift["histogram"]["current"])):
        counts = np.asarray(counts, dtype=np.float64)
        ax.stairs(counts / counts.sum() / np.diff(edges), edges, label=label, linewidth=1.5)
    threshold = drift["positive_rate"]["threshold"]
    ax.axvline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="predicted probability", ylabel="density", xlim=(0, 1),
           title=(f"Scores: KS {drift['ks_stat']:.3f}, PSI {drift['psi']:.3f}, positive rate "
                  f"{drift['positive_rate']['current']:.3f} vs {drift['positive_rate']['reference']:.3f}"))
    ax.legend(loc="upper right")
    return save(drawn, path)


def plot_performance(result: Mapping[str, Any], path: Path, *, policy: TriggerPolicy | None = None) -> Path:
    """Daily and trailing AUC (with the minimum of ``policy``), and
    observed vs predicted positive rate, from a ``performance`` result."""
    days = [as_date(day["date"]) for day in result["days"]]
    if not days:
        raise ValueError("no days to plot")
    drawn = figure(9, 6)
    auc_ax, rate_ax = drawn.subplots(2, 1, sharex=True)
    nan = float("nan")
    auc_ax.plot(days, [d["roc_auc"] if d["roc_auc"] is not None else nan for d in result["days"]],
                marker=".", linestyle="none", label="daily")
    auc_ax.plot(days, [d["trailing"]["roc_auc"] if d["trailing"]["roc_auc"] is not None else nan
                       for d in result["days"]], label=f"trailing {result['window_days']} days")
    if policy is not None:
        auc_ax.axhline(policy.min_auc, color="tab:red", linewidth=1, label=f"minimum {policy.min_auc:.2f}")
    auc_ax.set(ylabel="ROC AUC", title="Performance")
    auc_ax.legend(loc="lower left", fontsize=8)
    rate_ax.plot(days, [d["trailing"]["positive_rate"] for d in result["days"]], label="observed rate")
    rate_ax.plot(days, [d["trailing"]["mean_predicted"] for d in result["days"]], linestyle="--",
                 label="mean predicted")
    rate_ax.set(ylabel=f"trailing {result['window_days']}-day rate")
    rate_ax.legend(loc="upper left", fontsize=8)
    drawn.autofmt_xdate()
    return save(drawn, path)


def plot_served_performance(history: pd.DataFrame, reliability: Sequence[Mapping[str, Any]], path: Path, *,
                            value_label: str | None = None, min_auc: float | None = None) -> Path:
    """Served performance by day: daily and trailing ROC AUC (with ``min_auc``), the daily
    business value (``value_label`` names it; no panel without it) and the reliability
    diagram (``keel.ml.evaluation.calibration_curve`` bins) of the latest trailing window.
    ``history`` holds the pooled ``monitoring.served_performance`` rows of both windows."""
    if history.empty:
        raise ValueError("no days to plot")
    daily = history[history["window"] == "day"].sort_values("day")
    trailing = history[history["window"] == "trailing"].sort_values("day")
    panels = 3 if value_label else 2
    drawn = figure(9, 3.2 * panels)
    axes = drawn.subplots(panels, 1)
    nan = float("nan")

    def values(frame: pd.DataFrame, column: str) -> list[float]:
        return [nan if v is None or pd.isna(v) else float(v) for v in frame[column]]

    auc_ax = axes[0]
    auc_ax.plot(list(daily["day"]), values(daily, "roc_auc"), marker=".", linestyle="none", label="daily")
    auc_ax.plot(list(trailing["day"]), values(trailing, "roc_auc"), label="trailing")
    if min_auc is not None:
        auc_ax.axhline(min_auc, color="tab:red", linewidth=1, label=f"minimum {min_auc:.2f}")
    auc_ax.set(ylabel="ROC AUC", title="Served performance (every source, tier and version)")
    auc_ax.legend(loc="lower left", fontsize=8)
    if value_label:
        value_ax = axes[1]
        value_ax.bar(list(daily["day"]), values(daily, "business_value"), color="tab:green")
        value_ax.axhline(0, color="black", linewidth=0.8)
        value_ax.set(ylabel=value_label, title="Business value per day at the operating threshold")
    reliability_ax = axes[-1]
    reliability_ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="perfect")
    if reliability:
        reliability_ax.plot([b["mean_predicted"] for b in reliability], [b["observed_rate"] for b in reliability],
                            marker="o", label="served")
        for b in reliability:
            reliability_ax.annotate(f"{b['count']:,}", (b["mean_predicted"], b["observed_rate"]),
                                    fontsize=7, xytext=(3, -9), textcoords="offset points")
    reliability_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed rate",
                       title="Reliability, latest trailing window")
    reliability_ax.legend(loc="upper left", fontsize=8)
    return save(drawn, path)


def plot_feature_drift(result: Mapping[str, Any], path: Path, top: int = 25) -> Path:
    """Horizontal bars: each of the ``top`` most important features' drift score against its
    threshold (red: drifted), labelled with the feature's importance and test, from a
    ``feature_drift`` result."""
    ranked = [f for f in result["important_features"] if f["drift_score"] is not None][:top]
    features = result["features"]
    drawn = figure(8, 0.28 * len(ranked) + 1.4)
    ax = drawn.subplots(1, 1)
    names = [f"{f['feature']} ({f['importance']:.2f}, {f['stattest']})" for f in ranked][::-1]
    scores = [f["drift_score"] for f in ranked][::-1]
    thresholds = [features[f["feature"]]["threshold"] for f in ranked][::-1]
    colours = ["tab:red" if f["drifted"] else "tab:blue" for f in ranked][::-1]
    ax.barh(range(len(ranked)), scores, color=colours)
    ax.scatter(thresholds, range(len(ranked)), marker="|", s=200, color="black", label="threshold")
    ax.set_yticks(range(len(ranked)), names, fontsize=7)
    # Distances run from 0.01 to 10 and more (a calendar feature on one day): a log scale
    # above the threshold's order keeps the small ones readable.
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set(xlabel="drift score (linear to 0.1, then log)", title=(
        f"Feature drift {result['date']}: important share {result['important_drift_share']:.3f}, "
        f"{result['n_drifted']}/{result['n_features']} drifted"))
    ax.legend(loc="lower right", fontsize=8)
    return save(drawn, path)


# --------------------------------------------------------------------------------------------
# A replayed period (keel simulate)

EVENT_STYLES = {
    "promoted": ("tab:green", "^"), "rejected": ("tab:red", "x"),
    "retrain_requested": ("tab:blue", "|"), "training_failed": ("black", "x"),
    "awaiting_approval": ("tab:orange", "o"),
}


def plot_simulation_timeline(path: Path, months: Sequence[Mapping[str, Any]], drift: Sequence[tuple],
                             events: Sequence[Mapping[str, Any]], *, threshold: float) -> Path:
    """Monthly AUC of the serving champion beside the static model, and the daily drift
    share (``drift``: ``(day, calibrated share, important share)``) against ``threshold``,
    with the retrains, promotions and rejections."""
    drawn = figure(10, 6.5)
    top, bottom = drawn.subplots(2, 1)
    labels = [m["month"] for m in months]
    top.plot(labels, [m["champion_auc"] for m in months], marker="o", label="serving champion (retrained)")
    top.plot(labels, [m["static_auc"] for m in months], marker="s", label="static model (warm-up only)")
    top.set_ylabel("ROC AUC per month")
    top.legend(loc="lower left")
    top.grid(alpha=0.3)
    if drift:
        days = [d for d, _, _ in drift]
        ratios = [r if r is not None else float("nan") for _, r, _ in drift]
        bottom.plot(days, ratios, lw=1, color="tab:gray", label="importance beyond the ordinary-day bars")
        bottom.axhline(threshold, color="tab:gray", ls=":", lw=1)
    top_y = 1.1
    for kind, (colour, marker) in EVENT_STYLES.items():
        chosen = [dt.date.fromisoformat(e["day"]) for e in events if e["kind"] == kind]
        if chosen:
            bottom.scatter(chosen, [top_y * 0.95] * len(chosen), color=colour, marker=marker, s=60,
                           label=kind.replace("_", " "))
    bottom.set_ylim(0, top_y)
    bottom.set_ylabel("drifted importance / events")
    # Below the axes: the events run along the top edge all year.
    bottom.legend(loc="upper left", bbox_to_anchor=(0.0, -0.08), fontsize=8, ncols=4, frameon=False)
    bottom.grid(alpha=0.3)
    return save(drawn, path)
