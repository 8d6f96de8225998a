"""``POST /v1/feedback``: label corrections and human labels over HTTP, taken in exactly as
``keel feedback add`` takes them (``keel.data.feedback.submit``, source ``api``).

The body is one record ``{"key", "label", "reason", "actor"?, "feedback_id"?}`` or a list of
at most ``max_batch`` of them; a list is all or nothing. Answers:

- 201 ``{"recorded": [...], "already_recorded": [...]}`` (the stored records) when something
  new was recorded, fsynced to the feedback log before the answer; 200 when every record was
  already recorded under its feedback id with the same content (nothing changed);
- 409 when a feedback id was used before for other content;
- 422 when a record breaks a rule (unknown field, unknown key, a label not allowed, a reason
  missing or too long, a bad feedback id) or the body is not JSON; 413 when the list is longer
  than ``max_batch`` (or the body larger than the server takes);
- 503 with ``Retry-After`` when the key cannot be checked now: a writer holds the warehouse
  for longer than ``KEY_WAIT_S``, or the label relation is not built yet.
Nothing is stored unless the answer is 200 or 201.

The key check reads the label relation as the CLI does (``connect_for_reading``, which holds
the Keel home's lock for the moment of the read: DuckDB admits no writer beside a reader). A
worker reads every key once, at its first feedback, and remembers them, since keys of the
label relation are not taken back: a request for a known key costs no read, and one for a key
not seen yet (a day built since) reads that key only. Several workers (``--workers N``) and the CLI append to one log:
``submit`` holds the log's ``flock`` between its id check and its append.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

import duckdb

from keel.core.settings import KeelPaths
from keel.core.spec import ModelSpec
from keel.core.warehouse import READ_WAIT_S, WarehouseBusy, connect_for_reading
from keel.data.feedback import FeedbackConflict, FeedbackRejected, all_keys, known_keys, submit

FIELDS = frozenset({"key", "label", "reason", "actor", "feedback_id"})
DEFAULT_ACTOR = "api"
KEY_WAIT_S = READ_WAIT_S
RETRY_AFTER_S = 5
KNOWN_CAP = 1_000_000  # keys remembered per worker before the memory starts again


class FeedbackIntake:
    """One worker's intake of feedback into the home's log."""

    def __init__(self, paths: KeelPaths, spec: ModelSpec, max_batch: int, wait_s: float = KEY_WAIT_S):
        self.paths, self.spec, self.max_batch, self.wait_s = paths, spec, max_batch, wait_s
        self._known: set[str] = set()
        self._loaded = False
        self._guard = threading.Lock()

    def known(self, keys: set[str]) -> set[str]:
        """Which of ``keys`` are keys of the label relation. The first call reads every key
        (one read per worker, not one per request); later ones read only keys not seen yet.
        One read at a time per worker: the readers of a home take turns on its lock, and a
        worker whose threads overlapped would hold it for as long as they kept coming."""
        with self._guard:
            found = keys & self._known
            unseen = keys - found
            if unseen and self.paths.warehouse.exists():
                with connect_for_reading(self.paths.warehouse, self.wait_s) as con:
                    if not self._loaded:
                        self._known |= all_keys(con, self.spec, KNOWN_CAP)
                        self._loaded = True
                    read = unseen & self._known
                    if read != unseen:
                        read |= known_keys(con, self.spec, unseen - read)
                if len(self._known) + len(read) > KNOWN_CAP:
                    self._known.clear()
                self._known |= read
                found |= read
        return found

    def accept(self, payload: Any) -> tuple[int, dict, dict[str, str]]:
        """Check and record one body (parsed JSON); (status, answer, headers)."""
        items, refusal = self._items(payload)
        if refusal is not None:
            return (*refusal, {})
        try:
            new, repeated = submit(self.paths.home, items, "api", self.known)
        except FeedbackConflict as exc:
            return 409, _refused("feedback id already used for other content", exc), {}
        except FeedbackRejected as exc:
            return 422, _refused("invalid feedback", exc), {}
        except WarehouseBusy as exc:
            return 503, {"error": "cannot check the keys now; nothing was recorded", "detail": str(exc)}, _retry()
        except duckdb.CatalogException as exc:  # the label relation is not built yet
            return 503, {"error": f"cannot read {self.spec.labels_relation}; nothing was recorded",
                         "detail": str(exc).splitlines()[0]}, _retry()
        answer = {"recorded": [asdict(r) for r in new], "already_recorded": [asdict(r) for r in repeated]}
        return (201 if new else 200), answer, {}

    def _items(self, payload: Any) -> tuple[list[dict], tuple[int, dict] | None]:
        records = payload if isinstance(payload, list) else [payload]
        if not records:
            return [], (422, _problem("(body)", "an empty list records nothing", "too_short"))
        if len(records) > self.max_batch:
            return [], (413, _problem("(body)", f"{len(records)} records; at most {self.max_batch} per request",
                                      "max_batch"))
        problems = []
        for position, record in enumerate(records):
            where = f"record {position + 1}" if isinstance(payload, list) else "(body)"
            if not isinstance(record, dict):
                problems.append({"record": where, "problem": 'a record is an object {"key", "label", "reason", ...}',
                                 "rule": "object_type"})
                continue
            problems += [{"record": where, "problem": f"unknown field {name!r}", "rule": "extra_forbidden"}
                         for name in sorted(set(record) - FIELDS)]
        if problems:
            return [], (422, {"error": "invalid feedback; nothing was recorded", "detail": problems[:20]})
        items = []
        for position, record in enumerate(records):
            item = dict(record)
            if isinstance(payload, list):  # refusals name the record's place in the list
                item["_line"] = f"record {position + 1}"
            if item.get("actor") is None:
                item["actor"] = DEFAULT_ACTOR
            if item.get("feedback_id") is None:
                item.pop("feedback_id", None)
            items.append(item)
        return items, None


def _problem(field: str, text: str, rule: str) -> dict:
    return {"error": "invalid feedback; nothing was recorded",
            "detail": [{"record": field, "problem": text, "rule": rule}]}


def _refused(error: str, exc: FeedbackRejected) -> dict:
    return {"error": f"{error}; nothing was recorded",
            "detail": [{"record": where, "problem": why} for where, why in exc.problems[:20]]}


def _retry() -> dict[str, str]:
    return {"retry-after": str(RETRY_AFTER_S)}
