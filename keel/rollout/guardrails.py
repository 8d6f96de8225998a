"""What a rollout does next: a pure function of its record, the policy, the evidence and the clock.

:func:`decide` compares the candidate's arm (``shadow`` while in shadow, ``canary`` in a
canary) with the champion's on the same traffic, in the evidence's shape of the shared
contract (``arm_evidence``: per arm, requests, errors, latency p99 in microseconds, positive
rate at the threshold). A breached guardrail aborts at once, whatever the baking; passing
guardrails advance only once the stage has baked its hours and both arms have
``min_requests`` requests; anything else holds, saying why. The decision carries everything
it was decided on, so that the recorded decision shows its evidence.

The error-rate guardrail is a plug (``error_test``): by default
``keel.rollout.sequential.error_rate_breach``, an always-valid test of "the candidate's error
rate is above ``error_rate_factor`` times the champion's" that stays valid however often the
sensor reads it, once the candidate has ``min_errors`` errors. :func:`ratio_breach`, the plain
comparison of the two rates, takes its place with the same arguments where a caller wants it.

Quality on matured labels is judged when the caller gives ``quality_evidence`` (per arm, the
``scores`` it served on keys whose labels have matured and those ``labels``, as
``keel.serving.quality_evidence.matured_scores`` returns them): ``quality_test`` (by default
``keel.rollout.sequential.quality``, the always-valid comparison of the two arms' mean log
loss) saying the candidate is "worse" aborts with the reason "<arm> breached quality" and the
verdict's evidence; "better" or "undecided" (too few matured labels, or no difference found
yet) never blocks, and advancing still needs the baking and the traffic. Without quality
evidence the guardrail is recorded as not judged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keel.core.plain import json_ready
from keel.core.policies import RolloutPolicy
from keel.registry.rollout import Rollout
from keel.rollout.sequential import error_rate_breach, quality

ACTIONS = ("advance", "abort", "hold")


@dataclass(frozen=True)
class Decision:
    action: str  # advance, abort, hold
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorVerdict:
    """What an error-rate test returns (the sequential test's ``Verdict`` has these fields)."""

    breached: bool
    p_value: float | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def ratio_breach(canary_errors: int, canary_n: int, champion_errors: int, champion_n: int, *,
                 factor: float = 2.0, min_errors: int = 5, alpha: float = 0.05) -> ErrorVerdict:
    """The plain rule: the candidate's error rate above ``factor`` times the champion's, once
    it has ``min_errors`` errors (``alpha`` is the sequential test's; unused here)."""
    rate = canary_errors / canary_n if canary_n else 0.0
    reference = champion_errors / champion_n if champion_n else 0.0
    breached = canary_errors >= min_errors and rate > factor * reference
    reason = (f"error rate {rate:.4f} ({canary_errors}/{canary_n}) vs the champion's {reference:.4f} "
              f"({champion_errors}/{champion_n}); bound {factor:g}x with at least {min_errors} errors")
    return ErrorVerdict(breached, None, reason, {"rate": rate, "champion_rate": reference, "factor": factor,
                                                 "min_errors": min_errors, "test": "ratio"})


ErrorTest = Callable[..., Any]
QualityTest = Callable[..., Any]


def decide(rollout: Rollout, policy: RolloutPolicy, evidence: Mapping[str, Any] | None, now: dt.datetime,
           *, error_test: ErrorTest = error_rate_breach, quality_evidence: Mapping[str, Any] | None = None,
           quality_test: QualityTest = quality) -> Decision:
    """Advance, abort or hold ``rollout`` at ``now`` on ``evidence`` ({arm: counts}) and, when
    given, ``quality_evidence`` ({arm: {"scores", "labels"}} on matured labels)."""
    if not rollout.active:
        return Decision("hold", f"rollout {rollout.id} is {rollout.stage}: nothing to decide")
    arm = "shadow" if rollout.stage == "shadow" else "canary"
    baked_hours = max(0.0, (_aware(now) - _aware(rollout.since())).total_seconds() / 3600.0)
    needed = policy.baking_hours(rollout.stage)
    base = {"stage": rollout.stage, "share": rollout.share, "arm": arm, "baked_hours": round(baked_hours, 3),
            "baking_hours": needed, "policy": policy.to_dict(), "arms": _plain_arms(evidence)}
    ours, theirs = (evidence or {}).get(arm), (evidence or {}).get("champion")
    if not ours or not theirs:
        return Decision("hold", f"no evidence yet for the {arm} and the champion arms", base)
    verdicts = _guardrails(ours, theirs, policy, error_test)
    verdicts["quality"] = _quality(arm, quality_evidence, policy, quality_test)
    base["guardrails"] = verdicts
    breached = [name for name, v in verdicts.items() if v["breached"]]
    if breached:
        return Decision("abort", f"{arm} breached {', '.join(breached)}: "
                        + "; ".join(verdicts[name]["reason"] for name in breached), base)
    if baked_hours < needed:
        return Decision("hold", f"{rollout.stage} has baked {baked_hours:.1f} of {needed:g} hours; guardrails pass", base)
    short = [name for name, counts in (("champion", theirs), (arm, ours)) if int(counts.get("requests") or 0) < policy.min_requests]
    if short:
        return Decision("hold", f"baked, but {' and '.join(short)} served fewer than {policy.min_requests} requests "
                        f"({arm} {int(ours.get('requests') or 0)}, champion {int(theirs.get('requests') or 0)})", base)
    return Decision("advance", f"{rollout.stage} baked {baked_hours:.1f} of {needed:g} hours and every guardrail "
                    f"passed ({arm} {int(ours['requests'])} requests, champion {int(theirs['requests'])})", base)


def _guardrails(ours: Mapping[str, Any], theirs: Mapping[str, Any], policy: RolloutPolicy,
                error_test: ErrorTest) -> dict[str, dict[str, Any]]:
    n, m = int(ours.get("requests") or 0), int(theirs.get("requests") or 0)
    verdict = error_test(int(ours.get("errors") or 0), n, int(theirs.get("errors") or 0), m,
                         factor=policy.error_rate_factor, min_errors=policy.min_errors, alpha=policy.alpha)
    out = {"error_rate": {"breached": bool(verdict.breached), "reason": verdict.reason, "p_value": verdict.p_value,
                          "evidence": dict(verdict.evidence)}}
    enough = n >= policy.min_requests and m >= policy.min_requests
    p99, reference = ours.get("latency_p99_us"), theirs.get("latency_p99_us")
    if enough and p99 is not None and reference:
        bound = policy.latency_p99_factor * reference
        out["latency_p99"] = {"breached": p99 > bound, "value": p99, "champion": reference, "bound": bound,
                              "reason": f"latency p99 {p99:.0f} us vs the champion's {reference:.0f} "
                                        f"(bound {policy.latency_p99_factor:g}x = {bound:.0f})"}
    else:
        out["latency_p99"] = {"breached": False, "reason": f"latency p99 not judged below {policy.min_requests} "
                                                           "requests per arm or without a value"}
    rate, reference_rate = ours.get("positive_rate"), theirs.get("positive_rate")
    if enough and rate is not None and reference_rate is not None:
        gap = abs(rate - reference_rate)
        out["positive_rate"] = {"breached": gap > policy.positive_rate_tolerance, "value": rate,
                                "champion": reference_rate, "tolerance": policy.positive_rate_tolerance,
                                "reason": f"positive rate {rate:.4f} vs the champion's {reference_rate:.4f} "
                                          f"(|gap| {gap:.4f}, tolerance {policy.positive_rate_tolerance:g})"}
    else:
        out["positive_rate"] = {"breached": False, "reason": f"positive rate not judged below {policy.min_requests} "
                                                             "requests per arm or without a value"}
    return out


def _quality(arm: str, matured: Mapping[str, Any] | None, policy: RolloutPolicy,
             quality_test: QualityTest) -> dict[str, Any]:
    ours, theirs = (matured or {}).get(arm), (matured or {}).get("champion")
    if not ours or not theirs:
        return {"breached": False, "decision": "undecided", "reason": "quality not judged: no matured labels given"}
    verdict = quality_test(ours["scores"], ours["labels"], theirs["scores"], theirs["labels"], alpha=policy.alpha)
    counts = {name: {"served": int(side.get("served", len(side["scores"]))), "labelled": len(side["scores"])}
              for name, side in ((arm, ours), ("champion", theirs))}
    return {"breached": verdict.decision == "worse", "decision": verdict.decision, "reason": verdict.reason,
            "p_value": verdict.p_value, "evidence": json_ready({**dict(verdict.evidence), "labels": counts})}


def _plain_arms(evidence: Mapping[str, Any] | None) -> dict[str, Any]:
    return {arm: dict(counts) for arm, counts in (evidence or {}).items() if isinstance(counts, Mapping)}


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)
