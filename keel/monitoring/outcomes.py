"""What was served, joined to how it turned out: served outcomes and served performance.

Every prediction Keel served, in batch (``serving.predictions``) and online
(``serving.online_predictions``, the API's log as loaded by ``keel.serving.served``), each with
its source, tier, model version and the operating threshold of that version, is joined to its
label as the label resolves: the use case's labels relation with the label corrections in
effect applied, exactly as training reads them (``keel.ml.datasets.labels_sql``). A prediction
whose label is not known yet is kept, with a null label, and counts as served but unresolved.

Each row keeps when its label was known (``label_resolved_at``: the use case's
``ModelSpec.label_resolved_column``, else the end of the row's date) and how many hours after
the start of its date that was (``resolved_after_hours``), so that performance can be read by
label maturity: :func:`maturity` measures what a read made N hours into the day would have
seen, which tells whether the labels that resolve late (the day's last targets, or the
positive ones) bias an early read.

:func:`performance` measures the outcomes per day and over the trailing 7 days, pooled
(``source``/``tier``/``model_name`` ``"all"``), per source x tier x model version, and per
value of each slice column the use case names: ROC AUC, PR AUC, log loss, Brier, expected
calibration error, per-class precision and recall at each row's operating threshold, the
confusion counts, and the use case's business metric (``ModelSpec.business``) on those counts.

Two tables, written together in one transaction per run of days (a re-run gives the same
tables): ``monitoring.served_outcomes`` (one row per served prediction) and
``monitoring.served_performance`` (one row per day, window and group).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from keel.core.plain import json_ready
from keel.core.spec import BusinessMetric, ModelSpec
from keel.core.warehouse import ident, table_exists
from keel.ml.datasets import LATEST_FEEDBACK, feature_rows, labels_sql, latest_feedback
from keel.ml.evaluation import (
    average_precision,
    brier,
    calibration_curve,
    expected_calibration_error,
    log_loss,
    roc_auc,
)

SCHEMA = "monitoring"
OUTCOMES = "served_outcomes"
PERFORMANCE = "served_performance"
TRAILING_DAYS = 7
ALL = "all"
SLICE_MIN_ROWS = 100  # a slice with fewer labelled rows keeps its counts, not its metrics
MATURITY_HOURS = (24, 30, 36, 48, 168)  # read points, hours after the start of the day
DEFAULT_THRESHOLD = 0.5  # for a version whose operating threshold cannot be found

OUTCOME_COLUMNS: dict[str, str] = {
    "day": "date",  # the date the prediction is for (the ModelSpec's date column)
    "key": "varchar",  # the prediction target (the ModelSpec's key)
    "source": "varchar",  # batch | online
    "request_id": "varchar",  # online only
    "tier": "varchar",
    "model_name": "varchar",
    "model_version": "integer",
    "score": "double",
    "threshold": "double",  # the version's operating threshold: predicted positive when score >= it
    "served_at": "timestamp",  # scored_at of a batch row, served_at of an online answer (UTC)
    "label": "integer",  # 0/1; null while the outcome is not known
    "label_source": "varchar",  # upstream | correction; null while not known
    "feedback_id": "varchar",  # the correction in effect, if any
    "label_resolved_at": "timestamp",
    "corrected_at": "timestamp",  # when the correction in effect was received
    "resolved_after_hours": "double",  # label_resolved_at - the day's midnight, in hours
    "slices": "varchar",  # JSON: slice column -> value (text), for per-slice performance
    "computed_at": "timestamp",
}

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "mean_predicted", "positive_rate",
           "precision_1", "recall_1", "precision_0", "recall_0")

PERFORMANCE_COLUMNS: dict[str, str] = {
    "day": "date",
    "window": "varchar",  # day | trailing
    "window_start": "date",
    "window_end": "date",
    "source": "varchar",  # batch | online | all
    "tier": "varchar",  # primary | fallback | baseline | all
    "model_name": "varchar",  # a registered model, or all
    "model_version": "integer",  # null when pooled
    "slice": "varchar",  # a slice column, or all
    "slice_value": "varchar",  # null when not sliced (or a missing value of the slice)
    "rows": "bigint",  # served predictions
    "labelled": "bigint",  # of which the label is known
    "positives": "bigint",
    **{metric: "double" for metric in METRICS},
    "threshold": "double",  # the operating threshold, when every row of the group has the same
    "tp": "bigint", "fp": "bigint", "fn": "bigint", "tn": "bigint",
    "business_value": "double",
    "business_value_per_prediction": "double",
    "computed_at": "timestamp",
}


def _table(name: str) -> str:
    if name not in (OUTCOMES, PERFORMANCE):  # the allow-list: table names never come from input
        raise ValueError(f"{name!r} is not a served-outcome table")
    return f"{SCHEMA}.{name}"


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create schema if not exists {SCHEMA}")
    for name, columns in ((OUTCOMES, OUTCOME_COLUMNS), (PERFORMANCE, PERFORMANCE_COLUMNS)):
        body = ", ".join(f"{ident(column)} {kind}" for column, kind in columns.items())
        con.execute(f"create table if not exists {_table(name)} ({body})")


# --------------------------------------------------------------------------------------------
# The join


def served_models(con: duckdb.DuckDBPyConnection, spec: ModelSpec, days: Sequence[dt.date]) -> list[tuple[str, int]]:
    """Every (model name, version) that served a prediction on ``days``, batch or online."""
    found: set[tuple[str, int]] = set()
    for table in _served_tables(con):
        found.update(con.execute(
            f"select distinct model_name, model_version from serving.{table} "
            f"where list_contains(cast(? as date[]), {ident(spec.date_column)}) and model_version is not null",
            [sorted(set(days))],
        ).fetchall())
    return sorted((str(name), int(version)) for name, version in found)


def _served_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [t for t in ("predictions", "online_predictions") if table_exists(con, "serving", t)]


def joined_outcomes(
    con: duckdb.DuckDBPyConnection,
    spec: ModelSpec,
    days: Sequence[dt.date],
    thresholds: Mapping[tuple[str, int], float],
    *,
    computed_at: dt.datetime,
    feedback_as_of: str | None | object = LATEST_FEEDBACK,
) -> pd.DataFrame:
    """One row per prediction served on ``days`` (columns ``OUTCOME_COLUMNS``), with its label
    as it stands: the corrections in effect at ``feedback_as_of`` applied (by default, every
    correction in the warehouse, as a new training run applies them; None: none).
    ``thresholds`` maps
    (model name, version) to its operating threshold; a version it lacks gets
    ``DEFAULT_THRESHOLD``."""
    days = sorted(set(days))
    if feedback_as_of is LATEST_FEEDBACK:
        feedback_as_of = latest_feedback(con, spec)
    key, date, label = ident(spec.key), ident(spec.date_column), ident(spec.label)
    resolved_column = spec.label_resolved_column
    labels, label_params = labels_sql(spec, feedback_as_of, (resolved_column,) if resolved_column else ())
    resolved = (f"cast(labels.{ident(resolved_column)} as timestamp)" if resolved_column
                else "cast(served.day as timestamp) + interval 1 day")
    parts, params = [], []
    for table in _served_tables(con):
        if table == "predictions":
            parts.append(
                f"select cast({key} as varchar) as key, {date} as day, 'batch' as source, "
                f"cast(null as varchar) as request_id, tier, model_name, model_version, score, "
                f"scored_at as served_at from serving.predictions where list_contains(cast(? as date[]), {date})")
        else:
            parts.append(
                f"select cast({key} as varchar) as key, {date} as day, 'online' as source, request_id, tier, "
                f"model_name, model_version, score, served_at from serving.online_predictions "
                f"where list_contains(cast(? as date[]), {date})")
        params.append(days)
    if not parts:
        return _empty_outcomes()
    frame = con.execute(
        f"with served as ({' union all '.join(parts)}) "
        f"select served.*, cast(labels.{label} as integer) as label, labels.feedback_id, labels.corrected_at, "
        f"{resolved} as upstream_resolved_at "
        f"from served left join {labels} as labels on cast(labels.{key} as varchar) = served.key "
        f"order by served.day, served.source, served.key, served.served_at, served.request_id",
        [*params, *label_params],
    ).df()
    if frame.empty:
        return _empty_outcomes()
    known = frame["label"].notna()
    corrected = frame["feedback_id"].notna()
    frame["label_source"] = np.where(corrected, "correction", np.where(known, "upstream", None))
    resolved_at = pd.to_datetime(frame["upstream_resolved_at"]).where(
        pd.to_datetime(frame["upstream_resolved_at"]).notna(), pd.to_datetime(frame["corrected_at"]))
    frame["label_resolved_at"] = resolved_at.where(known)
    midnight = pd.to_datetime(frame["day"])
    frame["resolved_after_hours"] = (frame["label_resolved_at"] - midnight).dt.total_seconds() / 3600.0
    frame["threshold"] = [float(thresholds.get((str(n), int(v)), DEFAULT_THRESHOLD)) if pd.notna(v)
                          else DEFAULT_THRESHOLD for n, v in zip(frame["model_name"], frame["model_version"])]
    frame["slices"] = _slices(con, spec, frame, days)
    frame["computed_at"] = computed_at
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    frame["label"] = frame["label"].astype("Int32")
    frame["model_version"] = frame["model_version"].astype("Int32")
    return frame[list(OUTCOME_COLUMNS)]


def _empty_outcomes() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in OUTCOME_COLUMNS})


def _slices(con: duckdb.DuckDBPyConnection, spec: ModelSpec, frame: pd.DataFrame,
            days: Sequence[dt.date]) -> list[str | None]:
    """Each row's slice values (JSON, values as text) from the feature mart's row of its key,
    derived slice columns included (``keel.ml.datasets.feature_rows``)."""
    if not spec.slices:
        return [None] * len(frame)
    features = feature_rows(con, spec, min(days), max(days))
    by_key = {}
    for key, values in zip(features[spec.key].astype(str), features[list(spec.slices)].to_dict("records")):
        by_key[key] = json.dumps({column: _text(values.get(column)) for column in spec.slices}, sort_keys=True)
    return [by_key.get(k) for k in frame["key"]]


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (np.integer,)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------
# Performance


def group_metrics(y: np.ndarray, p: np.ndarray, threshold: np.ndarray,
                  business: BusinessMetric | None) -> dict[str, Any]:
    """The metrics of labelled rows: labels ``y`` (0/1), scores ``p`` and each row's operating
    threshold (predicted positive when ``p >= threshold``). Undefined metrics are None."""
    n = int(y.size)
    result: dict[str, Any] = {"labelled": n, "positives": int(y.sum()) if n else 0}
    if n == 0:
        return {**result, **{m: None for m in METRICS}, "threshold": None,
                "tp": 0, "fp": 0, "fn": 0, "tn": 0, "business_value": None, "business_value_per_prediction": None}
    predicted = p >= threshold
    truth = y == 1
    tp, fp = int(np.sum(predicted & truth)), int(np.sum(predicted & ~truth))
    fn, tn = int(np.sum(~predicted & truth)), int(np.sum(~predicted & ~truth))
    value = business.value(tp, fp, fn, tn) if business is not None else None
    distinct = np.unique(threshold)
    return {
        **result,
        "roc_auc": roc_auc(y, p),
        "pr_auc": average_precision(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
        "mean_predicted": float(p.mean()),
        "positive_rate": float(y.mean()),
        "precision_1": tp / (tp + fp) if tp + fp else None,
        "recall_1": tp / (tp + fn) if tp + fn else None,
        "precision_0": tn / (tn + fn) if tn + fn else None,
        "recall_0": tn / (tn + fp) if tn + fp else None,
        "threshold": float(distinct[0]) if distinct.size == 1 else None,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "business_value": value,
        "business_value_per_prediction": None if value is None else value / n,
    }


def performance(
    outcomes: pd.DataFrame,
    days: Sequence[dt.date],
    *,
    slices: Sequence[str] = (),
    business: BusinessMetric | None = None,
    window_days: int = TRAILING_DAYS,
    slice_min_rows: int = SLICE_MIN_ROWS,
    computed_at: dt.datetime | None = None,
) -> pd.DataFrame:
    """``PERFORMANCE_COLUMNS`` rows for each of ``days``: its own rows (``window`` "day") and the
    rows of the ``window_days`` days ending on it ("trailing"; pooled, not a mean of days), from
    ``outcomes`` (``OUTCOME_COLUMNS`` rows covering those days and the ones before). Per window:
    every row pooled, each source x tier x model version, each value of each slice column
    (pooled over versions; fewer than ``slice_min_rows`` labelled rows: counts only)."""
    if window_days < 1:
        raise ValueError("window_days must be >= 1")
    frame = outcomes.copy()
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    parsed = [json.loads(s) if isinstance(s, str) else {} for s in frame["slices"]] if slices else []
    for column in slices:
        frame[f"_slice_{column}"] = [values.get(column) for values in parsed]
    rows = []
    for day in sorted(set(days)):
        start = day - dt.timedelta(days=window_days - 1)
        for window, first in (("day", day), ("trailing", start)):
            part = frame[(frame["day"] >= first) & (frame["day"] <= day)]
            base = {"day": day, "window": window, "window_start": first, "window_end": day}
            rows.append({**base, "source": ALL, "tier": ALL, "model_name": ALL, "model_version": None,
                         "slice": ALL, "slice_value": None, **_measure(part, business)})
            by = part.groupby(["source", "tier", "model_name", "model_version"], dropna=False, sort=True)
            for (source, tier, name, version), group in by:
                rows.append({**base, "source": source, "tier": tier, "model_name": name,
                             "model_version": None if pd.isna(version) else int(version),
                             "slice": ALL, "slice_value": None, **_measure(group, business)})
            for column in slices:
                values = part[f"_slice_{column}"]
                for value in sorted({v for v in values if v is not None}) + ([None] if values.isna().any() else []):
                    group = part[values.isna()] if value is None else part[values == value]
                    measured = _measure(group, business)
                    if measured["labelled"] < slice_min_rows:
                        measured = {**measured, **{m: None for m in METRICS}, "business_value": None,
                                    "business_value_per_prediction": None}
                    rows.append({**base, "source": ALL, "tier": ALL, "model_name": ALL, "model_version": None,
                                 "slice": column, "slice_value": value, **measured})
    table = pd.DataFrame(rows, columns=[c for c in PERFORMANCE_COLUMNS if c != "computed_at"])
    table["computed_at"] = computed_at
    for column in (*METRICS, "threshold", "business_value", "business_value_per_prediction"):
        table[column] = pd.Series([r.get(column) for r in rows], dtype=object, index=table.index)
    table["model_version"] = pd.array([r["model_version"] for r in rows], dtype="Int32")
    return table


def _measure(part: pd.DataFrame, business: BusinessMetric | None) -> dict[str, Any]:
    labelled = part[part["label"].notna()]
    metrics = group_metrics(
        labelled["label"].to_numpy(dtype=np.float64), labelled["score"].to_numpy(dtype=np.float64),
        labelled["threshold"].to_numpy(dtype=np.float64), business)
    return {"rows": len(part), **metrics}


def maturity(outcomes: pd.DataFrame, hours: Sequence[float] = MATURITY_HOURS) -> list[dict[str, Any]]:
    """What a read of ``outcomes`` made ``h`` hours after the start of each row's day would
    have seen, for each ``h`` and finally with every label known: labelled rows, their share
    of the rows labelled in the end, observed positive rate, mean score and ROC AUC. A
    positive rate that climbs with maturity says the late labels are the positive ones, and
    an early read is biased."""
    labelled = outcomes[outcomes["label"].notna()]
    final = len(labelled)
    result = []
    for h in (*hours, None):
        part = labelled if h is None else labelled[labelled["resolved_after_hours"] <= h]
        y = part["label"].to_numpy(dtype=np.float64)
        p = part["score"].to_numpy(dtype=np.float64)
        result.append(json_ready({
            "read_at": "final" if h is None else f"+{h:g} h",
            "labelled": len(part),
            "share_of_final": len(part) / final if final else None,
            "positive_rate": float(y.mean()) if y.size else None,
            "mean_predicted": float(p.mean()) if p.size else None,
            "roc_auc": roc_auc(y, p) if y.size else None,
        }))
    return result


def reliability(outcomes: pd.DataFrame) -> list[dict[str, float]]:
    """The calibration curve (``keel.ml.evaluation.calibration_curve``) of the labelled rows."""
    labelled = outcomes[outcomes["label"].notna()]
    if labelled.empty:
        return []
    return calibration_curve(labelled["label"].to_numpy(dtype=np.float64), labelled["score"].to_numpy(dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Storage


def replace_days(
    con: duckdb.DuckDBPyConnection,
    days: Sequence[dt.date],
    outcomes: pd.DataFrame,
    measure: Callable[[pd.DataFrame], pd.DataFrame],
    *,
    window_days: int = TRAILING_DAYS,
) -> tuple[int, pd.DataFrame]:
    """In one transaction: replace ``days`` of ``monitoring.served_outcomes`` with ``outcomes``,
    then ``measure`` (outcomes of the trailing windows, as stored now -> performance rows, e.g.
    :func:`performance` bound to the use case) and replace those days of
    ``monitoring.served_performance``. A failure leaves both tables as they were. Returns the
    outcome rows written and the performance rows."""
    ensure_tables(con)
    days = sorted(set(days))
    outside = sorted(set(pd.to_datetime(outcomes["day"]).dt.date) - set(days)) if len(outcomes) else []
    if outside:
        raise ValueError(f"outcome rows fall outside the days replaced: {outside[:5]}")
    columns = ", ".join(ident(c) for c in OUTCOME_COLUMNS)
    con.execute("begin transaction")
    try:
        con.execute(f"delete from {_table(OUTCOMES)} where list_contains(cast(? as date[]), day)", [days])
        if len(outcomes):
            con.register("_keel_outcomes", outcomes[list(OUTCOME_COLUMNS)])
            con.execute(f"insert into {_table(OUTCOMES)} ({columns}) select {columns} from _keel_outcomes")
            con.unregister("_keel_outcomes")
        window = con.execute(
            f"select * from {_table(OUTCOMES)} where day between ? and ? order by day, source, key",
            [days[0] - dt.timedelta(days=window_days - 1), days[-1]],
        ).df()
        rows = measure(window)
        con.execute(f"delete from {_table(PERFORMANCE)} where list_contains(cast(? as date[]), day)", [days])
        if len(rows):
            names = ", ".join(ident(c) for c in PERFORMANCE_COLUMNS)
            con.register("_keel_performance", rows[list(PERFORMANCE_COLUMNS)])
            con.execute(f"insert into {_table(PERFORMANCE)} ({names}) select {names} from _keel_performance")
            con.unregister("_keel_performance")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return len(outcomes), rows


def performance_history(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every pooled, unsliced ``monitoring.served_performance`` row (both windows), by day."""
    if not table_exists(con, SCHEMA, PERFORMANCE):
        return pd.DataFrame(columns=list(PERFORMANCE_COLUMNS))
    return con.execute(
        f"select * from {_table(PERFORMANCE)} where source = 'all' and slice = 'all' order by day, \"window\""
    ).df()


SUMMARY_FIELDS = ("rows", "labelled", "positives", "roc_auc", "pr_auc", "log_loss", "brier", "ece",
                  "precision_1", "recall_1", "precision_0", "recall_0", "threshold",
                  "tp", "fp", "fn", "tn", "business_value", "business_value_per_prediction")


def summary(con: duckdb.DuckDBPyConnection, start: dt.date | None = None,
            end: dt.date | None = None) -> dict[str, Any] | None:
    """The latest day of ``monitoring.served_performance`` in ``start..end`` (None: unbounded)
    for ``keel status --json``: per window ("day", "trailing"), the pooled row first, then one
    per source x tier x model version, each with its metrics, confusion counts and business
    value. None before served outcomes were measured."""
    if not table_exists(con, SCHEMA, PERFORMANCE):
        return None
    within = "(cast(? as date) is null or day >= ?) and (cast(? as date) is null or day <= ?)"
    bounds = [start, start, end, end]
    (last, measured) = con.execute(
        f"select max(day), count(distinct day) from {_table(PERFORMANCE)} where {within}", bounds).fetchone()
    if last is None:
        return None
    cursor = con.execute(
        f"select * from {_table(PERFORMANCE)} where day = ? and slice = 'all' "
        f"order by \"window\", source = 'all' desc, source, tier, model_name, model_version",
        [last],
    )
    names = [d[0] for d in cursor.description]
    doc: dict[str, Any] = {"day": last.isoformat(), "days_measured": int(measured), "windows": {}}
    for values in cursor.fetchall():
        row = dict(zip(names, values))
        window = doc["windows"].setdefault(row["window"], {
            "start": row["window_start"].isoformat(), "end": row["window_end"].isoformat(), "groups": []})
        window["groups"].append(json_ready({
            "source": row["source"], "tier": row["tier"], "model_name": row["model_name"],
            "model_version": row["model_version"], **{f: row[f] for f in SUMMARY_FIELDS},
        }))
    return doc


def trailing_window(con: duckdb.DuckDBPyConnection, day: dt.date) -> dict[str, Any] | None:
    """The pooled trailing window ending on ``day`` in the shape of
    ``keel.monitoring.store.trailing_performance`` (``start``, ``end``, ``n`` labelled rows,
    ``positives``, ``roc_auc``, ``log_loss``, ``brier``, ``positive_rate``, ``mean_predicted``,
    ``days_with_data``) plus ``business_value``: what the retraining trigger reads under
    ``performance_source = "served_outcomes"``. None when ``day`` was not measured or none
    of its window's labels are known yet."""
    if not table_exists(con, SCHEMA, PERFORMANCE):
        return None
    rows = con.execute(
        f"select window_start, window_end, labelled, positives, roc_auc, log_loss, brier, positive_rate, "
        f"mean_predicted, business_value from {_table(PERFORMANCE)} "
        f"where day = ? and \"window\" = 'trailing' and source = 'all' and slice = 'all'",
        [day],
    ).fetchall()
    if not rows or not rows[-1][2]:
        return None
    start, end, n, positives, auc, loss, brier_score, rate, mean, value = rows[-1]
    (days,) = con.execute(
        f"select count(distinct day) from {_table(OUTCOMES)} where day between ? and ? and label is not null",
        [start, end],
    ).fetchone()
    return {
        "start": start.isoformat(), "end": end.isoformat(), "n": int(n), "positives": int(positives),
        "roc_auc": auc, "log_loss": loss, "brier": brier_score, "positive_rate": rate, "mean_predicted": mean,
        "days_with_data": int(days), "business_value": value,
    }
