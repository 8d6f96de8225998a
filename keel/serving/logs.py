"""The prediction log: every answer the API gave, off the response path.

The handler hands each answered request (its feature records as served, the answers, its
latency, the model set that answered) to a bounded queue and returns; one writer thread per worker turns them into JSON
lines and appends them to ``$KEEL_HOME/serving/predictions/<UTC date>/<worker pid>.jsonl``,
flushed and fsynced at least every ``flush_seconds`` and at shutdown. A ``kill -9`` loses at
most the last flush interval. When the queue is full the request is still answered and
what could not be queued is counted (``dropped``), never silently lost: ``/readyz`` and
``/v1/models`` report the count and the queue's depth.

During a rollout (``keel.registry.rollout``) each row also says which ``arm`` answered
(``champion`` or ``canary``) and the ``rollout_id``; ``failures`` lists, for every row, why
each tier before the one that answered did not (empty when the first tier answered), so
that errors hidden by a fallback still count against the arm. Two more logs use the same
writer: ``serving/shadow/`` (the shadow candidate's scores, never answers) and
``serving/unanswered/`` (requests no tier could score: the 503s), which
``keel.serving.evidence`` reads beside this one.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from keel.core import durable

LOG_COLUMNS = ("request_id", "key", "date", "score", "tier", "model_name", "model_version",
               "snapshot_version", "features_as_of", "latency_us", "served_at", "features", "model_set",
               "arm", "rollout_id", "failures")
SHADOW_COLUMNS = ("request_id", "key", "date", "arm", "rollout_id", "score", "tier", "model_name",
                  "model_version", "failures", "error", "latency_us", "champion_score", "champion_tier",
                  "champion_latency_us", "served_at", "scored_at", "model_set")
UNANSWERED_COLUMNS = ("key", "date", "arm", "rollout_id", "status", "failures", "latency_us", "served_at")


class JsonlLog:
    """A bounded queue of rows to write and the one thread that appends them as JSON lines
    under ``root/<UTC date>/<pid>.jsonl``; what does not fit in the queue is counted."""

    def __init__(self, root: Path, row_date, *, capacity: int = 10_000, flush_seconds: float = 1.0):
        self.root = Path(root)
        self.row_date = row_date  # requests frame -> each request's date (the use case's rule)
        self.capacity, self.flush_seconds = capacity, flush_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped = 0  # answers that could not be queued
        self.written = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit_lines(self, requests: list[dict], rows: int, build) -> None:
        """Queue ``rows`` rows of ``requests``: ``build(dates)`` (each request's date) returns
        their JSON lines, in the writer thread (never blocks the caller)."""
        try:
            self._queue.put_nowait((requests, build))
        except queue.Full:
            self.dropped += rows

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="keel-prediction-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued, then stop the writer."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        pending: list[bytes] = []
        oldest = 0.0  # when the oldest unwritten answer was queued
        while True:
            stopping = self._stopping.is_set()
            try:
                item = self._queue.get_nowait() if stopping else self._queue.get(timeout=0.05)
            except queue.Empty:
                if stopping:
                    break
            else:
                if not pending:
                    oldest = time.monotonic()
                requests, build = item
                dates = [str(d) for d in self.row_date(requests)]
                pending.append(build(dates))
            if pending and (len(pending) >= 1000 or time.monotonic() - oldest >= self.flush_seconds):
                self._write(pending)
                pending = []
        if pending:
            self._write(pending)

    def _write(self, chunks: list[bytes]) -> None:
        day = dt.datetime.now(dt.timezone.utc).date().isoformat()
        folder = self.root / day
        folder.mkdir(parents=True, exist_ok=True)
        data = b"".join(chunks)
        durable.append(folder / f"{os.getpid()}.jsonl", data)
        self.written += data.count(b"\n")


class PredictionLog(JsonlLog):
    def submit(self, features: list[dict], requests: list[dict], answers: list[dict],
               snapshot_version: str, latency_us: float, model_set: dict | None = None, *,
               arm: str = "champion", rollout_id: str | None = None,
               failures: list[list[str]] | None = None) -> None:
        """Queue one answered request: its feature records as served, the requests, the answers
        (never blocks the handler)."""
        served_at = dt.datetime.now(dt.timezone.utc)
        self.submit_lines(requests, len(answers), functools.partial(
            _lines, features, answers=answers, snapshot_version=snapshot_version, latency_us=latency_us,
            served_at=served_at, model_set=model_set or {}, arm=arm, rollout_id=rollout_id,
            failures=failures or [[] for _ in answers]))


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _lines(records: list[dict], dates: list[str], *, answers: list[dict], snapshot_version: str,
           latency_us: float, served_at: dt.datetime, model_set: dict, arm: str, rollout_id: str | None,
           failures: list[list[str]]) -> bytes:
    stamp = _stamp(served_at)
    out = []
    for record, day, answer, failed in zip(records, dates, answers, failures):
        out.append(orjson.dumps({
            "request_id": answer["request_id"], "key": answer["key"], "date": day,
            "score": answer["score"], "tier": answer["tier"], "model_name": answer["model_name"],
            "model_version": answer["model_version"], "snapshot_version": snapshot_version,
            "features_as_of": answer["features_as_of"], "latency_us": round(latency_us, 1),
            "served_at": stamp, "features": {k: _plain(v) for k, v in record.items()},
            "model_set": model_set, "arm": arm, "rollout_id": rollout_id, "failures": list(failed),
        }) + b"\n")
    return b"".join(out)


def shadow_lines(dates: list[str], *, rows: list[dict]) -> bytes:
    """JSON lines of shadow scores (``SHADOW_COLUMNS``), each with its request's date."""
    return b"".join(orjson.dumps({**row, "date": day}) + b"\n" for row, day in zip(rows, dates))


def unanswered_lines(dates: list[str], *, keys: list, arms: list[str], rollout_id: str | None,
                     failures: list[list[str]], latency_us: float, served_at: dt.datetime) -> bytes:
    """JSON lines of the requests no tier could score (answered 503)."""
    stamp = _stamp(served_at)
    return b"".join(orjson.dumps({
        "key": key, "date": day, "arm": arm, "rollout_id": rollout_id, "status": 503,
        "failures": list(failed), "latency_us": round(latency_us, 1), "served_at": stamp,
    }) + b"\n" for key, day, arm, failed in zip(keys, dates, arms, failures))


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def read_log(root: Path) -> list[dict[str, Any]]:
    """Every logged prediction under ``root``; a last line cut short by a crash is skipped."""
    records = []
    for path in sorted(Path(root).glob("*/*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return records


def served_dates(root: Path) -> set[dt.date]:
    """The request dates of every logged prediction under ``root``."""
    dates = set()
    for record in read_log(root):
        try:
            dates.add(dt.date.fromisoformat(record["date"]))
        except (KeyError, TypeError, ValueError):
            continue  # a record without a date is no day's
    return dates
