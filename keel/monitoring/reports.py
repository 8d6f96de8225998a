"""The monitoring tables' rows and the drift check's verdict, from the daily results.

Plain functions of :mod:`keel.monitoring.daily`'s results and the served rows: the
monitoring assets hand them the data and write what they return (``keel.monitoring.store``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from keel.core.dates import days_of
from keel.ml import evaluation as ev
from keel.monitoring.daily import TRAILING_DAYS, calibrated_drift, feature_drift, performance


def daily_feature_drift(
    reference: Mapping[str, Any], importance: Mapping[str, float], frame: pd.DataFrame, frame_days: pd.Series,
    days: Sequence[dt.date],
) -> dict[dt.date, dict[str, Any]]:
    """Each day's :func:`feature_drift` of the model inputs in ``frame`` (``frame_days`` gives
    each row's day), with its :func:`calibrated_drift` against the reference's ordinary-day
    bars; days without rows are left out."""
    results = {}
    for day in days:
        rows = frame.loc[frame_days == day]
        if rows.empty:
            continue
        result = feature_drift(reference, rows, importance=importance, day=day)
        result.update(calibrated_drift(result, reference["drift_baseline"]))
        results[day] = result
    return results


def evidently_days(results: Mapping[dt.date, Mapping[str, Any]], mode: str, threshold: float) -> list[dt.date]:
    """The days that get Evidently's HTML report: every day (``always``), the days whose
    calibrated drift share reaches ``threshold`` (``drifted``), or none (``never``)."""
    return [day for day, result in results.items()
            if mode == "always" or (mode == "drifted" and result["calibrated_drift_share"] >= threshold)]


def drift_tables(results: Mapping[dt.date, Mapping[str, Any]], model_name: str, version: int,
                 computed_at: dt.datetime, reports: Mapping[dt.date, Path]) -> dict[str, pd.DataFrame]:
    """The ``monitoring.feature_drift`` and ``monitoring.drift_daily`` rows of a run's days."""
    feature_frames, daily = [], []
    for day, result in results.items():
        rows, summary = drift_rows(day, model_name, version, result, computed_at, reports.get(day))
        feature_frames.append(rows)
        daily.append(summary)
    return {"feature_drift": pd.concat(feature_frames, ignore_index=True), "drift_daily": pd.DataFrame(daily)}


def most_important_only(timeline: Sequence[Mapping[str, Any]], last: Mapping[str, Any], count: int) -> list[dict]:
    """The drift timeline with each day's features cut to the ``count`` most important of
    the ``last`` day's result."""
    shown = {f["feature"] for f in last["important_features"][:count]}
    return [{**r, "features": {f: v for f, v in r["features"].items() if f in shown}} for r in timeline]


def drift_rows(day: dt.date, model_name: str, version: int, result: Mapping[str, Any],
               computed_at: dt.datetime, report_path: Path | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A ``feature_drift`` result as its ``monitoring.feature_drift`` rows and its
    ``monitoring.drift_daily`` row."""
    features = pd.DataFrame([
        {
            "day": day, "model_name": model_name, "model_version": version, "feature": feature,
            **{column: values.get(column) for column in (
                "kind", "stattest", "drift_score", "threshold", "drifted", "importance", "ks_stat",
                "ks_pvalue", "chi2_pvalue", "js_distance", "psi", "wasserstein_norm", "unseen_share",
                "n_ref", "n_cur", "flag",
            )},
            "computed_at": computed_at,
        }
        for feature, values in result["features"].items()
    ])
    daily = {
        "day": day, "model_name": model_name, "model_version": version, "rows": result["rows_cur"],
        "n_features": result["n_features"], "n_drifted": result["n_drifted"],
        "share_drifted": result["share_drifted"], "important_drift_share": result["important_drift_share"],
        "important_drift_score": result["important_drift_score"],
        "calibrated_drift_share": result["calibrated_drift_share"],
        "calibrated_drifted_features": json.dumps(result["calibrated_drifted_features"]),
        "dataset_drifted": result["dataset_drifted"],
        "drifted_features": json.dumps(result["drifted_features"]),
        "flagged_features": json.dumps(result["flagged_features"], sort_keys=True),
        "report_path": None if report_path is None else str(report_path),
        "computed_at": computed_at,
    }
    return features, daily


def drift_check_message(day: dt.date, result: Mapping[str, Any], threshold: float) -> tuple[bool, str]:
    """Whether the day passes ``important_feature_drift`` (the importance of its features
    beyond their own ordinary-day bar stays under ``threshold``), and why, naming those
    features with their importance, score and bar."""
    calibrated = result["calibrated_drift_share"]
    passed = calibrated < threshold
    beyond = result["calibrated_drifted_features"]
    named = ", ".join(
        f"{f['feature']} (importance {f['importance']:.3f}, {f['score']:.1f} vs bar {f['bar']:.1f})"
        for f in beyond[:8]
    )
    more = f" and {len(beyond) - 8} more" if len(beyond) > 8 else ""
    relation = "<" if passed else ">="
    message = (f"{day}: importance beyond the ordinary-day bars {calibrated:.3f} {relation} {threshold:.2f}; "
               f"{len(beyond)} feature(s) beyond their bar, {result['n_drifted']} of {result['n_features']} "
               f"over Evidently's threshold (drifted share {result['important_drift_share']:.3f})")
    if beyond:
        message += f": {named}{more}"
    if result["flagged_features"]:
        message += f"; no current values: {', '.join(sorted(result['flagged_features']))}"
    return passed, message


def served_day(day: dt.date, today: pd.DataFrame, computed_at: dt.datetime) -> tuple[dict[str, Any], pd.DataFrame]:
    """The start of a day's ``monitoring.prediction_drift`` row (its rows per tier) and its
    primary-tier rows."""
    tiers = {str(k): int(v) for k, v in today["tier"].value_counts().sort_index().items()}
    primary = today.loc[today["tier"] == "primary"]
    row: dict[str, Any] = {"day": day, "rows": len(today), "primary_rows": len(primary),
                           "tier_counts": json.dumps(tiers), "computed_at": computed_at}
    return row, primary


def serving_model(primary: pd.DataFrame) -> tuple[str, int, pd.Series]:
    """The model version that served most of a day's primary-tier rows, and its scores."""
    model_name = str(primary["model_name"].mode().iloc[0])
    version = int(primary["model_version"].mode().iloc[0])
    scores = primary.loc[(primary["model_name"] == model_name) & (primary["model_version"] == version), "score"]
    return model_name, version, scores


def prediction_drift_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    """A ``prediction_drift`` result as the columns of its ``monitoring.prediction_drift`` row."""
    return dict(
        drifted=result["drifted"], drift_score=result["drift_score"], stattest=result["stattest"],
        ks_stat=result["ks_stat"], ks_pvalue=result["ks_pvalue"], psi=result["psi"],
        positive_rate=result["positive_rate"]["current"],
        reference_positive_rate=result["positive_rate"]["reference"],
        mean_score=result["mean_score"]["current"], reference_mean_score=result["mean_score"]["reference"],
        mean_confidence=result["mean_confidence"]["current"],
        reference_mean_confidence=result["mean_confidence"]["reference"],
        threshold=result["positive_rate"]["threshold"],
    )


def performance_rows(
    frame: pd.DataFrame, days: Sequence[dt.date], computed_at: dt.datetime, window_days: int = TRAILING_DAYS
) -> list[dict[str, Any]]:
    """``monitoring.performance`` rows of the ``days`` that have labelled predictions in
    ``frame`` (``keel.ml.predictions.labelled_predictions``, which also holds the
    ``window_days - 1`` days before them)."""
    if frame.empty:
        return []
    result = performance(frame["label"].to_numpy(), frame["score"].to_numpy(),
                         frame["day"].to_numpy(), window_days=window_days)
    frame_days = days_of(frame, "day")
    rows = []
    for entry in result["days"]:
        day = dt.date.fromisoformat(entry["date"])
        if day not in days:
            continue
        today = frame.loc[frame_days == day]
        versions = (today["model_name"] + " v" + today["model_version"].astype(str)).value_counts().sort_index()
        trailing = entry["trailing"]
        rows.append({
            "day": day,
            "model_versions": json.dumps({k: int(v) for k, v in versions.items()}),
            "rows": entry["n"], "positives": entry["positives"], "roc_auc": entry["roc_auc"],
            "pr_auc": ev.average_precision(today["label"].to_numpy(), today["score"].to_numpy()),
            "log_loss": entry["log_loss"], "brier": entry["brier"],
            "mean_predicted": entry["mean_predicted"], "positive_rate": entry["positive_rate"],
            "trailing_start": dt.date.fromisoformat(trailing["start"]),
            "trailing_end": dt.date.fromisoformat(trailing["end"]),
            "trailing_days_with_data": trailing["days_with_data"], "trailing_rows": trailing["n"],
            "trailing_positives": trailing["positives"], "trailing_roc_auc": trailing["roc_auc"],
            "trailing_log_loss": trailing["log_loss"], "trailing_brier": trailing["brier"],
            "trailing_positive_rate": trailing["positive_rate"],
            "trailing_mean_predicted": trailing["mean_predicted"],
            "computed_at": computed_at,
        })
    return rows
