"""What the API counts, and ``GET /metrics`` in Prometheus' text format (version 0.0.4).

Written here rather than with ``prometheus_client``: the handful of counters and histograms
the API keeps cost one dictionary update each on the response path, and a worker shares them
with its siblings through a file (below), which ``prometheus_client``'s multiprocess mode
would do with one memory-mapped file per metric and process.

Latency histograms use ``LATENCY_BUCKETS``, from 25 µs to 2.5 s, fine enough between 50 µs and
10 ms to tell a 100 µs answer from a 150 µs one (the default buckets of most clients start at
5 or 10 ms and would put every answer in the first).

**Several workers** (``keel serve --workers N``). Each worker counts its own requests and,
every ``SHARE_SECONDS``, writes what it counted to
``$KEEL_HOME/serving/metrics/<server pid>/<worker pid>.json`` (replaced atomically). ``/metrics``, whichever worker answers it, adds its own live counts to
the files of the other workers written in the last ``STALE_SECONDS``: the totals are the
server's, at most one share interval behind for the other workers. A worker that stops
removes its file; the counts of a worker that died are dropped with its file, which
Prometheus reads as a counter reset. ``keel_metrics_workers`` says how many workers the
answer covers.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LATENCY_BUCKETS = (
    25e-6, 50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 300e-6, 400e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0, 2.5,
)
SHARE_SECONDS = 1.0
STALE_SECONDS = 10.0

# name -> (type, help); a sample of a family not listed here is never written.
FAMILIES: dict[str, tuple[str, str]] = {
    "keel_http_requests_total": ("counter", "HTTP requests answered, by endpoint, method and status code."),
    "keel_http_errors_total": ("counter", "HTTP requests answered with a 4xx or 5xx, by endpoint, method and status code."),
    "keel_http_request_duration_seconds": (
        "histogram", "Time from a request's arrival to the end of its answer, by endpoint and method."),
    "keel_predictions_total": ("counter", "Predictions answered, by the tier that scored them."),
    "keel_tier_duration_seconds": ("histogram", "Time of one tier's model call on one request or batch, by tier."),
    "keel_tier_skipped_total": (
        "counter", "Requests a tier did not score, by tier and reason "
                   "(not_loaded, error, not_a_probability, over_budget)."),
    "keel_unscored_total": ("counter", "Requests no tier could score (answered 503)."),
    "keel_events_accepted_total": ("counter", "Live events accepted and logged, by table."),
    "keel_events_rejected_total": ("counter", "Live events rejected by their table's contract, by table."),
    "keel_prediction_log_queue_depth": ("gauge", "Answered requests waiting for the prediction log's writer."),
    "keel_prediction_log_queue_capacity": ("gauge", "Answered requests the prediction log's queue holds at most."),
    "keel_prediction_log_written_total": ("counter", "Predictions written to the prediction log."),
    "keel_prediction_log_dropped_total": (
        "counter", "Predictions answered but not logged because the log's queue was full."),
    "keel_bundle_reloads_total": ("counter", "Bundles (model set and snapshot) swapped in since the worker started."),
    "keel_metrics_workers": ("gauge", "Workers whose counts this answer adds up."),
    "keel_rollout_answers_total": ("counter", "Predictions answered during a rollout, by arm (champion, canary)."),
    "keel_canary_fallbacks_total": (
        "counter", "Canary predictions no candidate tier could score, answered by the champion's chain."),
    "keel_shadow_queue_depth": ("gauge", "Answered requests waiting for the shadow candidate."),
    "keel_shadow_queue_capacity": ("gauge", "Answered requests the shadow queue holds at most."),
    "keel_shadow_scored_total": ("counter", "Predictions the shadow candidate was asked for (scored or failed)."),
    "keel_shadow_errors_total": (
        "counter", "Shadow predictions where a candidate tier failed (exception, over budget, not a probability)."),
    "keel_shadow_dropped_total": (
        "counter", "Predictions never shadowed because the shadow queue was full."),
    "keel_shadow_log_dropped_total": ("counter", "Shadow scores not logged because the shadow log's queue was full."),
    "keel_unanswered_log_dropped_total": (
        "counter", "Unscored requests (503) not logged because the unanswered log's queue was full."),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """One worker's counters and histograms. Updated from the event loop's thread only
    (the handlers); read by the sharing thread through copies."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counters: dict[tuple[str, Labels], float] = {}
        # (name, labels) -> [count per bucket (not cumulative) ..., +Inf count, sum]
        self.histograms: dict[tuple[str, Labels], list[float]] = {}

    def inc(self, name: str, labels: Labels = (), by: float = 1) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + by

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        key = (name, labels)
        cells = self.histograms.get(key)
        if cells is None:
            cells = self.histograms[key] = [0.0] * (len(self.buckets) + 2)
        cells[bisect.bisect_left(self.buckets, seconds)] += 1
        cells[-1] += seconds

    def state(self) -> dict[str, Any]:
        """A JSON-ready copy (``dict()`` and ``list()`` copy in one step under the GIL)."""
        counters = dict(self.counters)
        histograms = {key: list(cells) for key, cells in dict(self.histograms).items()}
        return {
            "buckets": list(self.buckets),
            "counters": [[name, [list(p) for p in labels], value] for (name, labels), value in counters.items()],
            "histograms": [[name, [list(p) for p in labels], cells] for (name, labels), cells in histograms.items()],
        }


def _add(into: dict, key, values) -> None:
    if isinstance(values, list):
        current = into.get(key)
        into[key] = list(values) if current is None else [a + b for a, b in zip(current, values)]
    else:
        into[key] = into.get(key, 0) + values


def combine(states: Iterable[Mapping[str, Any]]) -> tuple[dict, dict, list[float]]:
    """The sum of several workers' states: (counters, histograms, buckets)."""
    counters: dict = {}
    histograms: dict = {}
    buckets: list[float] = list(LATENCY_BUCKETS)
    for state in states:
        if list(state.get("buckets", buckets)) != buckets:
            continue  # a worker of another release; its histograms cannot be added
        for name, labels, value in state["counters"]:
            _add(counters, (name, tuple(tuple(p) for p in labels)), value)
        for name, labels, cells in state["histograms"]:
            _add(histograms, (name, tuple(tuple(p) for p in labels)), cells)
    return counters, histograms, buckets


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(states: Iterable[Mapping[str, Any]], gauges: Mapping[tuple[str, Labels], float] = {}) -> str:
    """The text format of the summed ``states``, plus ``gauges`` (already summed)."""
    counters, histograms, buckets = combine(states)
    samples: dict[str, list[str]] = {name: [] for name in FAMILIES}
    for (name, labels), value in sorted(counters.items()):
        if name in samples:
            samples[name].append(f"{name}{_labels(labels)} {_number(value)}")
    for (name, labels), value in sorted(gauges.items()):
        if name in samples:
            samples[name].append(f"{name}{_labels(labels)} {_number(value)}")
    for (name, labels), cells in sorted(histograms.items()):
        if name not in samples:
            continue
        cumulative = 0.0
        for bound, count in zip(buckets, cells):
            cumulative += count
            samples[name].append(f"{name}_bucket{_labels(labels, (('le', repr(bound)),))} {_number(cumulative)}")
        cumulative += cells[len(buckets)]
        samples[name].append(f'{name}_bucket{_labels(labels, (("le", "+Inf"),))} {_number(cumulative)}')
        samples[name].append(f"{name}_sum{_labels(labels)} {repr(float(cells[-1]))}")
        samples[name].append(f"{name}_count{_labels(labels)} {_number(cumulative)}")
    lines = []
    for name, (kind, text) in FAMILIES.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


class SharedMetrics:
    """The files through which the workers of one server add up their counts."""

    def __init__(self, root: Path, pid: int | None = None):
        self.root = Path(root)
        self.pid = pid or os.getpid()
        self.path = self.root / f"{self.pid}.json"

    def publish(self, state: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f".{self.pid}.json.tmp"
        staged.write_text(json.dumps(state))
        os.replace(staged, self.path)

    def others(self) -> list[dict[str, Any]]:
        """The states other live workers published lately."""
        states = []
        now = time.time()
        for path in self.root.glob("*.json") if self.root.is_dir() else ():
            if path == self.path:
                continue
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    continue
                states.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue  # removed or being replaced as it was read
        return states

    def withdraw(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.root.rmdir()  # the last worker of the server to stop
        except OSError:
            pass
