"""The staged rollout in Dagster: the staged policy sends a gated challenger to shadow, the
rollout sensor advances or aborts on constructed evidence and on the API's logs with the
warehouse's matured labels, and rollout/decisions records each
decision once, in audit.rollout_decisions and in its materializations."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import log_loss

from conftest import query, use_registry_home
from keel.core import config
from keel.registry import model_set, rollout
from keel.registry.promotion import registered_names
from keel.registry.tracking import open_registry
from keel.serving.logs import PredictionLog
from assets.evaluation import champion
from assets.rollout import rollout_decisions
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry
from sensors.rollout import build_rollout_sensor

NAMES = registered_names("flight_disruption")
T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
RESOURCES = {"keel": KeelState(), "mlflow": MlflowRegistry()}


@pytest.fixture
def home(registry_template, tmp_path, monkeypatch):
    target = tmp_path / "keel"
    shutil.copytree(registry_template, target)
    paths = use_registry_home(target, monkeypatch)
    registry = open_registry(config.at(paths.home).tracking)
    model_set.promote_set(registry, NAMES, 1, actor="alice", note="first model")
    for name in NAMES.values():
        registry.client().set_registered_model_alias(name, "challenger", "2")
    return paths


def registry_of(paths):
    return open_registry(config.at(paths.home).tracking)


def materialize_champion(instance, policy: str) -> dict:
    result = dg.materialize([champion], resources=RESOURCES, instance=instance,
                            run_config={"ops": {"models__champion": {"config": {"policy": policy}}}})
    return {k: v.value for k, v in result.asset_materializations_for_node("models__champion")[0].metadata.items()}


def materialize_decisions(instance) -> dict:
    result = dg.materialize([rollout_decisions], resources=RESOURCES, instance=instance)
    return {k: v.value for k, v in result.asset_materializations_for_node("rollout__decisions")[0].metadata.items()}


def arms(canary_errors: int, arm: str = "shadow") -> dict:
    return {arm: {"requests": 1000, "errors": canary_errors, "latency_p99_us": 900.0, "positive_rate": 0.2},
            "champion": {"requests": 9000, "errors": 18, "latency_p99_us": 880.0, "positive_rate": 0.2}}


def tick(instance, cursor, evidence, now):
    sensor = build_rollout_sensor(evidence=lambda keel, current, at: evidence, clock=lambda: now, name="rollout_test")
    with dg.build_sensor_context(cursor=cursor, resources=RESOURCES, instance=instance) as context:
        result = sensor(context)
        return result, context.cursor


def test_the_staged_policy_sends_a_gated_challenger_to_shadow_and_auto_still_promotes(home, tmp_path, monkeypatch):
    instance = dg.DagsterInstance.ephemeral()
    staged = materialize_champion(instance, "staged")
    registry = registry_of(home)

    active = rollout.active_rollout(registry, NAMES)
    assert active is not None and (active.stage, active.set["primary"]) == ("shadow", 2)
    assert staged["decision"] == f"v2 passed every gate; staged policy: rollout {active.id} started in shadow"
    assert staged["champion_version"] == 1 and staged["promoted"] is False
    assert staged["rollout"]["id"] == active.id
    assert model_set.champion_set(registry, NAMES).primary == 1
    (start,) = rollout.decisions(registry, NAMES)
    assert start.actor.startswith("keel staged promotion") and start.evidence == {"gates": {}}  # the template tags no single gate
    again = materialize_champion(instance, "staged")
    assert again["decision"] == f"v2 is already rolling out (rollout {active.id}, shadow)"
    assert len(rollout.decisions(registry, NAMES)) == 1

    # The same registry under auto: the challenger is the champion at once, as before.
    other = tmp_path / "auto"
    shutil.copytree(home.home, other)
    rollout.abort(registry_of(use_registry_home(other, monkeypatch)), NAMES, actor="t", reason="start over")
    auto = materialize_champion(dg.DagsterInstance.ephemeral(), "auto")
    assert auto["decision"] == "v2 promoted automatically: every gate passed" and auto["champion_version"] == 2


def test_the_sensor_advances_a_baked_rollout_to_champion_and_each_decision_is_materialized_once(home):
    instance = dg.DagsterInstance.ephemeral()
    registry = registry_of(home)
    started = rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", at=T0)

    result, cursor = tick(instance, None, arms(2), T0 + dt.timedelta(hours=1))  # not baked: hold
    (request,) = result.run_requests  # the start decision is handed on
    assert request.run_key == f"rollout-decisions:{rollout.decisions(registry, NAMES)[-1].id}"
    assert rollout.active_rollout(registry, NAMES).stage == "shadow"
    first = materialize_decisions(instance)
    assert first["new_decision_count"] == 1 and first["new_decisions"][0]["action"] == "start"

    hours, stages = 0, []
    for arm in ("shadow", "canary", "canary", "canary"):
        hours += 49
        result, cursor = tick(instance, cursor, arms(2, arm), T0 + dt.timedelta(hours=hours))
        assert len(result.run_requests) == 1
        current = rollout.last_rollout(registry, NAMES)
        stages.append((current.stage, current.share))
    assert stages == [("canary", 0.05), ("canary", 0.25), ("canary", 0.5), ("champion", 1.0)]
    assert model_set.champion_set(registry, NAMES).primary == 2

    second = materialize_decisions(instance)
    third = materialize_decisions(instance)
    assert [d["to_stage"] for d in second["new_decisions"]] == ["canary", "canary", "canary", "champion"]
    assert second["new_decision_count"] == 4 and third["new_decision_count"] == 0 and third["new_decisions"] == []
    rows = query(home.warehouse, "select rollout_id, action, actor, to_stage, to_share, evidence "
                                 "from audit.rollout_decisions order by seq")
    assert len(rows) == 5 and {r[0] for r in rows} == {started.id}
    assert [r[2] for r in rows[1:]] == ["keel rollout sensor"] * 4
    evidence = json.loads(rows[-1][5])
    assert evidence["arms"]["canary"] == arms(2, "canary")["canary"] and evidence["guardrails"]["error_rate"]["breached"] is False
    events = instance.fetch_materializations(dg.AssetKey(["rollout", "decisions"]), limit=10).records
    assert len(events) == 3


def test_the_sensor_aborts_a_canary_at_twice_the_champions_error_rate_and_records_why(home):
    instance = dg.DagsterInstance.ephemeral()
    registry = registry_of(home)
    rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", at=T0)
    rollout.advance(registry, NAMES, config.current().rollout, actor="alice", reason="baked", at=T0 + dt.timedelta(hours=48))

    # 20/1000 = 2% against 18/9000 = 0.2%: ten times the champion's, an hour into the canary.
    # The always-valid test rejects "at most twice" at p of about 1e-4 (at 10/1000 it would
    # still hold: p = 0.17, too little evidence yet for a test that may be read every minute).
    result, _ = tick(instance, None, arms(20, "canary"), T0 + dt.timedelta(hours=49))

    assert len(result.run_requests) == 1
    assert rollout.last_rollout(registry, NAMES).stage == "aborted"
    assert model_set.champion_set(registry, NAMES).primary == 1
    meta = materialize_decisions(instance)
    last = meta["new_decisions"][-1]
    assert (last["action"], last["actor"], last["from_stage"], last["to_stage"]) == (
        "abort", "keel rollout sensor", "canary", "aborted")
    assert last["reason"].startswith("canary breached error_rate")
    assert last["evidence"]["guardrails"]["error_rate"]["evidence"]["rate_canary"] == pytest.approx(0.02)


def test_the_real_sensor_reads_each_arms_evidence_from_the_api_logs_and_aborts_a_failing_canary(home):
    instance = dg.DagsterInstance.ephemeral()
    registry = registry_of(home)
    rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", at=T0)
    canary = rollout.advance(registry, NAMES, config.current().rollout, actor="alice", reason="baked",
                             at=T0 + dt.timedelta(hours=48))
    log = PredictionLog(home.home / "serving" / "predictions", lambda requests: ["2013-02-04"] * len(requests),
                        flush_seconds=0.01)
    log.start()
    failing = {i for i in range(300) if i % 10 == 0}  # 30 of the canary's 300 answers failed
    for arm in ("champion", "canary"):
        for i in range(300):
            answer = {"request_id": f"{arm}-{i}", "key": f"{arm}-{i}", "score": 0.1 + (i % 7) / 10, "tier": "primary",
                      "model_name": NAMES["primary"], "model_version": 2 if arm == "canary" else 1,
                      "features_as_of": ""}
            failures = [["primary v2: ValueError: boom"]] if arm == "canary" and i in failing else [[]]
            log.submit([{"x": 1}], [{}], [answer], "set", 800.0, {}, arm=arm, rollout_id=canary.id,
                       failures=failures)
    log.stop()

    sensor = build_rollout_sensor(clock=lambda: T0 + dt.timedelta(hours=49), name="rollout_live")
    with dg.build_sensor_context(cursor=None, resources=RESOURCES, instance=instance) as context:
        result = sensor(context)

    assert len(result.run_requests) == 1
    assert rollout.last_rollout(registry, NAMES).stage == "aborted"
    assert model_set.champion_set(registry, NAMES).primary == 1
    last = rollout.decisions(registry, NAMES)[-1]
    assert (last.action, last.actor, last.to_stage) == ("abort", "keel rollout sensor", "aborted")
    seen = last.evidence["arms"]
    assert (seen["canary"]["requests"], seen["canary"]["errors"]) == (300, len(failing))
    assert (seen["champion"]["requests"], seen["champion"]["errors"]) == (300, 0)
    assert last.evidence["guardrails"]["error_rate"]["breached"] is True


def test_the_real_sensor_rolls_back_a_canary_worse_on_matured_labels_and_records_the_loss_difference(home):
    instance = dg.DagsterInstance.ephemeral()
    registry = registry_of(home)
    spec = config.current().usecase.model
    rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", at=T0)
    canary = rollout.advance(registry, NAMES, config.current().rollout, actor="alice", reason="baked",
                             at=T0 + dt.timedelta(hours=48))
    # Pairs of keys share a true probability; the canary's scores are overconfident (the same
    # side of 0.5, so the same decisions and no error): only its log loss is worse.
    rng = np.random.default_rng(5)
    p = np.repeat(rng.uniform(0.05, 0.95, 1000), 2)
    y = (rng.uniform(size=p.size) < p).astype(int)
    known = rng.uniform(size=p.size) >= 0.3  # the rest have not matured: their label is null
    arm = np.where(np.arange(p.size) % 2 == 0, "canary", "champion")
    score = np.where(arm == "canary", expit(5 * logit(p)), p)
    con = duckdb.connect(str(home.warehouse))
    schema, table = spec.labels_relation.split(".")
    frame = pd.DataFrame({"key": [f"f{i}" for i in range(p.size)], "label": pd.Series(y, dtype="Int64").where(known),
                          "resolved": pd.Timestamp("2013-02-05 12:00")})
    con.register("frame", frame)
    con.execute(f"create schema {schema}")
    con.execute(f"create table {schema}.{table} as select key as {spec.key}, label as {spec.label}, "
                f"resolved as {spec.label_resolved_column} from frame")
    con.close()
    log = PredictionLog(home.home / "serving" / "predictions", lambda requests: ["2013-02-05"] * len(requests),
                        flush_seconds=0.01)
    log.start()
    for i in range(p.size):
        answer = {"request_id": f"r{i}", "key": f"f{i}", "score": float(score[i]), "tier": "primary",
                  "model_name": NAMES["primary"], "model_version": 2 if arm[i] == "canary" else 1, "features_as_of": ""}
        log.submit([{"x": 1}], [{}], [answer], "set", 800.0, {}, arm=str(arm[i]), rollout_id=canary.id)
    log.stop()

    sensor = build_rollout_sensor(clock=lambda: T0 + dt.timedelta(hours=49), name="rollout_quality")
    with dg.build_sensor_context(cursor=None, resources=RESOURCES, instance=instance) as context:
        result = sensor(context)

    assert len(result.run_requests) == 1
    assert rollout.last_rollout(registry, NAMES).stage == "aborted"
    assert model_set.champion_set(registry, NAMES).primary == 1
    last = rollout.decisions(registry, NAMES)[-1]
    assert last.reason.startswith("canary breached quality: canary worse")
    guardrails = last.evidence["guardrails"]
    assert [name for name, verdict in guardrails.items() if verdict["breached"]] == ["quality"]
    c, h = (arm == "canary") & known, (arm == "champion") & known
    quality = guardrails["quality"]["evidence"]
    assert (quality["canary_n"], quality["champion_n"]) == (int(c.sum()), int(h.sum()))
    assert quality["statistic"] == pytest.approx(log_loss(y[c], score[c]) - log_loss(y[h], score[h]))
