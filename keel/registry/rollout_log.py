"""The rollout decisions in the warehouse: ``audit.rollout_decisions``, one row per decision.

The registry's decision log (``keel.registry.rollout``) is where a transition is recorded as
it happens; this table is its copy where people and SQL read it, written by the Dagster
asset ``rollout/decisions``. :func:`record` inserts only the decisions the table does not
hold yet (by decision id) and returns them: run twice, it writes nothing twice, and what it
returns is exactly what was new, the list the asset's materialization shows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import duckdb

from keel.core.warehouse import table_exists
from keel.registry.rollout import DecisionRecord

ROLLOUT_DECISIONS_DDL = [
    "create schema if not exists audit",
    """create table if not exists audit.rollout_decisions (
        decision_id varchar primary key, rollout_id varchar, seq integer, action varchar,
        decided_at timestamp, actor varchar, from_stage varchar, from_share double,
        to_stage varchar, to_share double, step integer, model_set varchar, reason varchar,
        evidence varchar, recorded_at timestamp, run_id varchar)""",
]
COLUMNS = ("decision_id", "rollout_id", "seq", "action", "decided_at", "actor", "from_stage", "from_share",
           "to_stage", "to_share", "step", "model_set", "reason", "evidence", "recorded_at", "run_id")


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    for statement in ROLLOUT_DECISIONS_DDL:
        con.execute(statement)


def record(con: duckdb.DuckDBPyConnection, found: Sequence[DecisionRecord], run_id: str | None) -> list[DecisionRecord]:
    """Insert the decisions of ``found`` the table does not hold; return them, oldest first."""
    ensure_table(con)
    held = {row[0] for row in con.execute("select decision_id from audit.rollout_decisions").fetchall()}
    new = [d for d in sorted(found, key=lambda d: d.seq) if d.id not in held]
    if not new:
        return []
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        (d.id, d.rollout_id, d.seq, d.action, _naive(d.at), d.actor, d.from_stage, d.from_share, d.to_stage,
         d.to_share, d.step, json.dumps(d.set, sort_keys=True), d.reason, json.dumps(d.evidence, sort_keys=True),
         now, run_id)
        for d in new
    ]
    con.execute("begin transaction")
    try:
        con.executemany(f"insert into audit.rollout_decisions values ({', '.join('?' * len(COLUMNS))})", rows)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return new


def recorded(con: duckdb.DuckDBPyConnection, rollout_id: str | None = None) -> list[dict[str, Any]]:
    """The table's decisions, oldest first, ``model_set`` and ``evidence`` parsed; reads only."""
    if not table_exists(con, "audit", "rollout_decisions"):
        return []
    rows = con.execute(
        f"select {', '.join(COLUMNS)} from audit.rollout_decisions "
        "where ? is null or rollout_id = ? order by decided_at, seq", [rollout_id, rollout_id],
    ).fetchall()
    out = []
    for row in rows:
        doc = dict(zip(COLUMNS, row))
        doc["model_set"], doc["evidence"] = json.loads(doc["model_set"]), json.loads(doc["evidence"])
        for key in ("decided_at", "recorded_at"):
            doc[key] = doc[key].isoformat() if doc[key] is not None else None
        out.append(doc)
    return out


def _naive(iso: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(iso)
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
