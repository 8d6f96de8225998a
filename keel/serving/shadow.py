"""Shadow scoring: the rollout's candidate scores live requests off the response path.

The handler answers with the champion, then offers the request to a bounded queue and
returns; one worker thread per server worker scores what it takes from the queue with the
candidate's tier chain (``keel.serving.bundle.score_chain``, the same budgets) and hands the
scores, the tier failures and the latency, beside the champion's answer, to the shadow log
(``serving/shadow/``, ``keel.serving.logs.shadow_lines``). The response never waits for the
candidate and nothing the candidate does reaches the client: its exceptions are caught in
the worker, a request the queue cannot take is counted (``dropped``) and never scored.

A configured sample (``ServeOptions.shadow_sample``) scores that share of the keys, chosen
by the rollout's own hash (``keel.ml.assignment``), so the same keys are shadowed in
every worker and every run.
"""

from __future__ import annotations

import datetime as dt
import functools
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from keel.ml.assignment import SHADOW, unit_of
from keel.serving.bundle import score_chain
from keel.serving.logs import JsonlLog, shadow_lines


class ShadowScorer:
    def __init__(self, log: JsonlLog, budgets: Mapping[str, float], *, capacity: int = 1000,
                 sample: float = 1.0, metrics=None):
        self.log, self.budgets, self.sample, self.metrics = log, budgets, sample, metrics
        self.capacity = capacity
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped = 0  # requests offered while the queue was full: never shadowed
        self.scored = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def sampled(self, key: Any, rollout_id: str) -> bool:
        # A separate hash space from the arms: the shadow sample is not the canary's keys.
        return self.sample >= 1.0 or unit_of(str(key), f"{rollout_id}\x1fshadow") < self.sample

    def offer(self, bundle, records: Sequence[Mapping[str, Any]], requests: Sequence[dict],
              answers: Sequence[dict], latency_us: float) -> None:
        """Queue the sampled rows of one answered request for the candidate (never blocks)."""
        rollout = bundle.rollout
        chosen = [i for i, answer in enumerate(answers) if self.sampled(answer["key"], rollout.id)]
        if not chosen:
            return
        item = (bundle, [records[i] for i in chosen], [requests[i] for i in chosen],
                [answers[i] for i in chosen], latency_us, dt.datetime.now(dt.timezone.utc))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += len(chosen)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keel-shadow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._score(*item)
            except Exception as exc:  # the shadow never stops the server; the next item goes on
                print(f"keel serve: shadow scoring failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _score(self, bundle, records, requests, answers, champion_latency_us, served_at) -> None:
        rollout = bundle.rollout
        started = time.perf_counter()
        try:
            chain = score_chain(bundle.candidate, records, self.budgets)
            scores, tiers, failures = list(chain.scores), chain.tier, chain.failures
        except Exception as exc:  # every row of the item failed in the candidate, recorded as such
            scores, tiers = [None] * len(records), [None] * len(records)
            failures = [[f"candidate: {type(exc).__name__}: {exc}"] for _ in records]
        latency_us = (time.perf_counter() - started) * 1e6
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        rows = []
        for answer, score, tier, failed in zip(answers, scores, tiers, failures):
            error = tier is None or bool(failed)
            self.errors += error
            rows.append({
                "request_id": answer["request_id"], "key": answer["key"], "arm": SHADOW,
                "rollout_id": rollout.id, "score": None if tier is None else float(score),
                "tier": None if tier is None else tier.name,
                "model_name": None if tier is None else tier.model_name,
                "model_version": None if tier is None else tier.version,
                "failures": list(failed), "error": error, "latency_us": round(latency_us, 1),
                "champion_score": answer["score"], "champion_tier": answer["tier"],
                "champion_latency_us": round(champion_latency_us, 1),
                "served_at": served_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "scored_at": stamp, "model_set": dict(bundle.candidate_set),
            })
        self.scored += len(rows)
        self.log.submit_lines(list(requests), len(rows), functools.partial(shadow_lines, rows=rows))
