"""The rollout's next step is a pure function of its record, the policy, the evidence and the clock."""

from __future__ import annotations

import datetime as dt

import pytest

from keel.core.policies import RolloutPolicy
from keel.registry.rollout import Rollout
from keel.rollout.guardrails import ratio_breach, ErrorVerdict, decide

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
POLICY = RolloutPolicy(canary_steps=(0.05, 0.25, 0.5), shadow_hours=48, canary_hours=24, min_errors=5,
                       min_requests=200)


def rollout(stage: str = "canary", share: float = 0.05, step: int = 0) -> Rollout:
    return Rollout(id="a1b2c3d4e5f6", set={"primary": 2, "fallback": 2, "baseline": 2}, stage=stage, share=share,
                   step=step, started_at=T0.isoformat(), stage_since=T0.isoformat(), by="alice")


def arms(canary=(1000, 2, 900.0, 0.20), champion=(10000, 20, 850.0, 0.21), arm="canary") -> dict:
    def counts(values):
        requests, errors, p99, positive = values
        return {"requests": requests, "errors": errors, "latency_p99_us": p99, "positive_rate": positive}
    return {arm: counts(canary), "champion": counts(champion)}


def test_a_healthy_canary_holds_until_it_has_baked_then_advances():
    early = decide(rollout(), POLICY, arms(), T0 + dt.timedelta(hours=23))
    late = decide(rollout(), POLICY, arms(), T0 + dt.timedelta(hours=24))
    assert (early.action, late.action) == ("hold", "advance")
    assert "baked 23.0 of 24 hours" in early.reason
    assert late.evidence["guardrails"]["error_rate"]["breached"] is False
    assert late.evidence["arms"]["canary"]["requests"] == 1000 and late.evidence["baked_hours"] == 24.0


def test_twice_the_champions_error_rate_aborts_at_once_even_before_baking():
    # 25/1000 = 2.5% against 20/10000 = 0.2%: above 2x. Counted here, not by the code.
    decision = decide(rollout(), POLICY, arms(canary=(1000, 25, 900.0, 0.2)), T0 + dt.timedelta(hours=1))
    assert decision.action == "abort" and "error_rate" in decision.reason
    verdict = decision.evidence["guardrails"]["error_rate"]
    assert verdict["evidence"]["rate_canary"] == pytest.approx(25 / 1000)
    assert verdict["evidence"]["rate_champion"] == pytest.approx(20 / 10000)


@pytest.mark.parametrize("errors, action", [(4, "advance"), (5, "abort")])
def test_the_minimum_error_count_keeps_a_few_errors_from_deciding(errors, action):
    # The champion made none: any rate is above twice its rate, so only the minimum count decides.
    decision = decide(rollout(), POLICY, arms(canary=(1000, errors, 900.0, 0.2), champion=(10000, 0, 850.0, 0.2)),
                      T0 + dt.timedelta(hours=30), error_test=ratio_breach)
    assert decision.action == action


@pytest.mark.parametrize("errors, action", [(4, "advance"), (12, "abort")])
def test_the_default_always_valid_test_needs_the_minimum_count_and_evidence(errors, action):
    # 4 errors in 1,000 against none in 10,000: below the minimum count of 5, whatever the test.
    # 12 in 1,000: the always-valid p-value is far below alpha (about 1e-4).
    decision = decide(rollout(), POLICY, arms(canary=(1000, errors, 900.0, 0.2), champion=(10000, 0, 850.0, 0.2)),
                      T0 + dt.timedelta(hours=30))
    assert decision.action == action
    assert decision.evidence["guardrails"]["error_rate"]["evidence"]["min_errors"] == 5


def test_a_latency_or_positive_rate_breach_aborts_and_says_which():
    slow = decide(rollout(), POLICY, arms(canary=(1000, 0, 1300.0, 0.2)), T0)  # > 1.5 x 850 = 1275
    shifted = decide(rollout(), POLICY, arms(canary=(1000, 0, 900.0, 0.30)), T0)  # |0.30 - 0.21| > 0.05
    assert slow.action == "abort" and slow.reason.startswith("canary breached latency_p99")
    assert slow.evidence["guardrails"]["latency_p99"]["bound"] == pytest.approx(1275.0)
    assert shifted.action == "abort" and shifted.reason.startswith("canary breached positive_rate")


def test_a_shadow_is_judged_on_the_shadow_arm_and_bakes_its_own_hours():
    shadow = rollout(stage="shadow", share=0.0, step=-1)
    assert decide(shadow, POLICY, arms(arm="shadow"), T0 + dt.timedelta(hours=47)).action == "hold"
    assert decide(shadow, POLICY, arms(arm="shadow"), T0 + dt.timedelta(hours=48)).action == "advance"
    failing = decide(shadow, POLICY, arms(canary=(1000, 100, 900.0, 0.2), arm="shadow"), T0)
    assert failing.action == "abort" and failing.reason.startswith("shadow breached error_rate")


def test_too_little_traffic_or_no_evidence_holds():
    assert decide(rollout(), POLICY, None, T0 + dt.timedelta(days=9)).action == "hold"
    thin = decide(rollout(), POLICY, arms(canary=(50, 0, 2000.0, 0.9)), T0 + dt.timedelta(days=9))
    assert thin.action == "hold" and "fewer than 200 requests" in thin.reason
    ended = decide(rollout(stage="aborted", share=0.0), POLICY, arms(), T0 + dt.timedelta(days=9))
    assert ended.action == "hold"


def test_the_error_test_is_a_plug_the_sequential_test_fills():
    seen = []

    def sequential(ce, cn, he, hn, *, factor, min_errors, alpha):
        seen.append((ce, cn, he, hn, factor, min_errors, alpha))
        return ErrorVerdict(True, 0.001, "always-valid test rejects", {"test": "sequential"})

    decision = decide(rollout(), POLICY, arms(), T0, error_test=sequential)
    assert seen == [(2, 1000, 20, 10000, 2.0, 5, 0.05)]
    assert decision.action == "abort" and decision.evidence["guardrails"]["error_rate"]["p_value"] == 0.001
