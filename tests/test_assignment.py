"""The rollout's assignment of keys to arms (keel.ml.assignment): deterministic across
processes, the same for one key and a Series of keys, monotone in the share, and a canary
share within the binomial bounds of the configured one; and the rollout record they read."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pandas as pd
import pytest
from scipy import stats

from keel.ml.assignment import arm_of, arms_of, unit_of

KEYS = [f"20130204-{carrier}-{n}-{origin}" for carrier in ("UA", "AA", "B6", "DL") for n in range(1, 1251)
        for origin in ("EWR", "JFK")]


def test_the_unit_of_a_key_is_the_contracts_sha256_formula():
    digest = hashlib.sha256("0123456789ab\x1f20130204-UA-1545-EWR".encode()).digest()
    assert unit_of("20130204-UA-1545-EWR", "0123456789ab") == int.from_bytes(digest[:8], "big") / 2**64


def test_the_same_key_gets_the_same_arm_in_two_processes_and_as_a_series():
    script = ("import json, sys; from keel.ml.assignment import arm_of; "
              "keys = json.load(sys.stdin); print(json.dumps([arm_of(k, 'a1b2c3d4e5f6', 0.3) for k in keys]))")
    runs = [subprocess.run([sys.executable, "-c", script], input=json.dumps(KEYS[:2000]), capture_output=True,
                           text=True, check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}) for seed in ("1", "2")]
    first, second = (json.loads(run.stdout) for run in runs)
    here = [arm_of(k, "a1b2c3d4e5f6", 0.3) for k in KEYS[:2000]]
    assert first == second == here
    series = pd.Series(KEYS[:2000], index=range(100, 2100))
    batch = arms_of(series, "a1b2c3d4e5f6", 0.3)
    assert list(batch.index) == list(series.index) and list(batch) == here
    assert {"canary", "champion"} == set(here)


def test_a_canary_key_stays_canary_as_the_share_grows():
    steps = [0.0, 0.05, 0.25, 0.5, 1.0]
    canary = [{k for k in KEYS if arm_of(k, "feedc0ffee00", share) == "canary"} for share in steps]
    assert canary[0] == set() and canary[-1] == set(KEYS)
    for smaller, larger in zip(canary, canary[1:]):
        assert smaller <= larger


@pytest.mark.parametrize("share", [0.01, 0.05, 0.25, 0.5])
@pytest.mark.parametrize("rollout_id", ["0123456789ab", "ba9876543210"])
def test_the_observed_canary_share_is_within_binomial_bounds_of_the_configured_one(share, rollout_id):
    n = len(KEYS)
    canary = sum(arm_of(k, rollout_id, share) == "canary" for k in KEYS)
    # A two-sided 99.9% acceptance region of Binomial(n, share): 16 cases, a false alarm
    # rate of 1.6% at most if the hash were uniform.
    low, high = stats.binom.ppf(0.0005, n, share), stats.binom.isf(0.0005, n, share)
    assert low <= canary <= high, (canary, n * share)
    # Rollouts are independent: another id puts other keys in the canary.
    other = {k for k in KEYS if arm_of(k, rollout_id[::-1] + "x", share) == "canary"}
    mine = {k for k in KEYS if arm_of(k, rollout_id, share) == "canary"}
    expected = stats.binom.ppf(0.0005, len(mine), share), stats.binom.isf(0.0005, len(mine), share)
    assert expected[0] <= len(mine & other) <= expected[1]


def test_the_rollout_record_reads_back_what_was_written_and_only_shadow_and_canary_are_active():
    from keel.registry.rollout import Rollout

    doc = {"id": "0123456789ab", "set": {"primary": 7, "fallback": 7, "baseline": 7}, "stage": "canary",
           "share": 0.05, "step": 0, "started_at": "2026-12-02T18:00:00+00:00",
           "stage_since": "2026-12-02T19:00:00+00:00", "by": "sensor"}
    rollout = Rollout.from_dict(doc)
    assert rollout.to_dict() == doc and rollout.active
    assert [Rollout.from_dict({**doc, "stage": s}).active for s in ("shadow", "canary", "champion", "aborted")] == [
        True, True, False, False]
    with pytest.raises(ValueError, match="stage"):
        Rollout.from_dict({**doc, "stage": "live"})
