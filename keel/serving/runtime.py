"""The serving process: options, the bundle it keeps current, and ``serve`` to start it.

Each uvicorn worker builds one ``ServingRuntime``. A background thread loads the first
bundle (the API answers ``/healthz`` at once and ``/readyz`` once the bundle is in), then
polls every ``reload_seconds`` the registry's committed champion set
(``keel.registry.model_set``, one tag written at a move's commit point) and the snapshot
folder's ``CURRENT``; when either moved, it loads a complete new bundle beside the serving
one, the versions the committed set names, and swaps the reference in one assignment. A
promotion or rollback moves the aliases one write after another, but the committed set in
one: a bundle is never loaded from a half-moved set.

The same poll reads the rollout record (``keel.registry.rollout``): while a rollout is
in ``shadow`` or ``canary`` the bundle also holds its candidate set. In ``canary`` each
request's arm is ``keel.ml.assignment.arm_of(key, rollout id, share)`` and the canary's keys
are answered by the candidate's tier chain (then by the champion's, when no candidate tier
could score); in ``shadow`` the champion answers and the
candidate scores off the response path (``keel.serving.shadow``).

A second thread publishes the worker's metrics every ``keel.serving.metrics.SHARE_SECONDS``
for ``GET /metrics`` to add up across workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import math
import os
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.core import config, env
from keel.core.settings import KeelPaths
from keel.core.spec import UseCase
from keel.registry.promotion import registered_names
from keel.ml.assignment import CANARY, CHAMPION, arm_of
from keel.registry.rollout import Rollout, active_rollout
from keel.registry.tracking import open_registry
from keel.serving.logs import JsonlLog, PredictionLog, unanswered_lines
from keel.serving.shadow import ShadowScorer
from keel.serving.events import EventContract, EventLog, typed_frame
from keel.serving.feedback import FeedbackIntake
from keel.serving.bundle import Bundle, ChainResult, committed_set, load_bundle, score_chain
from keel.serving.metrics import SHARE_SECONDS, Metrics, SharedMetrics, render
from keel.serving.snapshot import current_snapshot, export_from_file, snapshots_root

OPTIONS_ENV = "KEEL_SERVE_OPTIONS"
# How long a starting worker waits for its first bundle before it takes connections anyway
# (then /readyz says what it is still waiting for).
FIRST_LOAD_WAIT_S = 120.0


@dataclass(frozen=True)
class ServeOptions:
    home: str
    reload_seconds: float = 5.0
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    log_queue: int = 10_000  # answered requests waiting for the prediction log's writer
    log_flush_seconds: float = 1.0
    shadow_queue: int = 1000  # answered requests waiting for the shadow candidate
    shadow_sample: float = 1.0  # the share of keys a shadow candidate scores
    # The serving process (uvicorn's main process): its workers add up their metrics together.
    server_id: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


class ServingRuntime:
    """What one worker serves from: the current bundle, and how it stays current."""

    def __init__(self, options: ServeOptions, usecase: UseCase):
        if usecase.serving is None or usecase.model is None:
            raise ValueError(f"use case {usecase.name!r} configures no serving (UseCase.serving)")
        self.options = options
        self.usecase = usecase
        self.serving = usecase.serving
        self.model = usecase.model
        self.paths = KeelPaths(Path(options.home))
        self.names = registered_names(usecase.name)
        self.snapshots = snapshots_root(self.paths.home)
        self.bundle: Bundle | None = None
        self.load_error: str | None = None
        self.reloads = 0
        self._stop = threading.Event()
        self._first_load = threading.Event()  # set once the first load attempt is over
        self.event_contract = EventContract([usecase.table(t) for t in self.serving.event_tables])
        self.event_log = EventLog(self.paths.home / "serving" / "events")
        # Every accepted event batch since the worker started (the log's first), in order:
        # what a new store replays before it is swapped in.
        self.applied: list[tuple[str, pd.DataFrame]] = []
        self.live_as_of = ""
        self._events = threading.Lock()
        request_table = self.serving.request_table

        def row_date(requests):
            return usecase.row_date(request_table, pd.DataFrame(requests))

        self.predictions = PredictionLog(self.paths.home / "serving" / "predictions", row_date,
                                         capacity=options.log_queue, flush_seconds=options.log_flush_seconds)
        self.unanswered = JsonlLog(self.paths.home / "serving" / "unanswered", row_date,
                                   capacity=options.log_queue, flush_seconds=options.log_flush_seconds)
        self.shadow_log = JsonlLog(self.paths.home / "serving" / "shadow", row_date,
                                   capacity=options.log_queue, flush_seconds=options.log_flush_seconds)
        self.budgets = config.at(self.paths.home).serving.budgets()
        self.shadow = ShadowScorer(self.shadow_log, self.budgets, capacity=options.shadow_queue,
                                   sample=options.shadow_sample)
        # None: the use case takes no label feedback (ModelSpec.corrections_relation).
        self.feedback = (FeedbackIntake(self.paths, self.model, options.max_batch)
                         if self.model.corrections_relation is not None else None)
        self.metrics = Metrics()
        self.shared_metrics = SharedMetrics(self.paths.home / "serving" / "metrics" / (options.server_id or "local"))

    # -- serving ---------------------------------------------------------------------------

    def arms(self, bundle: Bundle, keys: list) -> list[str]:
        """Each request's arm: ``canary`` for the canary's keys while a canary runs."""
        rollout = bundle.rollout
        if rollout is None or rollout.stage != "canary" or not bundle.candidate:
            return [CHAMPION] * len(keys)
        return [arm_of(str(key), rollout.id, rollout.share) for key in keys]

    def score_arms(self, bundle: Bundle, records: list[dict], arms: list[str]) -> ChainResult:
        """The champion's chain for the champion's rows, the candidate's for the canary's,
        merged back in request order. A canary row the candidate's whole chain fails on is
        answered by the champion's chain, so a broken candidate never costs its share of
        traffic a 503; its row keeps the candidate's failures, which count against the canary
        (``keel.serving.evidence``)."""
        if CANARY not in arms:
            return self.score(bundle, records)
        n = len(records)
        merged = ChainResult(np.full(n, math.nan), [None] * n, [[] for _ in range(n)])

        def take(rows: list[int], chain: ChainResult, before: list[list[str]] | None = None) -> None:
            for j, i in enumerate(rows):
                merged.scores[i], merged.tier[i] = chain.scores[j], chain.tier[j]
                merged.failures[i] = [*(before[j] if before else []), *chain.failures[j]]
            merged.calls += chain.calls
            for reason, count in chain.skipped.items():
                merged.skipped[reason] = merged.skipped.get(reason, 0) + count

        champion_rows = [i for i, a in enumerate(arms) if a == CHAMPION]
        canary_rows = [i for i, a in enumerate(arms) if a == CANARY]
        if champion_rows:
            take(champion_rows, self.score(bundle, [records[i] for i in champion_rows]))
        candidate = self.score(bundle, [records[i] for i in canary_rows], bundle.candidate, count_unscored=False)
        take(canary_rows, candidate)
        failed = candidate.unscored()
        if failed:
            rows = [canary_rows[j] for j in failed]
            self.metrics.inc("keel_canary_fallbacks_total", (), len(rows))
            take(rows, self.score(bundle, [records[i] for i in rows]), [candidate.failures[j] for j in failed])
        return merged

    def record_answers(self, bundle: Bundle, records: list[dict], requests: list[dict], answers: list[dict],
                       arms: list[str], chain: ChainResult, latency_us: float) -> None:
        """Log the answers, by arm and by the set that answered, and offer them to the shadow
        candidate (off the path)."""
        rollout = bundle.rollout
        rollout_id = None if rollout is None else rollout.id
        failures = chain.failures
        candidate = {id(tier) for tier in bundle.candidate}
        sets = ["candidate" if id(tier) in candidate else "champion" for tier in chain.tier]
        groups = sorted({(arm, which) for arm, which in zip(arms, sets)})
        for arm, which in groups:
            model_set = bundle.candidate_set if which == "candidate" else bundle.model_set
            if len(groups) == 1:
                part = (records, requests, answers, failures)
            else:
                rows = [i for i, key in enumerate(zip(arms, sets)) if key == (arm, which)]
                part = tuple([seq[i] for i in rows] for seq in (records, requests, answers, failures))
            self.predictions.submit(part[0], part[1], part[2], bundle.snapshot.version, latency_us, model_set,
                                    arm=arm, rollout_id=rollout_id, failures=part[3])
            if rollout is not None:
                self.metrics.inc("keel_rollout_answers_total", (("arm", arm),), len(part[0]))
        if rollout is not None and rollout.stage == "shadow" and bundle.candidate:
            self.shadow.offer(bundle, records, requests, answers, latency_us)

    def record_unanswered(self, bundle: Bundle, requests: list[dict], keys: list, arms: list[str],
                          failures: list[list[str]], latency_us: float) -> None:
        """Log a request no tier could score (its 503) against its arms."""
        rollout = bundle.rollout
        served_at = dt.datetime.now(dt.timezone.utc)
        self.unanswered.submit_lines(requests, len(keys), functools.partial(
            unanswered_lines, keys=keys, arms=arms, rollout_id=None if rollout is None else rollout.id,
            failures=failures, latency_us=latency_us, served_at=served_at))

    def score(self, bundle: Bundle, records: list[dict], tiers=None, count_unscored: bool = True) -> ChainResult:
        chain = score_chain(bundle.tiers if tiers is None else tiers, records, self.budgets)
        metrics = self.metrics
        for tier, seconds in chain.calls:
            metrics.observe("keel_tier_duration_seconds", (("tier", tier),), seconds)
        for (tier, reason), rows in chain.skipped.items():
            metrics.inc("keel_tier_skipped_total", (("tier", tier), ("reason", reason)), rows)
        for tier in chain.tier:
            if tier is None:
                if count_unscored:
                    metrics.inc("keel_unscored_total")
            else:
                metrics.inc("keel_predictions_total", (("tier", tier.name),))
        return chain

    # -- metrics -------------------------------------------------------------------------------

    def metrics_state(self) -> dict:
        """This worker's counts, with its prediction log's and bundle's as counters."""
        state = self.metrics.state()
        log = self.predictions
        state["counters"] += [
            ["keel_prediction_log_queue_depth", [], log.depth],
            ["keel_prediction_log_queue_capacity", [], log.capacity],
            ["keel_prediction_log_written_total", [], log.written],
            ["keel_prediction_log_dropped_total", [], log.dropped],
            ["keel_bundle_reloads_total", [], self.reloads],
            ["keel_shadow_queue_depth", [], self.shadow.depth],
            ["keel_shadow_queue_capacity", [], self.shadow.capacity],
            ["keel_shadow_scored_total", [], self.shadow.scored],
            ["keel_shadow_errors_total", [], self.shadow.errors],
            ["keel_shadow_dropped_total", [], self.shadow.dropped],
            ["keel_shadow_log_dropped_total", [], self.shadow_log.dropped],
            ["keel_unanswered_log_dropped_total", [], self.unanswered.dropped],
        ]
        return state

    def metrics_text(self) -> str:
        """``GET /metrics``: this worker's live counts plus its siblings' published ones."""
        states = [self.metrics_state(), *self.shared_metrics.others()]
        return render(states, {("keel_metrics_workers", ()): len(states)})

    def _share_metrics(self) -> None:
        while not self._stop.wait(SHARE_SECONDS):
            try:
                self.shared_metrics.publish(self.metrics_state())
            except OSError as exc:  # the next interval tries again; this worker still answers
                print(f"keel serve: could not publish this worker's metrics: {exc}", file=sys.stderr)

    def features_as_of(self, bundle: Bundle) -> str:
        return max(bundle.snapshot.as_of, self.live_as_of)

    # -- events ------------------------------------------------------------------------------

    def accept_events(self, payload: Any) -> tuple[int, dict]:
        """Check, log (durably) and apply one batch of events; (status, answer)."""
        problem = self._event_batch_problem(payload)
        if problem:
            return 422, {"error": "invalid event batch", "detail": [problem]}
        table, rows = payload["table"], payload["rows"]
        check = self.event_contract.check(table, rows)
        received_at = dt.datetime.now(dt.timezone.utc)
        with self._events:
            if check.rejected:
                self.event_log.reject(table, check.rejected, received_at)
            if check.valid_rows:
                self.event_log.append(table, check.valid_rows, received_at)
                self.applied.append((table, check.typed))
                if self.bundle is not None:
                    self._apply(self.bundle.store, table, check.typed)
        labels = (("table", table),)
        self.metrics.inc("keel_events_accepted_total", labels, len(check.valid_rows))
        self.metrics.inc("keel_events_rejected_total", labels, len(check.rejected))
        answer = {"table": table, "accepted": len(check.valid_rows),
                  "rejected": [{k: r[k] for k in ("index", "rules", "reason")} for r in check.rejected]}
        return (422 if check.rejected else 200), answer

    def _event_batch_problem(self, payload: Any) -> dict | None:
        def problem(field: str, text: str, rule: str) -> dict:
            return {"field": field, "problem": text, "rule": rule}

        if not isinstance(payload, dict):
            return problem("(body)", 'an event batch is an object {"table": ..., "rows": [...]}', "object_type")
        unknown = sorted(set(payload) - {"table", "rows"})
        if unknown:
            return problem(unknown[0], "unknown field", "extra_forbidden")
        if payload.get("table") not in self.event_contract.tables:
            return problem("table", f"events come for {sorted(self.event_contract.tables)}, "
                           f"not {payload.get('table')!r}", "unknown_table")
        rows = payload.get("rows")
        if not isinstance(rows, list) or not rows:
            return problem("rows", "rows must be a non-empty list of objects", "rows_type")
        if len(rows) > self.options.max_batch:
            return problem("rows", f"at most {self.options.max_batch} rows per batch", "too_long")
        return None

    def _apply(self, store: Any, table: str, rows: pd.DataFrame) -> None:
        moment = self.serving.apply_events(store, table, rows)
        if moment:
            self.live_as_of = max(self.live_as_of, moment)

    def _replay_log(self) -> None:
        """Read the event log into ``applied`` (a worker's start)."""
        for table in self.serving.event_tables:
            rows = list(self.event_log.read(table))
            if rows:
                self.applied.append((table, typed_frame(self.usecase.table(table), rows)))

    # -- keeping the bundle current ----------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app):
        thread = threading.Thread(target=self._keep_current, name="keel-bundle", daemon=True)
        thread.start()
        # A worker takes connections only once its first load is done (or failed, or ran past
        # the bound): with several workers on one socket, a client whose connection lands on
        # a worker still loading would get a 503 while its siblings are ready.
        await asyncio.to_thread(self._first_load.wait, FIRST_LOAD_WAIT_S)
        sharing = threading.Thread(target=self._share_metrics, name="keel-metrics", daemon=True)
        sharing.start()
        self.predictions.start()
        self.unanswered.start()
        self.shadow_log.start()
        self.shadow.start()
        try:
            yield
        finally:
            self._stop.set()
            self.shadow.stop()
            self.predictions.stop()
            self.unanswered.stop()
            self.shadow_log.stop()
            thread.join(timeout=10)
            sharing.join(timeout=5)
            self.shared_metrics.withdraw()

    def _keep_current(self) -> None:
        registry = None
        with self._events:
            self._replay_log()
        while not self._stop.is_set():
            try:
                if registry is None:
                    registry = open_registry(config.at(self.paths.home).tracking)
                self.refresh(registry)
                self.load_error = None
            except Exception as exc:  # kept serving the last bundle; /readyz reports it
                self.load_error = f"{type(exc).__name__}: {exc}"
                print(f"keel serve: could not load the serving bundle: {self.load_error}", file=sys.stderr)
            self._first_load.set()
            self._stop.wait(self.options.reload_seconds)

    def refresh(self, registry) -> bool:
        """Load and swap in a new bundle if the committed set or the snapshot moved; True if
        swapped. The set is read once and its versions loaded: whatever moves meanwhile is
        the next poll's."""
        chosen = committed_set(registry, self.names)
        rollout = active_rollout(registry, self.names)
        snapshot = current_snapshot(self.snapshots)
        wanted = (tuple(sorted(chosen["versions"].items())), chosen["txn"],
                  None if snapshot is None else snapshot.version, _rollout_identity(rollout))
        current = self.bundle
        if current is not None and current.wanted == wanted:
            return False
        if snapshot is None:
            raise LookupError(f"no online snapshot in {self.snapshots}: materialize serving/online_snapshot "
                              "or start keel serve, which exports one")
        same_snapshot = current is not None and current.snapshot.version == snapshot.version
        if same_snapshot:
            store, replayed = current.store, None
        else:
            store, replayed = self.serving.load_store(snapshot.path), len(self.applied)
            for table, rows in self.applied[:replayed]:
                self._apply(store, table, rows)
        bundle = load_bundle(registry, self.names, snapshot, self.serving, chosen=chosen, wanted=wanted,
                             store=store, rollout=rollout, reuse=current)
        _warm_up(bundle)
        with self._events:
            if replayed is not None:
                for table, rows in self.applied[replayed:]:
                    self._apply(store, table, rows)
            self.bundle = bundle  # the swap: one reference assignment
        self.reloads += 1
        return True


def _rollout_identity(rollout: Rollout | None) -> tuple | None:
    """What of the rollout a bundle depends on: a new stage or share is a new bundle."""
    if rollout is None:
        return None
    return (rollout.id, rollout.stage, rollout.share, tuple(sorted(rollout.set.items())))


def _warm_up(bundle: Bundle) -> None:
    """One call per tier on an all-missing row before the swap: a model's first call pays for
    its lazy set-up (milliseconds), which would otherwise count against the first request's
    budget."""
    for tier in (*bundle.tiers, *bundle.candidate):
        if tier.model is not None:
            try:
                tier.model.predict_matrix(tier.model.row_matrix({}))
            except Exception:  # a tier that cannot score fails its requests, which report why
                pass


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def ensure_snapshot(paths: KeelPaths, usecase: UseCase) -> str:
    """The current snapshot's version; exports one from the warehouse when there is none."""
    root = snapshots_root(paths.home)
    snapshot = current_snapshot(root)
    if snapshot is None:
        if not paths.warehouse.exists():
            raise FileNotFoundError(f"no warehouse at {paths.warehouse}: run keel run first")
        snapshot = export_from_file(paths.warehouse, root, usecase.serving.snapshot_schema)
    return snapshot.version


def serve(options: ServeOptions, host: str, port: int, workers: int, **uvicorn_options: Any) -> None:
    """Run the API under uvicorn (uvloop, httptools) until interrupted."""
    # uvicorn is the serving process's alone; the other commands never pay for its import.
    import uvicorn

    if not options.server_id:
        options = dataclasses.replace(options, server_id=str(os.getpid()))
    env.set_value(OPTIONS_ENV, options.to_json())
    uvicorn.run("keel.serving.app:asgi_app", factory=True, host=host, port=port, workers=workers,
                loop="uvloop", http="httptools", lifespan="on", access_log=False,
                log_level=uvicorn_options.pop("log_level", "warning"), **uvicorn_options)
