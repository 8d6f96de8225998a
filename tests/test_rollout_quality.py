"""Quality on matured labels: the scores each arm served, read from logs the API's own writer
wrote, joined by key to the labels relation of a real DuckDB warehouse, and judged by
``decide`` with the always-valid quality test. Expected values are counted here, from the rows
this test generated, and the losses computed by sklearn."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import log_loss

from keel.core.config import current
from keel.core.policies import RolloutPolicy
from keel.registry.rollout import Rollout
from keel.rollout.guardrails import decide
from keel.serving.logs import PredictionLog
from keel.serving.quality_evidence import matured_scores

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
POLICY = RolloutPolicy(canary_steps=(0.05, 0.25, 0.5), canary_hours=24, min_requests=200)
PAIRS = 1000  # keys 2j (canary) and 2j+1 (champion) share one true probability
AS_OF = dt.datetime(2013, 2, 6, 0, 0)  # labels resolved later than this have not matured


def canary_rollout() -> Rollout:
    return Rollout(id="q1w2e3r4t5y6", set={"primary": 2, "fallback": 2, "baseline": 2}, stage="canary",
                   share=0.5, step=2, started_at=T0.isoformat(), stage_since=T0.isoformat(), by="alice")


def traffic(seed: int = 11):
    """Per key: the arm, the true probability, the label, and whether it matured (labelled
    and resolved by AS_OF), a quarter not yet known and a tenth resolved after AS_OF."""
    rng = np.random.default_rng(seed)
    n = 2 * PAIRS
    p = np.repeat(rng.uniform(0.05, 0.95, PAIRS), 2)
    labels = (rng.uniform(size=n) < p).astype(int)
    fate = rng.uniform(size=n)
    known = fate >= 0.25            # the other quarter: label still null
    late = known & (fate < 0.35)     # labelled, but resolved after AS_OF
    arms = np.where(np.arange(n) % 2 == 0, "canary", "champion")
    return p, labels, known, late, arms


def write_labels(warehouse, spec, labels, known, late) -> None:
    """The use case's labels relation, as its dbt model holds it: a null label is unknown."""
    con = duckdb.connect(str(warehouse))
    schema, table = spec.labels_relation.split(".")
    con.execute(f"create schema {schema}")
    con.execute(f"create table {schema}.{table} ({spec.key} varchar, {spec.label} integer, "
                f"{spec.label_resolved_column} timestamp)")
    frame = pd.DataFrame({
        "key": [f"k{i}" for i in range(len(labels))],
        "label": pd.Series(labels, dtype="Int64").where(known, pd.NA),
        "resolved": np.where(late, AS_OF + dt.timedelta(hours=3), AS_OF - dt.timedelta(hours=5)).astype("datetime64[us]"),
    })
    con.register("frame", frame)
    con.execute(f"insert into {schema}.{table} select key, label, resolved from frame")
    con.close()


def write_log(home, scores, arms, rollout_id, extra=()) -> None:
    log = PredictionLog(home / "serving" / "predictions", lambda requests: ["2013-02-05"] * len(requests),
                        flush_seconds=0.01)
    log.start()
    rows = [(f"k{i}", float(scores[i]), str(arms[i])) for i in range(len(scores))] + list(extra)
    for i, (key, score, arm) in enumerate(rows):
        answer = {"request_id": f"r{i}", "key": key, "score": score, "tier": "primary", "model_name": "m",
                  "model_version": 2 if arm == "canary" else 1, "features_as_of": ""}
        log.submit([{"x": 1}], [{}], [answer], "set", 800.0, {}, arm=arm, rollout_id=rollout_id)
    log.stop()


def counts(requests: int = PAIRS) -> dict:
    side = {"requests": requests, "errors": 0, "latency_p99_us": 800.0, "positive_rate": 0.5}
    return {"canary": dict(side), "champion": dict(side)}


@pytest.fixture
def spec():
    return current().usecase.model


def test_a_miscalibrated_canary_is_aborted_for_quality_with_the_loss_difference_in_its_evidence(tmp_path, spec):
    p, labels, known, late, arms = traffic()
    overconfident = expit(5 * logit(p))  # the same side of 0.5 as p: the same decisions, worse log loss
    canary = arms == "canary"
    scores = np.where(canary, overconfident, p)
    write_labels(tmp_path / "warehouse.duckdb", spec, labels, known, late)
    since = dt.datetime.now(dt.timezone.utc)
    # A request from another rollout, and one before the stage began, count for nothing.
    write_log(tmp_path, scores, arms, "q1w2e3r4t5y6", extra=[("k0", 0.5, "canary")])
    write_log(tmp_path, scores, arms, "another")
    matured = matured_scores(tmp_path, spec, "q1w2e3r4t5y6", since - dt.timedelta(seconds=5), as_of=AS_OF)

    # The same key asked twice counts once, at its last score: k0's 0.5 replaced its first.
    scores[0] = 0.5
    mature = known & ~late
    for arm in ("canary", "champion"):
        chosen = (arms == arm) & mature
        assert matured[arm]["served"] == PAIRS
        assert matured[arm]["labelled"] == int(chosen.sum())
        found = dict(zip(matured[arm]["keys"], zip(matured[arm]["scores"], matured[arm]["labels"])))
        expected = {f"k{i}": (float(scores[i]), int(labels[i])) for i in np.flatnonzero(chosen)}
        assert found == expected  # orjson writes a float64 back exactly
    assert matured["shadow"] == {"keys": [], "scores": [], "labels": [], "served": 0, "labelled": 0}

    decision = decide(canary_rollout(), POLICY, counts(), T0 + dt.timedelta(hours=1), quality_evidence=matured)
    assert decision.action == "abort" and decision.reason.startswith("canary breached quality: canary worse")
    verdict = decision.evidence["guardrails"]["quality"]
    c, h = canary & mature, ~canary & mature
    expected_canary, expected_champion = log_loss(labels[c], scores[c]), log_loss(labels[h], scores[h])
    assert verdict["evidence"]["canary_mean_loss"] == pytest.approx(expected_canary)
    assert verdict["evidence"]["champion_mean_loss"] == pytest.approx(expected_champion)
    assert verdict["evidence"]["statistic"] == pytest.approx(expected_canary - expected_champion)
    assert verdict["evidence"]["interval"][0] > 0 and verdict["p_value"] <= POLICY.alpha
    assert verdict["evidence"]["labels"] == {"canary": {"served": PAIRS, "labelled": int(c.sum())},
                                             "champion": {"served": PAIRS, "labelled": int(h.sum())}}


def test_an_equal_canary_is_not_aborted_and_advances_once_baked(tmp_path, spec):
    p, labels, known, late, arms = traffic()
    write_labels(tmp_path / "warehouse.duckdb", spec, labels, known, late)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    write_log(tmp_path, p, arms, "q1w2e3r4t5y6")
    matured = matured_scores(tmp_path, spec, "q1w2e3r4t5y6", since, as_of=AS_OF)

    early = decide(canary_rollout(), POLICY, counts(), T0 + dt.timedelta(hours=1), quality_evidence=matured)
    late_ = decide(canary_rollout(), POLICY, counts(), T0 + dt.timedelta(hours=24), quality_evidence=matured)
    assert (early.action, late_.action) == ("hold", "advance")
    assert late_.evidence["guardrails"]["quality"]["decision"] == "undecided"
    assert late_.evidence["guardrails"]["quality"]["breached"] is False


def test_unmatured_predictions_are_not_counted_and_without_labels_quality_does_not_block(tmp_path, spec):
    p, labels, known, late, arms = traffic()
    overconfident = np.where(arms == "canary", expit(5 * logit(p)), p)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    write_log(tmp_path, overconfident, arms, "q1w2e3r4t5y6")

    # No warehouse yet: nothing has matured, and nothing is created.
    before = matured_scores(tmp_path, spec, "q1w2e3r4t5y6", since, as_of=AS_OF)
    assert not (tmp_path / "warehouse.duckdb").exists()
    assert {arm: (m["served"], m["labelled"]) for arm, m in before.items()} == {
        "champion": (PAIRS, 0), "canary": (PAIRS, 0), "shadow": (0, 0)}

    # Every label still null, or resolved only after the clock: none counts either.
    write_labels(tmp_path / "warehouse.duckdb", spec, labels, np.zeros_like(known), late)
    nulls = matured_scores(tmp_path, spec, "q1w2e3r4t5y6", since, as_of=AS_OF)
    write_labels_late = tmp_path / "late"
    write_labels_late.mkdir()
    write_labels(write_labels_late / "warehouse.duckdb", spec, labels, known, np.ones_like(late))
    write_log(write_labels_late, overconfident, arms, "q1w2e3r4t5y6")
    future = matured_scores(write_labels_late, spec, "q1w2e3r4t5y6", since, as_of=AS_OF)
    for found in (nulls, future):
        assert (found["canary"]["labelled"], found["champion"]["labelled"]) == (0, 0)
        decision = decide(canary_rollout(), POLICY, counts(), T0 + dt.timedelta(hours=24), quality_evidence=found)
        assert decision.action == "advance"
        assert decision.evidence["guardrails"]["quality"]["reason"].startswith("too few matured labels")
    # Read at a later clock, the late labels have matured and the same canary is caught.
    caught = matured_scores(write_labels_late, spec, "q1w2e3r4t5y6", since, as_of=AS_OF + dt.timedelta(hours=4))
    assert caught["canary"]["labelled"] == int(((arms == "canary") & known).sum())
    assert decide(canary_rollout(), POLICY, counts(), T0 + dt.timedelta(hours=24),
                  quality_evidence=caught).action == "abort"


def test_a_label_correction_in_effect_is_the_label_counted_as_served_outcomes_counts_it(tmp_path, spec):
    # k0 upstream 0, corrected to 1; k1 unknown upstream, labelled 1 by a person; k2 upstream 1,
    # its correction withdrawn before the latest feedback; k3 upstream 0, resolved after the clock.
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    schema, table = spec.labels_relation.split(".")
    con.execute(f"create schema {schema}")
    con.execute(f"create table {schema}.{table} ({spec.key} varchar, {spec.label} integer, "
                f"{spec.label_resolved_column} timestamp)")
    before, after = AS_OF - dt.timedelta(hours=5), AS_OF + dt.timedelta(hours=5)
    con.execute(f"insert into {schema}.{table} values ('k0', 0, ?), ('k1', null, null), ('k2', 1, ?), ('k3', 0, ?)",
                [before, before, after])
    fix_schema, fix_table = spec.corrections_relation.split(".")
    con.execute(f"create table {fix_schema}.{fix_table} ({spec.key} varchar, {spec.label} integer, "
                "feedback_id varchar, valid_from timestamp, valid_to timestamp)")
    con.execute(f"insert into {fix_schema}.{fix_table} values ('k0', 1, 'fb0', ?, null), ('k1', 1, 'fb1', ?, null), "
                "('k2', 0, 'fb2', ?, ?)", [before, before, before - dt.timedelta(hours=2), before - dt.timedelta(hours=1)])
    con.close()
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    write_log(tmp_path, [0.9, 0.8, 0.7, 0.6], ["canary"] * 4, "q1w2e3r4t5y6")

    matured = matured_scores(tmp_path, spec, "q1w2e3r4t5y6", since, as_of=AS_OF)["canary"]
    assert dict(zip(matured["keys"], matured["labels"])) == {"k0": 1, "k1": 1, "k2": 1}
    assert (matured["served"], matured["labelled"]) == (4, 3)
