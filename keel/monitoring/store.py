"""The monitoring tables in the warehouse: their layout, and what writes and reads them.

The monitoring assets (``assets/monitoring.py``) write one schema, ``monitoring``:

* ``monitoring.reference``: one row per champion version whose reference was built: where its
  JSON (``keel.monitoring.build_reference`` plus the model's threshold and importance) and
  its Parquet sample of training rows live, its window, threshold and importance.
* ``monitoring.feature_drift``: one row per day and monitored feature.
* ``monitoring.drift_daily``: one row per day: the day's drift summary.
* ``monitoring.prediction_drift``: one row per day: the served scores against the training scores.
* ``monitoring.performance``: one row per day with labels: that day's metrics and the
  trailing window's (``keel.monitoring.daily.performance``).

A day's rows are replaced as a whole, inside one transaction, so re-running a day gives the
same tables. The retraining trigger reads them through :func:`drift_history`,
:func:`trailing_performance` and :func:`monitored_days`; those take a DuckDB connection
(``KeelState.warehouse()``) and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pandas as pd

from keel.core.warehouse import table_exists

SCHEMA = "monitoring"

COLUMNS: dict[str, dict[str, str]] = {
    "reference": {
        "model_name": "varchar",
        "model_version": "integer",
        "path": "varchar",
        "sample_path": "varchar",
        "built_at": "timestamp",
        "rows": "bigint",
        "sample_rows": "bigint",
        "window_start": "date",
        "window_end": "date",
        "threshold": "double",
        "importance": "varchar",  # JSON: feature -> normalised gain
        "drift_baseline": "varchar",  # JSON: keel.monitoring.drift_baseline (per-feature bars)
    },
    "feature_drift": {
        "day": "date",
        "model_name": "varchar",
        "model_version": "integer",
        "feature": "varchar",
        "kind": "varchar",
        "stattest": "varchar",
        "drift_score": "double",
        "threshold": "double",
        "drifted": "boolean",
        "importance": "double",
        "ks_stat": "double",
        "ks_pvalue": "double",
        "chi2_pvalue": "double",
        "js_distance": "double",
        "psi": "double",
        "wasserstein_norm": "double",
        "unseen_share": "double",
        "n_ref": "bigint",
        "n_cur": "bigint",
        "flag": "varchar",
        "computed_at": "timestamp",
    },
    "drift_daily": {
        "day": "date",
        "model_name": "varchar",
        "model_version": "integer",
        "rows": "bigint",
        "n_features": "integer",
        "n_drifted": "integer",
        "share_drifted": "double",
        "important_drift_share": "double",
        "important_drift_score": "double",  # keel.monitoring.drift_intensity
        # keel.monitoring.daily.calibrated_drift: features beyond their ordinary-day bar, and their
        # share of the importance (what the check and the trigger decide on)
        "calibrated_drift_share": "double",
        "calibrated_drifted_features": "varchar",  # JSON list of {feature, importance, score, bar}
        "dataset_drifted": "boolean",
        "drifted_features": "varchar",  # JSON list
        "flagged_features": "varchar",  # JSON object: feature -> flag
        "report_path": "varchar",  # the day's Evidently HTML, when one was written
        "computed_at": "timestamp",
    },
    "prediction_drift": {
        "day": "date",
        "model_name": "varchar",
        "model_version": "integer",  # the version whose primary-tier scores were compared
        "reference_version": "integer",  # the version whose training scores they were compared with
        "rows": "bigint",
        "primary_rows": "bigint",
        "tier_counts": "varchar",  # JSON: tier -> rows
        "drifted": "boolean",
        "drift_score": "double",
        "stattest": "varchar",
        "ks_stat": "double",
        "ks_pvalue": "double",
        "psi": "double",
        "positive_rate": "double",
        "reference_positive_rate": "double",
        "mean_score": "double",
        "reference_mean_score": "double",
        "mean_confidence": "double",
        "reference_mean_confidence": "double",
        "threshold": "double",
        "computed_at": "timestamp",
    },
    "performance": {
        "day": "date",
        "model_versions": "varchar",  # JSON: "<name> v<version>" -> rows
        "rows": "bigint",
        "positives": "bigint",
        "roc_auc": "double",
        "pr_auc": "double",
        "log_loss": "double",
        "brier": "double",
        "mean_predicted": "double",
        "positive_rate": "double",
        "trailing_start": "date",
        "trailing_end": "date",
        "trailing_days_with_data": "integer",
        "trailing_rows": "bigint",
        "trailing_positives": "bigint",
        "trailing_roc_auc": "double",
        "trailing_log_loss": "double",
        "trailing_brier": "double",
        "trailing_positive_rate": "double",
        "trailing_mean_predicted": "double",
        "computed_at": "timestamp",
    },
}
DAILY_TABLES = ("feature_drift", "drift_daily", "prediction_drift", "performance")


def _table(name: str) -> str:
    if name not in COLUMNS:  # the allow-list: table names are never taken from input
        raise ValueError(f"{name!r} is not a monitoring table; they are {sorted(COLUMNS)}")
    return f"{SCHEMA}.{name}"


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the schema and every monitoring table that does not exist yet."""
    con.execute(f"create schema if not exists {SCHEMA}")
    for name, columns in COLUMNS.items():
        body = ", ".join(f"{column} {kind}" for column, kind in columns.items())
        con.execute(f"create table if not exists {_table(name)} ({body})")


# --------------------------------------------------------------------------------------------
# Writing


def replace_days(
    con: duckdb.DuckDBPyConnection, rows: Mapping[str, pd.DataFrame], days: Sequence[dt.date]
) -> dict[str, int]:
    """Replace ``days`` in each table of ``rows`` (table name -> its new rows) in one
    transaction: every row of those days is deleted, then the new rows inserted. A day
    without new rows is left empty. Returns the rows inserted per table."""
    ensure_tables(con)
    days = sorted(set(days))
    inserted = {}
    con.execute("begin transaction")
    try:
        for name, frame in rows.items():
            if name not in DAILY_TABLES:
                raise ValueError(f"{name!r} is not a daily monitoring table")
            frame = _conform(name, frame)
            outside = sorted(set(frame["day"]) - set(days))
            if outside:
                raise ValueError(f"rows for {name} fall outside the days replaced: {outside[:5]}")
            con.execute(f"delete from {_table(name)} where list_contains(cast(? as date[]), day)", [days])
            if len(frame):
                con.register("incoming_monitoring_rows", frame)
                try:
                    con.execute(
                        f"insert into {_table(name)} by name select * from incoming_monitoring_rows"
                    )
                finally:
                    con.unregister("incoming_monitoring_rows")
            inserted[name] = len(frame)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return inserted


def _conform(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    columns = COLUMNS[name]
    unknown = sorted(set(frame.columns) - set(columns))
    if unknown:
        raise ValueError(f"{name}: unknown columns {unknown}")
    frame = frame.reindex(columns=list(columns))
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    return frame


def write_reference(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> None:
    """Record the reference of one model version, replacing an earlier record of it."""
    ensure_tables(con)
    columns = list(COLUMNS["reference"])
    missing = sorted(set(columns) - set(row))
    if missing:
        raise ValueError(f"reference row lacks {missing}")
    values = [json.dumps(row[c], sort_keys=True) if c in ("importance", "drift_baseline") else row[c]
              for c in columns]
    con.execute("begin transaction")
    try:
        con.execute(
            f"delete from {_table('reference')} where model_name = ? and model_version = ?",
            [row["model_name"], row["model_version"]],
        )
        con.execute(
            f"insert into {_table('reference')} ({', '.join(columns)}) "
            f"values ({', '.join('?' for _ in columns)})",
            values,
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


# --------------------------------------------------------------------------------------------
# Reading


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether a monitoring table exists; readers create nothing, so that a read-only
    connection (``keel status``, a notebook) can ask before any monitoring ran."""
    _table(name)  # a known monitoring table
    return table_exists(con, SCHEMA, name)


def _records(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def reference_record(con: duckdb.DuckDBPyConnection, model_name: str, version: int) -> dict[str, Any] | None:
    """The ``monitoring.reference`` row of one model version (importance parsed), or None."""
    if not _exists(con, "reference"):
        return None
    rows = _records(
        con,
        f"select * from {_table('reference')} where model_name = ? and model_version = ?",
        [model_name, version],
    )
    if not rows:
        return None
    row = rows[-1]
    row["importance"] = json.loads(row["importance"]) if row["importance"] else {}
    row["drift_baseline"] = json.loads(row["drift_baseline"]) if row.get("drift_baseline") else None
    return row


def drift_history(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
    """One record per day of ``start..end`` with a drift row, in date order: ``date``,
    ``important_drift_share``, ``share_drifted``, ``model_name``, ``model_version`` (whose
    reference the day was measured against), ``drifted_features`` (list) and
    ``flagged_features`` (feature -> flag). Fit for ``keel.monitoring.trigger.decide_retrain``."""
    if not _exists(con, "drift_daily"):
        return []
    rows = _records(
        con,
        f"select day, important_drift_share, share_drifted, important_drift_score, calibrated_drift_share, "
        f"model_name, model_version, drifted_features, flagged_features from {_table('drift_daily')} "
        f"where day between ? and ? order by day",
        [start, end],
    )
    return [
        {
            "date": row["day"],
            "important_drift_share": row["important_drift_share"],
            "share_drifted": row["share_drifted"],
            "important_drift_score": row["important_drift_score"],
            "calibrated_drift_share": row["calibrated_drift_share"],
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "drifted_features": json.loads(row["drifted_features"] or "[]"),
            "flagged_features": json.loads(row["flagged_features"] or "{}"),
        }
        for row in rows
    ]


def drift_timeline(con: duckdb.DuckDBPyConnection, start: dt.date | None = None,
                   end: dt.date | None = None) -> list[dict[str, Any]]:
    """:func:`drift_history` with each day's per-feature decisions under ``features``
    (feature -> {drifted, drift_score, importance}): what ``plot_drift_timeline`` draws."""
    start = start or dt.date.min
    end = end or dt.date.max
    history = drift_history(con, start, end)
    features: dict[dt.date, dict[str, dict[str, Any]]] = {}
    for row in _records(
        con,
        f"select day, feature, drifted, drift_score, importance from {_table('feature_drift')} "
        f"where day between ? and ? order by day, importance desc, feature",
        [start, end],
    ):
        features.setdefault(row["day"], {})[row["feature"]] = {
            "drifted": bool(row["drifted"]), "drift_score": row["drift_score"], "importance": row["importance"],
        }
    return [{**record, "features": features.get(record["date"], {})} for record in history]


def trailing_performance(con: duckdb.DuckDBPyConnection, day: dt.date) -> dict[str, Any] | None:
    """The trailing window ending on ``day`` as ``keel.monitoring.daily.performance(...)['trailing']``
    gives it (``start``, ``end``, ``n``, ``positives``, ``roc_auc``, ``log_loss``, ``brier``,
    ``positive_rate``, ``mean_predicted``, ``days_with_data``), or None when ``day`` has no
    performance row (no labels yet)."""
    if not _exists(con, "performance"):
        return None
    rows = _records(
        con,
        f"select trailing_start, trailing_end, trailing_rows, trailing_positives, trailing_roc_auc, "
        f"trailing_log_loss, trailing_brier, trailing_positive_rate, trailing_mean_predicted, "
        f"trailing_days_with_data from {_table('performance')} where day = ?",
        [day],
    )
    if not rows:
        return None
    return _trailing(rows[-1])


def _trailing(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "start": row["trailing_start"].isoformat(),
        "end": row["trailing_end"].isoformat(),
        "n": int(row["trailing_rows"]),
        "positives": None if row["trailing_positives"] is None else int(row["trailing_positives"]),
        "roc_auc": row["trailing_roc_auc"],
        "log_loss": row["trailing_log_loss"],
        "brier": row["trailing_brier"],
        "positive_rate": row["trailing_positive_rate"],
        "mean_predicted": row["trailing_mean_predicted"],
        "days_with_data": int(row["trailing_days_with_data"]),
    }


def performance_history(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Every ``monitoring.performance`` day shaped like ``keel.monitoring.daily.performance``'s
    result (``days`` with their ``trailing`` windows): what ``plot_performance`` draws."""
    if not _exists(con, "performance"):
        return {"window_days": None, "days": []}
    rows = _records(con, f"select * from {_table('performance')} order by day")
    days = [
        {
            "date": row["day"].isoformat(),
            "n": int(row["rows"]),
            "roc_auc": row["roc_auc"],
            "log_loss": row["log_loss"],
            "brier": row["brier"],
            "positive_rate": row["positive_rate"],
            "mean_predicted": row["mean_predicted"],
            "trailing": _trailing(row),
        }
        for row in rows
    ]
    spans = {(dt.date.fromisoformat(d["trailing"]["end"]) - dt.date.fromisoformat(d["trailing"]["start"])).days + 1
             for d in days}
    return {"window_days": spans.pop() if len(spans) == 1 else None, "days": days}


def monitored_days(con: duckdb.DuckDBPyConnection) -> list[dt.date]:
    """Days that have both a drift row and a performance row, in order: the days the
    retraining trigger can decide."""
    if not (_exists(con, "drift_daily") and _exists(con, "performance")):
        return []
    rows = con.execute(
        f"select distinct drift.day from {_table('drift_daily')} as drift "
        f"join {_table('performance')} as performance on performance.day = drift.day order by drift.day"
    ).fetchall()
    return [day for (day,) in rows]
