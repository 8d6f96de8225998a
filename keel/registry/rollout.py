"""A staged rollout: a gated challenger set goes through shadow, canary steps, then champion.

The rollout is recorded in one tag, ``keel.rollout``, on the primary registered model (the
shared contract of issue 14): its id, the model set it rolls out (primary, fallback and
baseline trained in one run, gates passed, as :func:`keel.registry.model_set.promote_set`
requires), its stage (``shadow``, ``canary``, ``champion`` or ``aborted``), the share of keys
it answers (0 in shadow, the canary step's share, 1 once champion), the step (an index into
the policy's canary steps: -1 in shadow, ``len(steps)`` once champion), when it started,
since when it is in its stage, and who started it. It is active while in shadow or canary.
Registry aliases ``shadow`` / ``canary`` follow the stage on every member version, for the
MLflow UI; readers use only the tag.

Every transition (start, advance, abort) is a recorded decision: who or what decided, when,
from which stage and share to which, why, and on what evidence. A transition takes several
writes, so it is done like a move of the champion set: first the intent
(``keel.rollout.intent``: the decision and the record after it), then, for the last step,
the champion set is moved (``promote_set``, its own recorded transaction), then the record
(the commit point), the decision in the log (``keel.rollout.decision.NNNNNN``, keyed by its
id so that writing it twice changes nothing), the aliases, and the intent is cleared.
:func:`recover` completes a transition a killed process left: it was decided, so it is
finished, never undone. The warehouse's ``audit.rollout_decisions`` and the Dagster asset
``rollout/decisions`` are written from this log (``keel.registry.rollout_log``).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from keel.core import process
from keel.core.policies import RolloutPolicy
from keel.registry import model_set
from keel.registry.model_set import _aliases, _in_progress, _tags, _version_exists
from keel.registry.promotion import gate_verdict, siblings

ROLLOUT_TAG = "keel.rollout"
INTENT_TAG = "keel.rollout.intent"
DECISION_PREFIX = "keel.rollout.decision."
STAGES = ("shadow", "canary", "champion", "aborted")
ACTIVE = ("shadow", "canary")
ALIASES = ("shadow", "canary")


@dataclass(frozen=True)
class Rollout:
    """The record of one rollout, as the ``keel.rollout`` tag holds it."""

    id: str
    set: dict[str, int]
    stage: str
    share: float
    step: int
    started_at: str
    stage_since: str
    by: str

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE

    @property
    def primary(self) -> int:
        return self.set["primary"]

    def since(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.stage_since)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "set": dict(self.set), "stage": self.stage, "share": self.share,
                "step": self.step, "started_at": self.started_at, "stage_since": self.stage_since, "by": self.by}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Rollout:
        if doc["stage"] not in STAGES:
            raise ValueError(f"rollout stage must be one of {STAGES}, got {doc['stage']!r}")
        return cls(id=str(doc["id"]), set={k: int(v) for k, v in doc["set"].items()}, stage=doc["stage"],
                   share=float(doc["share"]), step=int(doc["step"]), started_at=doc["started_at"],
                   stage_since=doc["stage_since"], by=doc.get("by", ""))


@dataclass(frozen=True)
class DecisionRecord:
    """One transition of a rollout, as it was decided."""

    id: str
    rollout_id: str
    seq: int
    action: str  # start, advance, abort
    at: str
    actor: str
    from_stage: str | None
    from_share: float | None
    to_stage: str
    to_share: float
    step: int
    set: dict[str, int]
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "rollout_id": self.rollout_id, "seq": self.seq, "action": self.action,
                "at": self.at, "actor": self.actor, "from_stage": self.from_stage, "from_share": self.from_share,
                "to_stage": self.to_stage, "to_share": self.to_share, "step": self.step, "set": dict(self.set),
                "reason": self.reason, "evidence": self.evidence}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DecisionRecord:
        return cls(id=doc["id"], rollout_id=doc["rollout_id"], seq=int(doc["seq"]), action=doc["action"],
                   at=doc["at"], actor=doc["actor"], from_stage=doc.get("from_stage"),
                   from_share=None if doc.get("from_share") is None else float(doc["from_share"]),
                   to_stage=doc["to_stage"], to_share=float(doc["to_share"]), step=int(doc["step"]),
                   set={k: int(v) for k, v in doc["set"].items()}, reason=doc.get("reason", ""),
                   evidence=dict(doc.get("evidence") or {}))


# --------------------------------------------------------------------------------------------
# Reading


def last_rollout(registry: ModuleType, names: Mapping[str, str]) -> Rollout | None:
    """The latest rollout, whatever its stage; None when there never was one."""
    tags = _tags(registry, names["primary"]) or {}
    return Rollout.from_dict(json.loads(tags[ROLLOUT_TAG])) if ROLLOUT_TAG in tags else None


def active_rollout(registry: ModuleType, names: Mapping[str, str]) -> Rollout | None:
    """The rollout in shadow or canary; None when there is none."""
    rollout = last_rollout(registry, names)
    return rollout if rollout is not None and rollout.active else None


def candidate_loader(registry: ModuleType, names: Mapping[str, str], rollout: Rollout):
    """``load(registered name) -> (version, model)`` of the rollout's candidate set, for
    ``keel.ml.scoring.load_tiers`` (serving and batch scoring load the candidate with it)."""
    kinds = {name: kind for kind, name in names.items()}

    def load(name: str):
        version = rollout.set.get(kinds[name])
        if version is None:
            raise LookupError(f"{name} is not in the candidate set of rollout {rollout.id}")
        return version, registry.load(name, version)

    return load


def decisions(registry: ModuleType, names: Mapping[str, str], rollout_id: str | None = None) -> list[DecisionRecord]:
    """Every recorded decision (of one rollout, given its id), oldest first."""
    return _decisions(_tags(registry, names["primary"]) or {}, rollout_id)


def _decisions(tags: Mapping[str, str], rollout_id: str | None = None) -> list[DecisionRecord]:
    found = [DecisionRecord.from_dict(json.loads(value)) for key, value in tags.items() if key.startswith(DECISION_PREFIX)]
    return sorted((d for d in found if rollout_id is None or d.rollout_id == rollout_id), key=lambda d: d.seq)


def pending_intent(registry: ModuleType, names: Mapping[str, str]) -> dict[str, Any] | None:
    tags = _tags(registry, names["primary"]) or {}
    return json.loads(tags[INTENT_TAG]) if INTENT_TAG in tags else None


# --------------------------------------------------------------------------------------------
# Transitions


def start(registry: ModuleType, names: Mapping[str, str], version: int, *, actor: str, reason: str,
          evidence: Mapping[str, Any] | None = None, at: dt.datetime | None = None) -> Rollout:
    """Put primary ``version`` and its siblings in shadow. Refuses (``PermissionError``) a
    version whose gates did not pass, and (``ValueError``) one that is already the champion,
    one without a fallback and a baseline from its run, a registry without a champion to
    compare with, and a second rollout while one is active."""
    _recover_both(registry, names)
    active = active_rollout(registry, names)
    if active is not None:
        raise ValueError(f"rollout {active.id} of v{active.primary} is in {active.stage}: "
                         f"advance or abort it first (keel rollout abort --note ...)")
    verdict, per_gate = gate_verdict(registry, names["primary"], version)
    if verdict != "passed":
        failed = [f"{gate}: {text}" for gate, text in per_gate.items() if not text.startswith("passed")]
        why = "; ".join(failed) if failed else "its gates were never evaluated (materialize models/evaluation_report)"
        raise PermissionError(f"{names['primary']} v{version} cannot be rolled out: {why}")
    champion = model_set.champion_set(registry, names)
    if champion is None:
        raise ValueError(f"{names['primary']} has no champion to roll v{version} out beside: "
                         f"promote the first model (keel approve {version} --note ...)")
    if champion.primary == version:
        raise ValueError(f"{names['primary']} v{version} already is the champion")
    members = siblings(registry, names, version)
    missing = [kind for kind in names if kind not in members]
    if missing:
        raise ValueError(f"{names['primary']} v{version} has no {' or '.join(missing)} trained in its run: "
                         f"a rollout moves a whole model set")
    when = _iso(at)
    after = Rollout(id=uuid.uuid4().hex[:12], set={kind: members[kind] for kind in names}, stage="shadow",
                    share=0.0, step=-1, started_at=when, stage_since=when, by=actor)
    return _transition(registry, names, None, after, "start", actor=actor, reason=reason, evidence=evidence)


def next_stage(rollout: Rollout, policy: RolloutPolicy) -> tuple[str, float, int]:
    """(stage, share, step) after ``rollout``'s: the first canary step above its share, or the
    champion once every step is done (steps configured since are honoured: a share never falls)."""
    ahead = [(step, share) for step, share in enumerate(policy.canary_steps) if share > rollout.share]
    if rollout.stage == "shadow" and policy.canary_steps:
        return "canary", policy.canary_steps[0], 0
    if rollout.stage == "canary" and ahead:
        step, share = ahead[0]
        return "canary", share, step
    return "champion", 1.0, len(policy.canary_steps)


def advance(registry: ModuleType, names: Mapping[str, str], policy: RolloutPolicy, *, actor: str, reason: str,
            evidence: Mapping[str, Any] | None = None, at: dt.datetime | None = None) -> Rollout:
    """Move the active rollout one stage on (shadow -> first canary step -> ... -> champion,
    the last through ``promote_set``). ``LookupError`` when none is active."""
    _recover_both(registry, names)
    current = _active_or_raise(registry, names, "advance")
    stage, share, step = next_stage(current, policy)
    after = Rollout(id=current.id, set=current.set, stage=stage, share=share, step=step,
                    started_at=current.started_at, stage_since=_iso(at), by=current.by)
    return _transition(registry, names, current, after, "advance", actor=actor, reason=reason, evidence=evidence)


def abort(registry: ModuleType, names: Mapping[str, str], *, actor: str, reason: str,
          evidence: Mapping[str, Any] | None = None, at: dt.datetime | None = None) -> Rollout:
    """Stop the active rollout: the champion set is not touched and serves every key.
    ``LookupError`` when none is active."""
    _recover_both(registry, names)
    current = _active_or_raise(registry, names, "abort")
    after = Rollout(id=current.id, set=current.set, stage="aborted", share=0.0, step=current.step,
                    started_at=current.started_at, stage_since=_iso(at), by=current.by)
    return _transition(registry, names, current, after, "abort", actor=actor, reason=reason, evidence=evidence)


def _active_or_raise(registry: ModuleType, names: Mapping[str, str], what: str) -> Rollout:
    current = active_rollout(registry, names)
    if current is None:
        last = last_rollout(registry, names)
        ended = f" (the last, {last.id} of v{last.primary}, ended {last.stage})" if last is not None else ""
        raise LookupError(f"no active rollout to {what}{ended}: start one with keel rollout start VERSION")
    return current


def _transition(registry: ModuleType, names: Mapping[str, str], before: Rollout | None, after: Rollout,
                action: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None) -> Rollout:
    pending = pending_intent(registry, names)
    if pending is not None:
        raise RuntimeError(f"another rollout transition is in progress ({pending['decision']['action']} by "
                           f"{pending['decision']['actor']}): try again when it ends")
    tags = _tags(registry, names["primary"]) or {}
    decision = DecisionRecord(
        id=uuid.uuid4().hex[:12], rollout_id=after.id, seq=len(_decisions(tags)) + 1, action=action,
        at=after.stage_since, actor=actor, from_stage=None if before is None else before.stage,
        from_share=None if before is None else before.share, to_stage=after.stage, to_share=after.share,
        step=after.step, set=after.set, reason=reason, evidence=_plain(evidence or {}),
    )
    intent = {"decision": decision.to_dict(), "after": after.to_dict(), "process": process.run_tags()}
    registry.client().set_registered_model_tag(names["primary"], INTENT_TAG, json.dumps(intent, sort_keys=True))
    _apply(registry, names, intent)
    return after


def _apply(registry: ModuleType, names: Mapping[str, str], intent: Mapping[str, Any]) -> None:
    """Everything after the intent, each step safe to repeat."""
    client = registry.client()
    after, decision = Rollout.from_dict(intent["after"]), DecisionRecord.from_dict(intent["decision"])
    if after.stage == "champion":
        model_set.recover(registry, names)  # a champion move this transition began, killed halfway
        champion = model_set.champion_set(registry, names)
        if champion is None or champion.primary != after.primary:
            model_set.promote_set(registry, names, after.primary, actor=decision.actor,
                                  note=f"rollout {after.id}: {decision.reason}")
    tags = _tags(registry, names["primary"]) or {}
    record = json.dumps(after.to_dict(), sort_keys=True)
    if tags.get(ROLLOUT_TAG) != record:
        client.set_registered_model_tag(names["primary"], ROLLOUT_TAG, record)
    if not any(d.id == decision.id for d in _decisions(tags)):
        client.set_registered_model_tag(names["primary"], f"{DECISION_PREFIX}{decision.seq:06d}",
                                        json.dumps(decision.to_dict(), sort_keys=True))
    _sync_aliases(registry, names, after)
    client.delete_registered_model_tag(names["primary"], INTENT_TAG)


def _sync_aliases(registry: ModuleType, names: Mapping[str, str], rollout: Rollout) -> None:
    """``shadow`` or ``canary`` on each member while active, neither once it ended."""
    client = registry.client()
    for kind, name in names.items():
        aliases = _aliases(registry, name)
        for alias in ALIASES:
            wanted = rollout.set.get(kind) if rollout.stage == alias else None
            if wanted is not None and aliases.get(alias) != wanted:
                client.set_registered_model_alias(name, alias, str(wanted))
            elif wanted is None and alias in aliases:
                client.delete_registered_model_alias(name, alias)


# --------------------------------------------------------------------------------------------
# Recovery


def recover(registry: ModuleType, names: Mapping[str, str]) -> str | None:
    """Finish a transition a killed process left; None when there was none. The transition
    was decided (a person or the guardrails), so it is completed, unless a version it names
    no longer exists: then only the intent is cleared."""
    intent = pending_intent(registry, names)
    if intent is None or _in_progress(intent):
        return None
    decision = intent["decision"]
    label = (f"rollout {decision['rollout_id']} {decision['action']} to {decision['to_stage']} "
             f"by {decision['actor']} at {decision['at']}")
    after = Rollout.from_dict(intent["after"])
    if not all(_version_exists(registry, names[kind], v) for kind, v in after.set.items()):
        registry.client().delete_registered_model_tag(names["primary"], INTENT_TAG)
        return f"dropped the interrupted {label}: a version it names no longer exists"
    _apply(registry, names, intent)
    return f"completed the interrupted {label}"


def _recover_both(registry: ModuleType, names: Mapping[str, str]) -> None:
    model_set.recover(registry, names)
    recover(registry, names)


# --------------------------------------------------------------------------------------------


def _iso(at: dt.datetime | None) -> str:
    moment = at or dt.datetime.now(dt.timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """JSON's own values: NaN and infinities become None, anything else unknown its text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)
