"""The retraining trigger's day-by-day decisions, recorded where people and scripts read them.

:func:`keel.monitoring.trigger.decide_retrain` is the rule; this module feeds it from the warehouse
(the drift history and trailing performance the monitoring assets wrote, the last request
from earlier decisions) and records every decision, retrain or not, with its reasons and
signals in ``audit.retrain_decisions``. The clock is the data's: a day is decided once its
monitoring exists, in calendar order, so a catch-up after an outage (or a replay) decides
each day exactly as it would have on the day.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from keel.core.policies import RetrainPolicy
from keel.monitoring.trigger import Decision, decide_retrain
from keel.core.warehouse import table_exists
from keel.monitoring import outcomes as served_outcomes
from keel.monitoring import store as monitoring_store

DECISIONS_DDL = [
    "create schema if not exists audit",
    """create table if not exists audit.retrain_decisions (
        day date, decided_at timestamp, model_name varchar, champion_version integer,
        champion_trained_through date, retrain boolean, blocked_by_cooldown boolean,
        fired varchar, reasons varchar, signals varchar, training_start date,
        training_end date, run_key varchar)""",
]


@dataclass(frozen=True)
class Champion:
    model_name: str
    version: int
    trained_through: dt.date  # the last day of its training window


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    for statement in DECISIONS_DDL:
        con.execute(statement)


def days_to_decide(
    con: duckdb.DuckDBPyConnection, champion: Champion, after: dt.date | None, every: int = 1
) -> list[dt.date]:
    """Monitored days after ``after`` and after the champion's training window, in order.
    With ``every`` > 1 only every ``every``-th day after the champion's window is decided."""
    start = champion.trained_through if after is None else max(after, champion.trained_through)
    days = [d for d in monitoring_store.monitored_days(con) if d > start]
    if every > 1:
        days = [d for d in days if (d - champion.trained_through).days % every == 0]
    return days


def late_days(con: duckdb.DuckDBPyConnection, champion: Champion, before: dt.date | None, every: int = 1) -> list[dt.date]:
    """Monitored days up to ``before`` (the last day decided) that the champion never
    decided: days that landed late, after later days were decided. Decided now, as they
    would have been on the day."""
    if before is None:
        return []
    decided = {r[0] for r in con.execute(
        "select day from audit.retrain_decisions where champion_version = ?", [champion.version]).fetchall()}
    days = [d for d in monitoring_store.monitored_days(con) if champion.trained_through < d <= before and d not in decided]
    if every > 1:
        days = [d for d in days if (d - champion.trained_through).days % every == 0]
    return days


def decide(
    con: duckdb.DuckDBPyConnection, settings: RetrainPolicy, champion: Champion, day: dt.date
) -> Decision:
    """Decide ``day`` from what the warehouse holds about it and the days before it."""
    policy = settings.trigger
    start = day - dt.timedelta(days=policy.drift_window_days - 1)
    history = monitoring_store.drift_history(con, start, day)
    if policy.performance_source == "served_outcomes":
        trailing = served_outcomes.trailing_window(con, day)
    else:
        trailing = monitoring_store.trailing_performance(con, day)
    return decide_retrain(
        policy,
        today=day,
        champion_trained_at=champion.trained_through,
        # Only requests before the day count: re-deciding a day (or replaying behind a later
        # request) decides as it would have on the day.
        last_retrain_requested_at=_request_before(con, day),
        drift_history=history,
        performance_7d=trailing,
    )


def _request_before(con: duckdb.DuckDBPyConnection, day: dt.date) -> dt.date | None:
    if not _exists(con):
        return None
    (value,) = con.execute(
        "select max(day) from audit.retrain_decisions where retrain and day < ?", [day]
    ).fetchone()
    return value


def record(
    con: duckdb.DuckDBPyConnection,
    decision: Decision,
    champion: Champion,
    *,
    window: tuple[dt.date, dt.date] | None,
    run_key: str | None,
) -> None:
    """Store the decision of its day, replacing an earlier decision of the same day."""
    ensure_table(con)
    day = dt.date.fromisoformat(decision.today)
    con.execute("begin transaction")
    try:
        con.execute("delete from audit.retrain_decisions where day = ?", [day])
        con.execute(
            "insert into audit.retrain_decisions values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                day, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), champion.model_name,
                champion.version, champion.trained_through, decision.retrain, decision.blocked_by_cooldown,
                ",".join(decision.fired), json.dumps(decision.reasons), json.dumps(decision.to_dict()["signals"]),
                window[0] if window else None, window[1] if window else None, run_key,
            ],
        )
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise


def _exists(con: duckdb.DuckDBPyConnection) -> bool:
    return table_exists(con, "audit", "retrain_decisions")


def decisions(con: duckdb.DuckDBPyConnection, start: dt.date | None = None, end: dt.date | None = None) -> list[dict[str, Any]]:
    """Recorded decisions in day order, as plain dicts (``reasons`` and ``signals`` parsed);
    reads only, so a read-only connection will do."""
    if not _exists(con):
        return []
    rows = con.execute(
        "select day, champion_version, champion_trained_through, retrain, blocked_by_cooldown, fired, "
        "reasons, signals, training_start, training_end, run_key from audit.retrain_decisions "
        "where day between coalesce(?, date '0001-01-01') and coalesce(?, date '9999-12-31') order by day",
        [start, end],
    ).fetchall()
    return [
        {
            "day": r[0].isoformat(), "champion_version": r[1], "champion_trained_through": r[2].isoformat(),
            "retrain": r[3], "blocked_by_cooldown": r[4], "fired": [f for f in (r[5] or "").split(",") if f],
            "reasons": json.loads(r[6]), "signals": json.loads(r[7]),
            "training_window": None if r[8] is None else [r[8].isoformat(), r[9].isoformat()],
            "run_key": r[10],
        }
        for r in rows
    ]


def training_run_config(
    settings: RetrainPolicy, window: tuple[dt.date, dt.date], *, threads: int
) -> dict[str, Any]:
    """The ``train_models`` job's run config for a retrain on ``window``."""
    return {"ops": {
        "models__training_set": {"config": {
            "start": window[0].isoformat(), "end": window[1].isoformat(),
            "valid_weeks": settings.valid_weeks, "test_weeks": settings.test_weeks,
        }},
        "models__primary_model": {"config": {"num_threads": threads, "search_trials": settings.search_trials}},
        "models__fallback_model": {"config": {"num_threads": threads}},
    }}


def summary(decision: Decision) -> str:
    """One line: the verdict and the reasons that decided it."""
    if decision.retrain:
        return f"{decision.today}: retrain: " + "; ".join(decision.reasons[: len(decision.fired)])
    if decision.blocked_by_cooldown:
        return f"{decision.today}: no retrain ({decision.reasons[-1]})"
    return f"{decision.today}: no retrain: no signal fired"


def champion_from_lineage(model_name: str, version: int, lineage: Mapping[str, Any]) -> Champion:
    return Champion(model_name, int(version), dt.date.fromisoformat(lineage["window"]["end"]))
