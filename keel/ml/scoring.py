"""Batch scoring with tiers: the champion, else the fallback, else the rule baseline.

Each tier is the ``champion`` of one registered model (primary, fallback, baseline). A tier
that fails to load is skipped for the whole run; a tier that fails on a day's rows (an
exception, or a score that is not a probability) is skipped for that day. Every prediction
row records the tier and the model version that produced it, so a degraded day is visible
in the table itself. When every tier fails on a day, scoring fails loudly.

Predictions live in ``serving.predictions``; a run replaces its days in one transaction.

During a rollout the candidate set scores the same rows (``shadow_scores``): its scores go to
``serving.shadow_predictions`` beside the champion's, each row with its arm by the API's own
assignment (``keel.ml.assignment``). The candidate never decides what ``serving.predictions``
holds and never fails the run: a candidate that cannot score is reported, not raised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from keel.core.warehouse import ident
from keel.ml.assignment import arms_of
from keel.ml.modeling import KINDS, TrainedModel
from keel.ml.predictions import prediction_columns, shadow_columns

TIERS = KINDS  # ("primary", "fallback", "baseline"): the order scoring tries them in
# One row per day that was scored, in part or whole, below the primary tier, and why. The
# table is the framework's, whatever the use case: its day column is ``day``.
DEGRADED_DDL = [
    "create schema if not exists serving",
    """create table if not exists serving.degraded_days (
        day date, rows bigint, rows_primary bigint, rows_fallback bigint,
        rows_baseline bigint, share_below_primary double, reason varchar, scored_at timestamp)""",
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

    def days_not_on_primary(self) -> list[str]:
        """The days (ISO dates, sorted) that some tier other than the primary scored."""
        return sorted(str(d) for d, counts in self.rows_per_day.items()
                      if sum(counts.values()) != counts.get("primary", 0))

    def rows_per_tier(self) -> dict[str, int]:
        totals = {tier: 0 for tier in TIERS}
        for counts in self.rows_per_day.values():
            for tier, n in counts.items():
                totals[tier] += n
        return totals

    def share_below_primary(self) -> float:
        totals = self.rows_per_tier()
        rows = sum(totals.values())
        return (rows - totals["primary"]) / rows if rows else 0.0

    def degraded_days(self, tiers: Sequence[Tier]) -> list[dict]:
        """Each day with rows scored below the primary tier: its rows per tier, the share
        below primary and why each tier above the one that served did not."""
        days = []
        for day, counts in sorted(self.rows_per_day.items()):
            rows = sum(counts.values())
            if not rows or counts.get("primary", 0) == rows:
                continue
            served = [t.name for t in tiers if counts.get(t.name)]
            reasons = []
            for tier in tiers:
                if tier.name == served[0]:
                    break
                failed = [f for f in self.failures if f.startswith(f"{day} {tier.name} ")]
                if tier.error:
                    reasons.append(f"{tier.name} {tier.model_name} did not load: {tier.error}")
                elif failed:
                    reasons.append(f"{tier.name} failed: {failed[0][len(str(day)) + 1:]}")
            days.append({
                "day": day.isoformat(), "rows": rows,
                "rows_per_tier": {t: int(counts.get(t, 0)) for t in TIERS},
                "share_below_primary": (rows - counts.get("primary", 0)) / rows,
                "reason": "; ".join(reasons)[:2000],
            })
        return days


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
    columns = list(prediction_columns(key, date_column))
    result = ScoringResult(pd.DataFrame(columns=columns))
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
                key: rows[key].to_numpy(),
                date_column: day,
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
        result.predictions = pd.concat(parts, ignore_index=True)[columns]
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


def shadow_scores(
    frame: pd.DataFrame, key: str, date_column: str, days: Sequence[dt.date], tiers: Sequence[Tier],
    champion: pd.DataFrame, *, rollout_id: str, stage: str, share: float, scored_at: dt.datetime,
) -> tuple[pd.DataFrame, list[str]]:
    """The candidate's rows for ``serving.shadow_predictions`` (``shadow_columns``) and why any
    could not be scored. ``champion`` is :func:`score_days`' predictions of the same ``frame``;
    each row's arm is ``arm_of(key, rollout_id, share)`` (all ``champion`` in shadow, share 0)."""
    columns = list(shadow_columns(key, date_column))
    try:
        candidate = score_days(frame, key, date_column, days, tiers, scored_at)
    except RuntimeError as exc:  # the champion's run goes on; the candidate's failure is reported
        return pd.DataFrame(columns=columns), [str(exc)]
    scored = candidate.predictions.rename(columns={"scored_at": "_scored_at"})
    reference = champion[[key, date_column, "score", "tier", "model_version"]].rename(columns={
        "score": "champion_score", "tier": "champion_tier", "model_version": "champion_model_version"})
    rows = scored.merge(reference, on=[key, date_column], how="left", validate="one_to_one")
    rows["rollout_id"], rows["stage"] = rollout_id, stage
    rows["arm"] = arms_of(rows[key].astype(str), rollout_id, share if stage == "canary" else 0.0)
    rows["scored_at"] = rows.pop("_scored_at")
    return rows[columns], candidate.failures


def write_degraded_days(con, days: Sequence[dt.date], degraded: Sequence[Mapping]) -> None:
    """Replace ``days`` of serving.degraded_days with ``degraded``
    (:meth:`ScoringResult.degraded_days`), in one transaction."""
    for statement in DEGRADED_DDL:
        con.execute(statement)
    first = degraded_day_column(con)
    if first != "day":
        # A home written before the column was the framework's own carries the use case's
        # date column name first: renamed in place, its rows kept.
        con.execute(f"alter table serving.degraded_days rename column {ident(first)} to day")
    con.execute("begin transaction")
    try:
        con.execute("delete from serving.degraded_days where day between ? and ?", [min(days), max(days)])
        for d in degraded:
            tiers = d["rows_per_tier"]
            con.execute(
                "insert into serving.degraded_days values (?, ?, ?, ?, ?, ?, ?, current_timestamp::timestamp)",
                [dt.date.fromisoformat(d["day"]), d["rows"], tiers["primary"], tiers["fallback"],
                 tiers["baseline"], d["share_below_primary"], d["reason"]],
            )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def degraded_day_column(con) -> str:
    """The day column of an existing serving.degraded_days (its first column): ``day``, or
    in a home written by an earlier Keel, the demo's date column name."""
    (name,) = con.execute(
        "select column_name from information_schema.columns "
        "where table_schema = 'serving' and table_name = 'degraded_days' and ordinal_position = 1"
    ).fetchone()
    return name
