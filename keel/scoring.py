"""Batch scoring with tiers: the champion, else the fallback, else the rule baseline.

Each tier is the ``champion`` of one registered model (primary, fallback, baseline). A tier
that fails to load is skipped for the whole run; a tier that fails on a day's rows (an
exception, or a score that is not a probability) is skipped for that day. Every prediction
row records the tier and the model version that produced it, so a degraded day is visible
in the table itself. When every tier fails on a day, scoring fails loudly.

Predictions live in ``serving.predictions``; a run replaces its days in one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from keel.modeling import KINDS, TrainedModel

TIERS = KINDS  # ("primary", "fallback", "baseline"): the order scoring tries them in
PREDICTION_COLUMNS = ("flight_id", "flight_date", "score", "tier", "model_name", "model_version", "scored_at")

SERVING_DDL = [
    "create schema if not exists serving",
    """create table if not exists serving.predictions (
        flight_id varchar, flight_date date, score double, tier varchar, model_name varchar,
        model_version integer, scored_at timestamp)""",
]


@dataclass
class Tier:
    name: str
    model_name: str
    version: int | None = None
    model: TrainedModel | None = None
    error: str | None = None


@dataclass
class ScoringResult:
    predictions: pd.DataFrame
    rows_per_day: dict[dt.date, dict[str, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # "<day> <tier>: <error>"

    def rows_per_tier(self) -> dict[str, int]:
        totals = {tier: 0 for tier in TIERS}
        for counts in self.rows_per_day.values():
            for tier, n in counts.items():
                totals[tier] += n
        return totals


def load_tiers(
    names: Mapping[str, str], load: Callable[[str], tuple[int, TrainedModel]]
) -> list[Tier]:
    """Each tier's model, via ``load(registered name) -> (version, model)``; a tier that
    fails to load keeps its error instead."""
    tiers = []
    for kind in TIERS:
        tier = Tier(kind, names[kind])
        try:
            tier.version, tier.model = load(names[kind])
        except Exception as exc:  # the next tier takes over; the error is reported
            tier.error = f"{type(exc).__name__}: {exc}"
        tiers.append(tier)
    return tiers


def score_days(
    frame: pd.DataFrame, key: str, date_column: str, days: Sequence[dt.date], tiers: Sequence[Tier],
    scored_at: dt.datetime,
) -> ScoringResult:
    """Score each day's rows of ``frame`` with the first tier that works for that day.

    A tier scores every remaining day in one call; only if that call fails does it retry day
    by day, so one bad day moves to the next tier alone."""
    dates = pd.to_datetime(frame[date_column]).dt.date.to_numpy()
    rows_of_day = {day: rows for day, rows in pd.Series(np.arange(len(frame))).groupby(dates).indices.items()}
    result = ScoringResult(pd.DataFrame(columns=list(PREDICTION_COLUMNS)))
    result.rows_per_day = {day: {tier.name: 0 for tier in tiers} for day in days}
    remaining = [day for day in days if day in rows_of_day]
    parts = []
    for tier in tiers:
        if tier.model is None or not remaining:
            continue
        scored = _score_with(tier, frame, rows_of_day, remaining, result.failures)
        for day, scores in scored.items():
            rows = frame.iloc[rows_of_day[day]]
            parts.append(pd.DataFrame({
                "flight_id": rows[key].to_numpy(),
                "flight_date": day,
                "score": scores,
                "tier": tier.name,
                "model_name": tier.model_name,
                "model_version": tier.version,
                "scored_at": scored_at,
            }))
            result.rows_per_day[day][tier.name] = len(rows)
        remaining = [day for day in remaining if day not in scored]
    if remaining:
        load_errors = "; ".join(f"{t.name}: {t.error}" for t in tiers if t.error)
        day_errors = [f for f in result.failures if f.startswith(str(remaining[0]))]
        raise RuntimeError(
            f"no tier could score {len(remaining)} day(s) from {remaining[0]}: "
            + "; ".join(day_errors or ["no tier loaded"])
            + (f" (not loaded: {load_errors})" if load_errors else "")
        )
    if parts:
        result.predictions = pd.concat(parts, ignore_index=True)[list(PREDICTION_COLUMNS)]
    return result


def _score_with(tier: Tier, frame: pd.DataFrame, rows_of_day: Mapping[dt.date, np.ndarray],
                days: Sequence[dt.date], failures: list[str]) -> dict[dt.date, np.ndarray]:
    """Scores of ``days`` by one tier: all days at once, else day by day."""
    def predict(rows: np.ndarray) -> np.ndarray:
        scores = np.asarray(tier.model.predict(frame.iloc[rows]), dtype=np.float64)
        if scores.shape != (len(rows),):
            raise ValueError(f"{scores.shape[0] if scores.ndim else 0} scores for {len(rows)} rows")
        return scores

    def valid(scores: np.ndarray) -> bool:
        return bool(np.all((scores >= 0) & (scores <= 1)))

    rows = [rows_of_day[day] for day in days]
    try:
        scores = predict(np.concatenate(rows))
    except Exception:  # retried day by day below, where each failure is recorded
        pass
    else:
        bounds = np.cumsum([0, *map(len, rows)])
        per_day = {day: scores[bounds[i]:bounds[i + 1]] for i, day in enumerate(days)}
        good = {day: s for day, s in per_day.items() if valid(s)}
        for day in per_day.keys() - good.keys():
            failures.append(f"{day} {tier.name} v{tier.version}: ValueError: scores are not probabilities")
        return good
    scored = {}
    for day, day_rows in zip(days, rows):
        try:
            day_scores = predict(day_rows)
            if not valid(day_scores):
                raise ValueError("scores are not probabilities")
        except Exception as exc:  # the next tier takes over; the error is reported
            failures.append(f"{day} {tier.name} v{tier.version}: {type(exc).__name__}: {exc}")
            continue
        scored[day] = day_scores
    return scored


def ensure_serving(con: duckdb.DuckDBPyConnection) -> None:
    for statement in SERVING_DDL:
        con.execute(statement)


def write_predictions(con: duckdb.DuckDBPyConnection, predictions: pd.DataFrame, days: Sequence[dt.date]) -> None:
    """Replace ``days`` of serving.predictions with ``predictions``, in one transaction."""
    ensure_serving(con)
    rows = predictions[list(PREDICTION_COLUMNS)].astype({"model_version": "int32"})
    con.execute("begin transaction")
    try:
        con.execute("delete from serving.predictions where flight_date between ? and ?", [min(days), max(days)])
        con.register("scored_rows", rows)
        con.execute(
            "insert into serving.predictions select flight_id, cast(flight_date as date), score, tier, "
            "model_name, model_version, scored_at from scored_rows"
        )
        con.unregister("scored_rows")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
