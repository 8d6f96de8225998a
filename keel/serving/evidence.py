"""Evidence per arm of a rollout, from the API's logs, for the guardrails.

``arm_evidence(paths, rollout_id, since)`` reads the prediction log (answers, by ``arm``),
the unanswered log (the 503s) and the shadow log of one rollout since a moment, and returns
per arm (always the three of ``champion``, ``canary``, ``shadow``; an arm without a request
has zero counts and None for the rest)::

    {"requests": int, "errors": int, "latency_p99_us": float | None, "positive_rate": float | None}

``requests`` counts predictions (rows), answered or not. ``errors`` counts the rows where
something failed: an exception, a time budget overrun or a score that is not a probability in
any tier of the arm's chain (a fallback that answered hides nothing here: the row's
``failures`` say what failed before it), and every row of a request answered 503. For the
shadow arm, a row whose candidate chain logged a failure or no score. ``latency_p99_us`` is
the 99th percentile (linear interpolation, numpy's default) of the logged ``latency_us``:
the whole request's for the live arms, the candidate chain's own for the shadow.
``positive_rate`` is the share of scored rows with ``score >= threshold`` (the operating
threshold; the caller passes the champion's).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from keel.ml.assignment import CANARY, CHAMPION, SHADOW

ARMS = (CHAMPION, CANARY, SHADOW)
FOLDERS = ("predictions", "unanswered", "shadow")


def _served_at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def log_rows(serving_root: Path, folder: str, since: dt.datetime) -> Iterator[dict[str, Any]]:
    """The rows of one log folder served at or after ``since`` (a cut last line is skipped)."""
    first_day = since.astimezone(dt.timezone.utc).date().isoformat()
    for day in sorted((serving_root / folder).glob("*")):
        # A folder is the UTC day its rows were written: earlier days cannot hold later rows.
        if not day.is_dir() or day.name < first_day:
            continue
        for path in sorted(day.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if _served_at(row["served_at"]) >= since:
                    yield row


def arm_evidence(paths, rollout_id: str, since: dt.datetime, *, threshold: float = 0.5) -> dict[str, dict[str, Any]]:
    """Requests, errors, latency p99 and positive rate of each arm of ``rollout_id`` since
    ``since`` (an aware datetime; a naive one is taken as UTC). ``paths`` is the home's
    ``KeelPaths`` or the home folder."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    # A Path has a ``home`` too (the user's): only a KeelPaths is asked for its home.
    root = (Path(paths) if isinstance(paths, (str, os.PathLike)) else Path(paths.home)) / "serving"
    latency: dict[str, list[float]] = {arm: [] for arm in ARMS}
    scores: dict[str, list[float]] = {arm: [] for arm in ARMS}
    counts = {arm: {"requests": 0, "errors": 0} for arm in ARMS}
    for folder in FOLDERS:
        for row in log_rows(root, folder, since):
            if row.get("rollout_id") != rollout_id:
                continue
            arm = row.get("arm") or CHAMPION
            if arm not in counts:
                continue
            counts[arm]["requests"] += 1
            if folder == "unanswered":
                failed = True
            elif folder == "shadow":
                failed = bool(row.get("error")) or row.get("score") is None
            else:
                failed = bool(row.get("failures"))
            counts[arm]["errors"] += failed
            if row.get("latency_us") is not None:
                latency[arm].append(float(row["latency_us"]))
            if folder != "unanswered" and row.get("score") is not None:
                scores[arm].append(float(row["score"]))
    evidence = {}
    for arm in ARMS:
        evidence[arm] = {
            **counts[arm],
            "latency_p99_us": float(np.percentile(latency[arm], 99)) if latency[arm] else None,
            "positive_rate": float(np.mean(np.asarray(scores[arm]) >= threshold)) if scores[arm] else None,
        }
    return evidence
