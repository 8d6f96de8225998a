"""Live traffic for the API: a day's events and prediction requests, played in time order.

``keel replay --live`` plays what the use case's ``ServingSpec.live_plan`` lays out for one
day: items ``(at, order, table, row)``, where ``at`` is the moment it happens (seconds since
the epoch, UTC; ``-inf`` for what is sent before the clock starts, such as the day's
schedule), ``order`` breaks ties (events before the requests of the same moment), ``table``
names the event table or is ``""`` for a prediction request, and ``row`` is the JSON-ready
row. Events of one table at one moment go in one ``POST /v1/events``; each request is one
``POST /v1/predict``, sent at its moment at ``speed`` times real time. It is also the load
generator of a realistic day: a target's request comes at its prediction moment.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from keel.core.spec import TableSpec

EVENT_BATCH = 500


def json_rows(spec: TableSpec, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``frame`` as the event contract of ``spec`` wants them in JSON: integers as
    integers, numbers as floats, text as text, time stamps ISO 8601 in UTC, nulls as null."""
    columns = [c for c in spec.columns if c in frame.columns]
    converters = []
    for column in columns:
        kind = spec.duckdb_type(column)
        if kind in ("BIGINT", "INTEGER"):
            converters.append(lambda v: int(v))
        elif kind == "DOUBLE":
            converters.append(lambda v: float(v))
        elif kind == "BOOLEAN":
            converters.append(lambda v: bool(v))
        elif kind == "TIMESTAMP":
            converters.append(_iso)
        else:
            converters.append(lambda v: str(v))
    rows = []
    for values in frame[columns].itertuples(index=False, name=None):
        rows.append({column: (None if _missing(value) else convert(value))
                     for column, convert, value in zip(columns, converters, values)})
    return rows


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _iso(value: Any) -> str:
    moment = pd.Timestamp(value)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LiveReport:
    events_sent: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    requests_sent: int = 0
    answered: dict[str, int] = field(default_factory=dict)  # tier -> predictions
    errors: list[str] = field(default_factory=list)  # "<status> <what>" of every non-200 answer
    late: int = 0  # requests sent more than a second (of real time) after their moment
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"events_sent": self.events_sent, "events_accepted": self.events_accepted,
                "events_rejected": self.events_rejected, "requests_sent": self.requests_sent,
                "answered": self.answered, "errors": len(self.errors), "first_errors": self.errors[:10],
                "late": self.late, "seconds": round(self.seconds, 3)}


def _batches(items: Sequence[tuple]) -> Iterable[tuple[float, str, list[dict]]]:
    """Consecutive events of one table at one moment as one batch; a request alone."""
    batch: list[dict] = []
    key = None
    for at, _order, table, row in items:
        if table and key == (at, table) and len(batch) < EVENT_BATCH:
            batch.append(row)
            continue
        if batch:
            yield key[0], key[1], batch
        batch, key = [row], (at, table)
        if not table:
            yield at, "", batch
            batch, key = [], None
    if batch:
        yield key[0], key[1], batch


def play(items: Iterable[tuple], url: str, speed: float, *, client=None) -> LiveReport:
    """Send ``items`` to the API at ``url`` in time order at ``speed`` times real time."""
    import httpx  # the client side only; the server never imports it

    if speed <= 0:
        raise ValueError(f"--speed must be positive, got {speed}")
    ordered = sorted(items, key=lambda item: (item[0], item[1]))
    timed = [item[0] for item in ordered if math.isfinite(item[0])]
    start_at = timed[0] if timed else 0.0
    report = LiveReport()
    own = client is None
    client = client or httpx.Client(base_url=url, timeout=60)
    started = time.monotonic()
    try:
        for at, table, rows in _batches(ordered):
            due = started + (at - start_at) / speed if math.isfinite(at) else started
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif not table and -wait > 1.0:
                report.late += 1
            if table:
                response = client.post("/v1/events", json={"table": table, "rows": rows})
                report.events_sent += len(rows)
                answer = _json(response)
                report.events_accepted += int(answer.get("accepted", 0))
                report.events_rejected += len(answer.get("rejected", []))
                if response.status_code != 200:
                    report.errors.append(f"{response.status_code} {table} events at {_stamp(at)}: "
                                         f"{response.text[:300]}")
            else:
                response = client.post("/v1/predict", json=rows[0])
                report.requests_sent += 1
                if response.status_code != 200:
                    report.errors.append(f"{response.status_code} predict at {_stamp(at)}: {response.text[:300]}")
                    continue
                for answer in _json(response).get("predictions", []):
                    report.answered[answer["tier"]] = report.answered.get(answer["tier"], 0) + 1
    finally:
        report.seconds = time.monotonic() - started
        if own:
            client.close()
    return report


def _json(response) -> dict:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _stamp(at: float) -> str:
    if not math.isfinite(at):
        return "the start"
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
