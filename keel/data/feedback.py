"""Label corrections and human labels: taken in durably, loaded into the warehouse as they are.

A *feedback* record says that the label of one key  is ``label``,
who says so (``actor``), why (``reason``), through what (``source``: ``cli``, ``csv``, ``api``)
and when Keel received it (``received_at``, UTC). Records are appended to
``KEEL_HOME/feedback/feedback.jsonl`` and fsynced before the caller is told they are recorded;
nothing is ever deleted or rewritten there: a later correction of a key overrides an earlier
one in the labels model, and both stay.

Intake validates every record before storing any: the key must be a row of the deployment's
label relation, the label one of the allowed values, the reason present and at most
``MAX_REASON`` characters, the feedback id (client-chosen or generated) at most ``MAX_ID``
characters of ``[A-Za-z0-9._:-]``. A feedback id makes a submission idempotent: the same id
with the same content is recorded once; the same id with other content is refused. A batch
(a CSV import) is all or nothing, and every refused row is reported with its line and reason.

The asset ``feedback/label_corrections`` loads the log, as it is, into the warehouse table
``feedback.label_corrections`` (replaced in one transaction); the use case's dbt models decide
which correction is in effect when (``ModelSpec.corrections_relation``).
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from keel.core.durable import append
from keel.core.spec import ModelSpec
from keel.core.warehouse import ident, relation, replace_rows

SCHEMA, TABLE = "feedback", "label_corrections"
LOG_NAME = "feedback.jsonl"
LABELS = (0, 1)
MAX_REASON = 500
MAX_ACTOR = 100
MAX_ID = 100
MAX_BATCH = 10_000
SOURCES = ("cli", "csv", "api")
_ID = re.compile(r"^[A-Za-z0-9._:-]+$")
CSV_COLUMNS = ("key", "label", "reason")
CSV_OPTIONAL = ("actor", "feedback_id")


class FeedbackRejected(ValueError):
    """One or more feedback records broke a rule; ``problems`` lists (position, reason)."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        shown = "; ".join(f"{where}: {why}" for where, why in self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"{len(self.problems)} feedback record(s) refused, nothing recorded: {shown}{more}")


class FeedbackConflict(FeedbackRejected):
    """A feedback id was already recorded (or repeated in the batch) with other content."""


@dataclass(frozen=True)
class Feedback:
    feedback_id: str
    key: str
    label: int
    reason: str
    actor: str
    source: str
    received_at: str  # ISO 8601, UTC, microseconds

    def content(self) -> tuple:
        """What must agree for a repeated feedback id to be the same submission."""
        return (self.key, self.label, self.reason, self.actor)


def log_path(home: Path) -> Path:
    return Path(home) / "feedback" / LOG_NAME


def read_log(home: Path) -> list[Feedback]:
    """Every recorded feedback, in the order received."""
    path = log_path(home)
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(Feedback(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a last line cut short by a crash was never acknowledged
    return records


def _problems(item: dict[str, Any]) -> list[str]:
    problems = []
    key, label, reason = item.get("key"), item.get("label"), item.get("reason")
    if not isinstance(key, str) or not key.strip():
        problems.append("key is missing" if key in (None, "") or isinstance(key, str)
                        else f"key must be a string, got {key!r}")
    if isinstance(label, bool) or label not in LABELS:
        problems.append(f"label must be one of {', '.join(map(str, LABELS))}, got {label!r}")
    if not isinstance(reason, str) or not reason.strip():
        problems.append("reason is missing: say why the label is what you say it is")
    elif len(reason) > MAX_REASON:
        problems.append(f"reason is {len(reason)} characters; at most {MAX_REASON}")
    actor = item.get("actor")
    if not isinstance(actor, str) or not actor.strip():
        problems.append("actor is missing")
    elif len(actor) > MAX_ACTOR:
        problems.append(f"actor is {len(actor)} characters; at most {MAX_ACTOR}")
    fid = item.get("feedback_id")
    if fid is not None and (not isinstance(fid, str) or len(fid) > MAX_ID or not _ID.match(fid)):
        problems.append(f"feedback id must be 1 to {MAX_ID} characters of letters, digits and . _ : -")
    return problems


def known_keys(con: duckdb.DuckDBPyConnection, spec: ModelSpec, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` are rows of the label relation."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    found = con.execute(
        f"select distinct cast({ident(spec.key)} as varchar) from {relation(spec.labels_relation)} "
        f"where cast({ident(spec.key)} as varchar) in (select unnest(?::varchar[]))",
        [wanted],
    ).fetchall()
    return {row[0] for row in found}


def all_keys(con: duckdb.DuckDBPyConnection, spec: ModelSpec, limit: int) -> set[str]:
    """Every key of the label relation, or none when there are more than ``limit``."""
    rows = con.execute(
        f"select distinct cast({ident(spec.key)} as varchar) from {relation(spec.labels_relation)} limit ?",
        [limit + 1],
    ).fetchall()
    return set() if len(rows) > limit else {row[0] for row in rows}


@contextmanager
def _locked(home: Path) -> Iterator[Path]:
    """The log, held against a concurrent submission between its id check and its append."""
    path = log_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def submit(home: Path, items: Sequence[dict[str, Any]], source: str,
           known: Callable[[set[str]], set[str]], now: dt.datetime | None = None) -> tuple[list[Feedback], list[Feedback]]:
    """Validate ``items`` (dicts with key, label, reason, actor, optional feedback_id) and
    record them all, or none (raises :class:`FeedbackRejected`). ``known(keys)`` returns the
    keys that exist. Returns (recorded now, already recorded before under the same ids)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    if len(items) > MAX_BATCH:
        raise FeedbackRejected([("batch", f"{len(items)} records; at most {MAX_BATCH} at once")])
    problems: list[tuple[str, str]] = []
    for position, item in enumerate(items):
        problems += [(_where(item, position), p) for p in _problems(item)]
    if problems:
        raise FeedbackRejected(problems)
    found = known({item["key"] for item in items})
    problems = [(_where(item, i), f"key {item['key']!r} is not a known key of the label relation")
                for i, item in enumerate(items) if item["key"] not in found]
    if problems:
        raise FeedbackRejected(problems)

    with _locked(home) as path:
        # Stamped under the lock, so that the log's order is the order of received_at: a
        # training run's feedback as-of time then covers every record appended before it,
        # whichever process (CLI, API worker) appended it.
        stamp = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
        received_at = stamp.replace(tzinfo=None).isoformat(timespec="microseconds")
        recorded = {f.feedback_id: f for f in read_log(home)}
        new, repeated, seen = [], [], {}
        for position, item in enumerate(items):
            fid = item.get("feedback_id") or uuid.uuid4().hex
            record = Feedback(fid, item["key"], int(item["label"]), item["reason"].strip(),
                              item["actor"].strip(), source, received_at)
            earlier = recorded.get(fid) or seen.get(fid)
            if earlier is not None:
                if earlier.content() != record.content():
                    problems.append((_where(item, position),
                                     f"feedback id {fid!r} was already used for other content "
                                     f"(key {earlier.key}, label {earlier.label})"))
                elif fid in recorded:
                    repeated.append(earlier)
                continue
            seen[fid] = record
            new.append(record)
        if problems:
            raise FeedbackConflict(problems)
        if new:
            append(path, _after_last_line(path) + b"".join(json.dumps(asdict(r), sort_keys=True).encode() + b"\n" for r in new))
    return new, repeated


def _after_last_line(path: Path) -> bytes:
    """A newline when the log ends inside a line (an append cut short by a crash, never
    acknowledged): the next record starts a line of its own instead of joining that one."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return b""
            f.seek(-1, 2)
            return b"" if f.read(1) == b"\n" else b"\n"
    except FileNotFoundError:
        return b""


def _where(item: dict[str, Any], position: int) -> str:
    return str(item.get("_line") or item.get("feedback_id") or f"record {position + 1}")


def read_csv(path: Path, actor: str | None) -> list[dict[str, Any]]:
    """Rows of a feedback CSV (columns key, label, reason; optional actor, feedback_id) as
    submission items; ``actor`` fills rows without one. Raises FeedbackRejected for a file
    that cannot be read as such."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackRejected([(str(path), f"cannot read the file: {exc}")]) from exc
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in CSV_COLUMNS if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS + CSV_OPTIONAL]
    if missing or unknown:
        raise FeedbackRejected([(f"{path}: header", (f"missing column(s) {', '.join(missing)}" if missing else "")
                                 + ("; " if missing and unknown else "")
                                 + (f"unknown column(s) {', '.join(unknown)}" if unknown else ""))])
    items = []
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise FeedbackRejected([(f"line {line}", "more fields than the header names")])
        label = (row.get("label") or "").strip()
        items.append({
            "_line": f"line {line}",
            "key": (row.get("key") or "").strip(),
            "label": int(label) if label in ("0", "1") else label,
            "reason": row.get("reason") or "",
            "actor": (row.get("actor") or "").strip() or actor,
            **({"feedback_id": row["feedback_id"].strip()} if (row.get("feedback_id") or "").strip() else {}),
        })
    return items


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create schema if not exists {SCHEMA}")
    con.execute(f"""create table if not exists {SCHEMA}.{TABLE} (
        feedback_id varchar, key varchar, label integer, reason varchar, actor varchar,
        source varchar, received_at timestamp)""")


def load(con: duckdb.DuckDBPyConnection, records: Sequence[Feedback]) -> int:
    """Replace feedback.label_corrections with ``records``; returns the rows written."""
    ensure_table(con)
    frame = pd.DataFrame([asdict(r) for r in records],
                         columns=["feedback_id", "key", "label", "reason", "actor", "source", "received_at"])
    frame["received_at"] = pd.to_datetime(frame["received_at"])
    frame["label"] = frame["label"].astype("int32")
    return replace_rows(con, f"{SCHEMA}.{TABLE}",
                        "feedback_id, key, label, reason, actor, source, received_at", frame)


def counts(records: Sequence[Feedback]) -> dict[str, dict[str, int]]:
    """Feedback per day received and source: {day: {source: n}}."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        day = r.received_at[:10]
        out.setdefault(day, {})
        out[day][r.source] = out[day].get(r.source, 0) + 1
    return dict(sorted(out.items()))
