"""What serves: one immutable bundle of models, online features and versions, and the tier chain.

A bundle holds the champion of every tier (primary, fallback, baseline, as batch scoring
uses them), the feature store built from one online snapshot, and the versions of both. The
server swaps whole bundles: a request reads the bundle reference once and is answered by one
model set and one snapshot from start to end, even while a new bundle is being loaded.

The tier chain is batch scoring's (``keel.ml.scoring``), applied per request: a tier that did
not load is skipped; a tier that raises on a batch is retried request by request, so one bad
request moves to the next tier alone; a score that is not a probability (NaN included) moves
that request to the next tier, and so does a tier that took longer than its time budget
(``[serving]`` in the deployment's configuration). A request that no tier could score says why.

The model set is the registry's committed champion set (``keel.registry.model_set``), read in
one registry call: never the aliases, which a promotion moves one after another.

During a rollout (``keel.registry.rollout``: stage ``shadow`` or ``canary``) the bundle
also holds the candidate set's tier chain and the rollout itself, loaded and swapped with the
champion's: a request reads one bundle and so one rollout, one share, one pair of sets.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from keel.core.spec import ServingSpec
from keel.ml.scoring import Tier, load_tiers
from keel.registry.model_set import champion_set
from keel.registry.rollout import Rollout
from keel.serving.snapshot import Snapshot


@dataclass(frozen=True)
class Bundle:
    tiers: tuple[Tier, ...]
    store: Any
    snapshot: Snapshot
    loaded_at: str
    # What the registry and the snapshot folder said when this bundle was asked for (the
    # committed set and the snapshot version): a reload happens when they say something else.
    wanted: tuple = ()
    aliases: Mapping[str, str] = field(default_factory=dict)  # tier -> the alias it was loaded from
    # The committed champion set the tiers were loaded from: {"versions": {kind: v}, "txn": id}.
    model_set: Mapping[str, Any] = field(default_factory=dict)
    # The active rollout, its candidate's tier chain and set ({"versions": ..., "rollout": id}).
    rollout: Rollout | None = None
    candidate: tuple[Tier, ...] = ()
    candidate_set: Mapping[str, Any] = field(default_factory=dict)

    @property
    def set_label(self) -> str:
        """The set in one header value: ``primary=2;fallback=2;baseline=2``."""
        versions = self.model_set.get("versions", {})
        return ";".join(f"{t.name}={versions.get(t.name, '')}" for t in self.tiers)

    @property
    def degraded(self) -> dict[str, str]:
        """Tiers that did not load, with the reason."""
        return {t.name: t.error or "not loaded" for t in self.tiers if t.model is None}

    def describe(self) -> dict[str, Any]:
        rollout = None
        if self.rollout is not None:
            rollout = {**self.rollout.to_dict(), "candidate": [
                {"tier": t.name, "model_name": t.model_name, "version": t.version,
                 "loaded": t.model is not None, "error": t.error} for t in self.candidate]}
        return {
            "rollout": rollout,
            "tiers": [
                {"tier": t.name, "model_name": t.model_name, "version": t.version,
                 "alias": self.aliases.get(t.name, "champion"), "loaded": t.model is not None,
                 "error": t.error}
                for t in self.tiers
            ],
            "model_set": dict(self.model_set),
            "loaded_at": self.loaded_at,
            "snapshot": {"version": self.snapshot.version, "as_of": self.snapshot.as_of,
                         "created_at": self.snapshot.created_at, "tables": self.snapshot.tables},
        }


def committed_set(registry: ModuleType, names: Mapping[str, str]) -> dict[str, Any]:
    """The committed champion set (``keel.registry.model_set``) as the bundle identity holds
    it: ``{"versions": {kind: version}, "txn": id}``; empty versions before any promotion.

    Only the committed set is read, never the aliases: a promotion or rollback moves the
    aliases one write after another, and reading them mid-move would give a mixed set."""
    current = champion_set(registry, names)
    if current is None:
        return {"versions": {}, "txn": ""}
    return {"versions": dict(current.versions), "txn": current.txn}


def load_set(registry: ModuleType, names: Mapping[str, str], versions: Mapping[str, int],
             which: str = "champion set") -> tuple[Tier, ...]:
    """The tier chain of the set ``versions`` (kind -> version); a member that does not load
    keeps its error (the next tier takes over)."""
    kinds = {name: kind for kind, name in names.items()}

    def load(name: str):
        version = versions.get(kinds[name])
        if version is None:
            raise LookupError(f"{name} is not in the {which}" + (" (no promotion yet)" if which == "champion set" else ""))
        return version, registry.load(name, version)

    return tuple(load_tiers(names, load))


def load_bundle(registry: ModuleType, names: Mapping[str, str], snapshot: Snapshot,
                serving: ServingSpec, *, chosen: Mapping[str, Any], wanted: tuple = (),
                store: Any = None, rollout: Rollout | None = None, reuse: Bundle | None = None) -> Bundle:
    """Load every member of the set ``chosen`` (``committed_set``), of the active ``rollout``'s
    candidate set, and the snapshot's feature store (or reuse ``store``, the store already
    built from this same snapshot). Tier chains of the same versions as ``reuse``'s are
    reused: a registered version never changes, so a canary step reloads nothing."""
    versions = dict(chosen["versions"])
    if reuse is not None and dict(reuse.model_set.get("versions", {})) == versions:
        tiers = reuse.tiers
    else:
        tiers = load_set(registry, names, versions)
    candidate: tuple[Tier, ...] = ()
    candidate_set: dict[str, Any] = {}
    if rollout is not None:
        candidate_set = {"versions": dict(rollout.set), "rollout": rollout.id}
        if reuse is not None and reuse.candidate and dict(reuse.candidate_set.get("versions", {})) == dict(rollout.set):
            candidate = reuse.candidate
        else:
            candidate = load_set(registry, names, rollout.set, f"candidate set of rollout {rollout.id}")
    if store is None:
        store = serving.load_store(snapshot.path)
    return Bundle(tiers=tiers, store=store, snapshot=snapshot, wanted=wanted,
                  model_set={"versions": versions, "txn": chosen.get("txn", "")},
                  rollout=rollout, candidate=candidate, candidate_set=candidate_set,
                  loaded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"))


@dataclass
class ChainResult:
    scores: np.ndarray  # NaN where no tier scored
    tier: list[Tier | None]  # the tier that answered each row
    failures: list[list[str]]  # per row: why each tier before the one that answered did not
    # Each model call: (tier name, seconds); and per (tier name, reason), the rows it skipped.
    calls: list[tuple[str, float]] = field(default_factory=list)
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)

    def unscored(self) -> list[int]:
        return [i for i, t in enumerate(self.tier) if t is None]

    def _skip(self, tier: str, reason: str, rows: int = 1) -> None:
        self.skipped[(tier, reason)] = self.skipped.get((tier, reason), 0) + rows


def score_chain(tiers: Sequence[Tier], records: Sequence[Mapping[str, Any]],
                budgets: Mapping[str, float] | None = None) -> ChainResult:
    """Score each feature record (feature name -> value) with the first tier that gives it a
    probability in time.

    ``budgets`` holds, per tier name, the seconds one request may take in that tier's model
    call (a call on n requests gets n times that). A model call cannot be interrupted in the
    process, so the budget is checked when it returns: scores that came too late are not used,
    and those requests move to the next tier, recorded as ``over_budget``."""
    n = len(records)
    budgets = budgets or {}
    result = ChainResult(np.full(n, math.nan), [None] * n, [[] for _ in range(n)])
    remaining = np.arange(n)
    for tier in tiers:
        if not len(remaining):
            break
        if tier.model is None:
            for i in remaining:
                result.failures[i].append(f"{tier.name}: not loaded ({tier.error})")
            result._skip(tier.name, "not_loaded", len(remaining))
            continue
        scores, errors = _tier_scores(tier, records, remaining, budgets.get(tier.name), result)
        valid = (scores >= 0) & (scores <= 1)  # NaN is not a probability either
        for i, score, ok, error in zip(remaining, scores, valid, errors):
            if ok:
                result.scores[i] = score
                result.tier[i] = tier
            else:
                reason = error[0] if error else "not_a_probability"
                result._skip(tier.name, reason)
                result.failures[i].append(
                    f"{tier.name} v{tier.version}: {error[1] if error else f'score {score!r} is not a probability'}")
        remaining = remaining[~valid]
    return result


def _tier_scores(tier: Tier, records: Sequence[Mapping[str, Any]], rows: np.ndarray, budget: float | None,
                 result: ChainResult) -> tuple[np.ndarray, list[tuple[str, str] | None]]:
    """One tier's scores for ``rows``: all at once, else row by row (NaN and (reason, error)
    where a row raised or came too late)."""

    def timed(chosen: list[int]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return _predict(tier, [records[i] for i in chosen])
        finally:
            elapsed = time.perf_counter() - started
            result.calls.append((tier.name, elapsed))
            if budget is not None and elapsed > budget * len(chosen):
                raise _OverBudget(f"took {elapsed * 1e3:.3f} ms for {len(chosen)} request(s), over its budget "
                                  f"of {budget * 1e3:g} ms per request")

    try:
        return timed(list(rows)), [None] * len(rows)
    except _OverBudget as exc:  # retrying would take longer still
        return np.full(len(rows), math.nan), [("over_budget", str(exc))] * len(rows)
    except Exception as exc:  # retried row by row below, where each failure is recorded
        if len(rows) == 1:
            return np.array([math.nan]), [("error", f"{type(exc).__name__}: {exc}")]
    scores, errors = np.full(len(rows), math.nan), [None] * len(rows)
    for j, row in enumerate(rows):
        try:
            scores[j] = timed([row])[0]
        except _OverBudget as exc:
            errors[j] = ("over_budget", str(exc))
        except Exception as exc:  # the next tier takes over; the error is reported
            errors[j] = ("error", f"{type(exc).__name__}: {exc}")
    return scores, errors


class _OverBudget(Exception):
    pass


def _predict(tier: Tier, rows: list[Mapping[str, Any]]) -> np.ndarray:
    # Each record is encoded by TrainedModel.row_matrix, the single-row path without pandas,
    # which costs ~30 us where a 1-row frame costs ~3 ms.
    matrix = np.vstack([tier.model.row_matrix(row) for row in rows])
    scores = np.asarray(tier.model.predict_matrix(matrix), dtype=np.float64)
    if scores.shape != (len(rows),):
        raise ValueError(f"{scores.shape[0] if scores.ndim else 0} scores for {len(rows)} rows")
    return scores
