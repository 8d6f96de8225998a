"""``keel rollout``: start, status, advance and abort from the command line, their exit codes
and their --json keys, on a real registry; ``keel status --json`` shows the rollout too."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import query, use_registry_home
from keel.app.cli import main
from keel.core import config
from keel.registry import model_set, rollout
from keel.registry.promotion import GATES_TAG, registered_names
from keel.registry.tracking import open_registry

NAMES = registered_names("flight_disruption")
RECORD_KEYS = {"id", "set", "stage", "share", "step", "started_at", "stage_since", "by"}
DECISION_KEYS = {"id", "rollout_id", "seq", "action", "at", "actor", "from_stage", "from_share", "to_stage",
                 "to_share", "step", "set", "reason", "evidence"}


@pytest.fixture
def home(registry_template, tmp_path, monkeypatch):
    target = tmp_path / "keel"
    shutil.copytree(registry_template, target)
    paths = use_registry_home(target, monkeypatch)
    model_set.promote_set(open_registry(config.at(paths.home).tracking), NAMES, 1, actor="alice", note="first")
    return paths


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_rollout_from_the_command_line_with_its_json_keys_and_exit_codes(home, capsys):
    code, out, _ = run(capsys, "rollout", "status", "--json")
    assert code == 0
    empty = json.loads(out)
    assert set(empty) == {"promotion_policy", "policy", "active", "last", "decisions"}
    assert (empty["active"], empty["last"], empty["decisions"]) == (None, None, [])
    assert empty["policy"]["canary_steps"] == [0.05, 0.25, 0.5]

    code, out, _ = run(capsys, "rollout", "start", "2", "--note", "gates passed", "--actor", "alice", "--json")
    assert code == 0
    started = json.loads(out)
    assert set(started) == {"rollout", "decision"} and set(started["rollout"]) == RECORD_KEYS
    assert set(started["decision"]) == DECISION_KEYS and started["decision"]["actor"] == "alice"

    code, _, err = run(capsys, "rollout", "start", "3", "--note", "a second one")
    assert code == 1 and "is in shadow" in err
    code, out, _ = run(capsys, "rollout", "advance", "--note", "shadow looks fine")
    assert code == 0 and out.strip() == f"rollout {started['rollout']['id']} of v2: canary at 5% of keys"

    code, out, _ = run(capsys, "rollout", "status", "--json")
    doc = json.loads(out)
    assert doc["active"]["stage"] == "canary" and doc["active"]["share"] == 0.05
    assert [d["action"] for d in doc["decisions"]] == ["start", "advance"]
    assert all(set(d) == DECISION_KEYS for d in doc["decisions"])

    code, out, _ = run(capsys, "status", "--json")
    status = json.loads(out)
    assert set(status["rollout"]) == {"active", "last", "decisions"} and status["rollout"]["active"]["stage"] == "canary"
    assert status["deployment"]["rollout"]["shadow_hours"] == 48.0

    code, out, _ = run(capsys, "rollout", "abort", "--note", "p99 doubled")
    assert code == 0 and out.strip().endswith("aborted; the champion serves every key")
    code, _, err = run(capsys, "rollout", "advance")
    assert code == 1 and "no active rollout" in err
    code, out, _ = run(capsys, "rollout", "status")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("promotion policy auto; canary steps 5%, 25%, 50%; shadow 48 h")
    assert "aborted; the champion serves every key" in lines[1]
    assert [line.split()[2] for line in lines[2:]] == ["start", "advance", "abort"]
    # Every decision reached the warehouse as the commands ran.
    rows = query(home.warehouse, "select action, reason from audit.rollout_decisions order by seq")
    assert rows == [("start", "gates passed"), ("advance", "shadow looks fine"), ("abort", "p99 doubled")]
    assert model_set.champion_set(open_registry(config.at(home.home).tracking), NAMES).primary == 1


def test_a_version_whose_gates_failed_is_refused_with_exit_1_and_nothing_starts(home, capsys):
    registry = open_registry(config.at(home.home).tracking)
    registry.client().set_model_version_tag(NAMES["primary"], "3", GATES_TAG, "failed")
    code, _, err = run(capsys, "rollout", "start", "3")
    assert code == 1 and "v3 cannot be rolled out" in err
    assert rollout.last_rollout(registry, NAMES) is None
    code, _, err = run(capsys, "rollout", "start", "three")
    assert code == 2 and "version number" in err
