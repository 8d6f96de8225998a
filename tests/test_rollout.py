"""Staged rollouts recorded in a real MLflow store: start, every canary step, champion, abort,
the decision log, its copy in the warehouse, and a transition killed between its writes.

The registry template (tests/conftest.py) holds versions 1..3 of each model kind, siblings by
run, gates passed; each test promotes v1 and rolls v2 out on its own copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import query, use_registry_home
from keel.app.recovery import recover_model_set
from keel.core import config
from keel.core.policies import RolloutPolicy
from keel.core.settings import PROJECT_ROOT, KeelPaths
from keel.core.warehouse import connect
from keel.registry import model_set, rollout, rollout_log
from keel.registry.promotion import GATES_TAG, registered_names
from keel.registry.tracking import open_registry

NAMES = registered_names("flight_disruption")
POLICY = RolloutPolicy(canary_steps=(0.05, 0.25, 0.5))
T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def home(registry_template, tmp_path, monkeypatch) -> KeelPaths:
    target = tmp_path / "keel"
    shutil.copytree(registry_template, target)
    paths = use_registry_home(target, monkeypatch)
    model_set.promote_set(registry_of(paths), NAMES, 1, actor="alice", note="first model")
    return paths


def registry_of(paths: KeelPaths):
    return open_registry(config.at(paths.home).tracking)


def aliases(registry, kind: str) -> dict[str, int]:
    return {a: int(v) for a, v in registry.client().get_registered_model(NAMES[kind]).aliases.items()}


def tag(registry) -> dict:
    return json.loads(registry.client().get_registered_model(NAMES["primary"]).tags[rollout.ROLLOUT_TAG])


# --------------------------------------------------------------------------------------------


def test_a_rollout_goes_from_shadow_through_every_canary_step_to_champion(home):
    registry = registry_of(home)
    started = rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", at=T0)

    assert tag(registry) == {"id": started.id, "set": {"primary": 2, "fallback": 2, "baseline": 2},
                             "stage": "shadow", "share": 0.0, "step": -1, "started_at": T0.isoformat(),
                             "stage_since": T0.isoformat(), "by": "alice"}
    assert len(started.id) == 12 and int(started.id, 16) >= 0
    assert all(aliases(registry, kind).get("shadow") == 2 for kind in NAMES)
    assert rollout.active_rollout(registry, NAMES) == started

    seen = []
    for hours in (48, 72, 96):
        moved = rollout.advance(registry, NAMES, POLICY, actor="keel rollout sensor", reason="baked, guardrails pass",
                                evidence={"canary": {"requests": 1000 * hours}}, at=T0 + dt.timedelta(hours=hours))
        seen.append((moved.stage, moved.share, moved.step))
        assert all(aliases(registry, kind).get("canary") == 2 and "shadow" not in aliases(registry, kind)
                   for kind in NAMES)
        assert model_set.champion_set(registry, NAMES).primary == 1  # the champion serves the rest
    done = rollout.advance(registry, NAMES, POLICY, actor="bob", reason="looks good", at=T0 + dt.timedelta(hours=120))

    assert seen == [("canary", 0.05, 0), ("canary", 0.25, 1), ("canary", 0.5, 2)]
    assert (done.stage, done.share, done.step) == ("champion", 1.0, 3)
    committed = model_set.champion_set(registry, NAMES)
    assert committed.versions == {"primary": 2, "fallback": 2, "baseline": 2}
    assert committed.previous == {"primary": 1, "fallback": 1, "baseline": 1}
    assert committed.actor == "bob" and committed.note.startswith(f"rollout {started.id}")
    assert all(aliases(registry, kind) == {"champion": 2, "previous": 1} for kind in NAMES)
    assert rollout.active_rollout(registry, NAMES) is None
    assert rollout.last_rollout(registry, NAMES).stage == "champion"

    log = rollout.decisions(registry, NAMES)
    assert [(d.seq, d.action, d.from_stage, d.from_share, d.to_stage, d.to_share) for d in log] == [
        (1, "start", None, None, "shadow", 0.0), (2, "advance", "shadow", 0.0, "canary", 0.05),
        (3, "advance", "canary", 0.05, "canary", 0.25), (4, "advance", "canary", 0.25, "canary", 0.5),
        (5, "advance", "canary", 0.5, "champion", 1.0)]
    assert [d.actor for d in log] == ["alice", *["keel rollout sensor"] * 3, "bob"]
    assert log[2].evidence == {"canary": {"requests": 72000}}
    assert log[4].at == (T0 + dt.timedelta(hours=120)).isoformat()
    assert {d.rollout_id for d in log} == {started.id} and len({d.id for d in log}) == 5
    with pytest.raises(LookupError, match="no active rollout"):
        rollout.advance(registry, NAMES, POLICY, actor="bob", reason="again")


def test_abort_leaves_the_champion_untouched_and_clears_the_rollout_aliases(home):
    registry = registry_of(home)
    champion_before = model_set.champion_set(registry, NAMES)
    rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", at=T0)
    rollout.advance(registry, NAMES, POLICY, actor="alice", reason="baked", at=T0 + dt.timedelta(hours=48))

    aborted = rollout.abort(registry, NAMES, actor="keel rollout sensor", reason="error rate 4x the champion's",
                            evidence={"canary": {"errors": 40, "requests": 400}}, at=T0 + dt.timedelta(hours=50))

    assert (aborted.stage, aborted.share, aborted.step) == ("aborted", 0.0, 0)
    assert model_set.champion_set(registry, NAMES) == champion_before
    assert all(aliases(registry, kind) == {"champion": 1} for kind in NAMES)
    assert rollout.active_rollout(registry, NAMES) is None
    last = rollout.decisions(registry, NAMES)[-1]
    assert (last.action, last.from_stage, last.to_stage, last.reason) == (
        "abort", "canary", "aborted", "error rate 4x the champion's")
    assert last.evidence == {"canary": {"errors": 40, "requests": 400}}
    with pytest.raises(LookupError, match="ended aborted"):
        rollout.abort(registry, NAMES, actor="alice", reason="twice")
    # A new rollout may start once the last one ended.
    assert rollout.start(registry, NAMES, 3, actor="alice", reason="next").stage == "shadow"


def test_start_refuses_what_promote_set_would_refuse_and_a_second_active_rollout(home):
    registry = registry_of(home)
    registry.client().set_model_version_tag(NAMES["primary"], "3", GATES_TAG, "failed")
    with pytest.raises(PermissionError, match="v3 cannot be rolled out"):
        rollout.start(registry, NAMES, 3, actor="alice", reason="try")
    with pytest.raises(ValueError, match="already is the champion"):
        rollout.start(registry, NAMES, 1, actor="alice", reason="try")
    first = rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed")
    with pytest.raises(ValueError, match=f"rollout {first.id} of v2 is in shadow"):
        rollout.start(registry, NAMES, 2, actor="alice", reason="again")
    assert len(rollout.decisions(registry, NAMES)) == 1


def test_without_canary_steps_shadow_advances_straight_to_champion(home):
    registry = registry_of(home)
    rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed")
    done = rollout.advance(registry, NAMES, RolloutPolicy(canary_steps=()), actor="alice", reason="baked")
    assert (done.stage, done.share) == ("champion", 1.0)
    assert model_set.champion_set(registry, NAMES).primary == 2


def test_the_warehouse_copy_takes_each_decision_once_with_its_evidence(home):
    registry = registry_of(home)
    rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed", evidence={"gates": "passed"}, at=T0)
    with connect(home.warehouse) as con:
        first = rollout_log.record(con, rollout.decisions(registry, NAMES), "run-a")
        rollout.abort(registry, NAMES, actor="bob", reason="p99 latency 3x", evidence={"canary": {"latency_p99_us": 900.0}},
                      at=T0 + dt.timedelta(hours=1))
        second = rollout_log.record(con, rollout.decisions(registry, NAMES), "run-b")
        third = rollout_log.record(con, rollout.decisions(registry, NAMES), "run-c")
    assert [d.action for d in first] == ["start"] and [d.action for d in second] == ["abort"] and third == []
    rows = query(home.warehouse, "select action, actor, from_stage, to_stage, evidence, run_id, decided_at "
                                 "from audit.rollout_decisions order by seq")
    assert [r[:4] for r in rows] == [("start", "alice", None, "shadow"), ("abort", "bob", "shadow", "aborted")]
    assert json.loads(rows[1][4]) == {"canary": {"latency_p99_us": 900.0}}
    assert [r[5] for r in rows] == ["run-a", "run-b"]
    assert rows[0][6] == T0.replace(tzinfo=None)


# --------------------------------------------------------------------------------------------
# Killed between the writes of a transition

_ADVANCE_AND_STOP = r"""
import os, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from keel.core.config import current
from keel.core.policies import RolloutPolicy
from keel.registry import rollout
from keel.registry.promotion import registered_names
from keel.registry.tracking import open_registry

names = registered_names("flight_disruption")
registry = open_registry(current().tracking)
point, marker = os.environ["STOP_AT"], Path(os.environ["STOP_MARKER"])
set_tag = MlflowClient.set_registered_model_tag

def stopping_set_tag(self, name, key, value):
    if key == point:
        marker.write_text(point)
        time.sleep(600)
    return set_tag(self, name, key, value)

MlflowClient.set_registered_model_tag = stopping_set_tag
rollout.advance(registry, names, RolloutPolicy(canary_steps=()), actor="killed", reason="baked")
"""


@pytest.mark.parametrize("stop_at", ["keel.model_set", rollout.ROLLOUT_TAG, f"{rollout.DECISION_PREFIX}000002"])
def test_a_final_advance_killed_between_its_writes_is_completed_on_the_next_start(home, tmp_path, stop_at):
    registry = registry_of(home)
    started = rollout.start(registry, NAMES, 2, actor="alice", reason="gates passed")
    marker = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-c", _ADVANCE_AND_STOP], cwd=PROJECT_ROOT,
                            env={**os.environ, "STOP_AT": stop_at, "STOP_MARKER": str(marker),
                                 "PYTHONPATH": str(PROJECT_ROOT)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the advance never reached its stop"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rollout.pending_intent(registry, NAMES) is not None

    # What every keel command does first: the champion move's intent (when the kill hit it),
    # then the rollout's.
    line = recover_model_set(home, "flight_disruption")

    assert f"completed the interrupted rollout {started.id} advance to champion by killed" in line
    assert rollout.pending_intent(registry, NAMES) is None
    assert tag(registry)["stage"] == "champion"
    assert model_set.champion_set(registry, NAMES).versions == {"primary": 2, "fallback": 2, "baseline": 2}
    assert [(d.action, d.to_stage) for d in rollout.decisions(registry, NAMES)] == [
        ("start", "shadow"), ("advance", "champion")]
    assert all(aliases(registry, kind) == {"champion": 2, "previous": 1} for kind in NAMES)
    assert rollout.recover(registry, NAMES) is None
