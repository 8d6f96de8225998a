"""The champion model set moves as one recorded transaction, against a real MLflow store.

A template home holds a real SQLite MLflow store with versions 1..3 of the primary, fallback
and baseline models (version n of each from Dagster run ``run-n``, gates passed); each test
works on its own copy, which also exercises opening a home copied to another path. The kill
tests run the promotion in a real subprocess, stop it at a named point (a wrapper the test
installs in that process only) and SIGKILL it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import use_registry_home
from keel.core import config
from keel.core.settings import PROJECT_ROOT, KeelPaths
from keel.ml.scoring import load_tiers
from keel.registry import model_set
from keel.registry.promotion import GATES_TAG, registered_names
from keel.registry.tracking import open_registry

NAMES = registered_names("flight_disruption")


def _use_home(home: Path, patch: pytest.MonkeyPatch) -> KeelPaths:
    return use_registry_home(home, patch)


@pytest.fixture
def home(registry_template, tmp_path, monkeypatch) -> KeelPaths:
    """This test's copy of the template (at another path than the template's)."""
    target = tmp_path / "keel"
    shutil.copytree(registry_template, target)
    return _use_home(target, monkeypatch)


def registry_of(paths: KeelPaths):
    return open_registry(config.at(paths.home).tracking)


def aliases(registry, name: str) -> dict[str, int]:
    return {a: int(v) for a, v in registry.client().get_registered_model(name).aliases.items()}


def all_aliases(registry) -> dict[str, dict[str, int]]:
    return {kind: aliases(registry, name) for kind, name in NAMES.items()}


def same_set(version: int) -> dict[str, int]:
    return {kind: version for kind in NAMES}


# --------------------------------------------------------------------------------------------


def test_promoting_commits_one_set_and_moves_every_member_with_its_history(home):
    registry = registry_of(home)
    assert model_set.champion_set(registry, NAMES) is None

    first = model_set.promote_set(registry, NAMES, 1, actor="alice", note="first model")
    second = model_set.promote_set(registry, NAMES, 2, actor="bob", note="better auc")

    assert first.versions == same_set(1) and first.previous is None
    committed = model_set.champion_set(registry, NAMES)
    assert committed.versions == same_set(2) and committed.previous == same_set(1)
    assert (committed.actor, committed.note, committed.txn) == ("bob", "better auc", second.txn)
    assert all_aliases(registry) == {kind: {"champion": 2, "previous": 1} for kind in NAMES}
    assert model_set.pending_intent(registry, NAMES) is None
    for name in NAMES.values():
        history = registry.promotion_history(name)
        assert [(h["action"], h["version"], h["from_version"], h["actor"]) for h in history] == [
            ("promote", 1, None, "alice"), ("promote", 2, 1, "bob")]
        assert registry.client().get_model_version(name, "2").tags["keel.promoted_by"] == "bob"
    with pytest.raises(ValueError, match="already is the champion"):
        model_set.promote_set(registry, NAMES, 2, actor="bob", note="twice")


def test_a_version_whose_gates_did_not_pass_is_refused_and_nothing_moves(home):
    registry = registry_of(home)
    model_set.promote_set(registry, NAMES, 1, actor="alice", note="first")
    registry.client().set_model_version_tag(NAMES["primary"], "2", GATES_TAG, "failed")

    with pytest.raises(PermissionError, match="v2 cannot be promoted"):
        model_set.promote_set(registry, NAMES, 2, actor="bob", note="ship it")

    assert model_set.champion_set(registry, NAMES).versions == same_set(1)
    assert all_aliases(registry) == {kind: {"champion": 1} for kind in NAMES}


def test_rollback_restores_the_previous_set_as_a_unit_and_refuses_a_second_time(home):
    # Regression: the undo path had no test; rolling each model back on its own could make
    # a set that was never promoted (a fallback whose own history differs from the primary's).
    registry = registry_of(home)
    model_set.promote_set(registry, NAMES, 1, actor="alice", note="first")
    model_set.promote_set(registry, NAMES, 2, actor="bob", note="second")
    # The fallback was moved by hand to v3 outside Keel: its alias history no longer
    # follows the primary's, but the committed set still says v2.
    registry.client().set_registered_model_alias(NAMES["fallback"], "champion", "3")
    registry.client().set_registered_model_alias(NAMES["fallback"], "previous", "2")

    rolled = model_set.rollback_set(registry, NAMES, actor="carol", note="slice EWR regressed")

    assert rolled.versions == same_set(1) and rolled.previous is None
    assert model_set.champion_set(registry, NAMES).versions == same_set(1)
    assert all_aliases(registry) == {kind: {"champion": 1} for kind in NAMES}
    for name in NAMES.values():
        last = registry.promotion_history(name)[-1]
        assert (last["action"], last["version"], last["actor"], last["note"]) == (
            "rollback", 1, "carol", "slice EWR regressed")
        assert registry.client().get_model_version(name, "2").tags["keel.rolled_back_by"] == "carol"
    with pytest.raises(LookupError, match="no previous champion set"):
        model_set.rollback_set(registry, NAMES, actor="carol", note="again")
    assert model_set.champion_set(registry, NAMES).versions == same_set(1)


def test_a_registry_promoted_before_sets_were_recorded_is_read_from_its_aliases(home):
    registry = registry_of(home)
    for name in NAMES.values():
        registry.client().set_registered_model_alias(name, "champion", "2")
        registry.client().set_registered_model_alias(name, "previous", "1")

    legacy = model_set.champion_set(registry, NAMES)
    assert (legacy.versions, legacy.previous, legacy.action) == (same_set(2), same_set(1), "aliases")
    model_set.promote_set(registry, NAMES, 3, actor="dave", note="after the upgrade")
    committed = model_set.champion_set(registry, NAMES)
    assert committed.versions == same_set(3) and committed.previous == same_set(2)


# --------------------------------------------------------------------------------------------
# Killed mid-promotion

_PROMOTE_AND_STOP = r"""
import os, sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from keel.core.config import current
from keel.registry import model_set
from keel.registry.promotion import registered_names
from keel.registry.tracking import open_registry

names = registered_names("flight_disruption")
registry = open_registry(current().tracking)
point, marker = os.environ["STOP_AT"], Path(os.environ["STOP_MARKER"])

def stop():
    marker.write_text(point)
    time.sleep(600)

if point == "fallback_alias":
    set_alias = MlflowClient.set_registered_model_alias
    def stopping_set_alias(self, name, alias, version):
        if name == names["fallback"]:
            stop()
        return set_alias(self, name, alias, version)
    MlflowClient.set_registered_model_alias = stopping_set_alias
elif point == "records":
    model_set._finish = lambda *args: stop()
model_set.promote_set(registry, names, 2, actor="alice", note="killed halfway")
print("finished without stopping", file=sys.stderr)
"""


def _environment(paths: KeelPaths) -> dict[str, str]:
    return {**os.environ, "KEEL_HOME": str(paths.home), "DAGSTER_HOME": str(paths.dagster_home),
            "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def promote_and_kill(paths: KeelPaths, point: str, tmp_path: Path, before_kill=None) -> None:
    """Promote v2 in a subprocess, stop it at ``point``, run ``before_kill``, SIGKILL it."""
    marker = tmp_path / f"stopped-{point}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROMOTE_AND_STOP], cwd=PROJECT_ROOT,
        env={**_environment(paths), "STOP_AT": point, "STOP_MARKER": str(marker)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the promotion ended before {point}: {proc.communicate()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the promotion never reached {point}")
            time.sleep(0.2)
        if before_kill is not None:
            before_kill()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def keel(paths: KeelPaths, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keel", *args], cwd=PROJECT_ROOT, env=_environment(paths),
                          capture_output=True, text=True, timeout=600)


def test_a_promotion_killed_between_two_alias_writes_is_completed_by_the_next_command(home, tmp_path):
    # Regression: a kill between the separate MLflow writes of a promotion left a new primary
    # beside an old fallback, and keel run, keel approve, rollback and scoring read that mix.
    registry = registry_of(home)
    model_set.promote_set(registry, NAMES, 1, actor="alice", note="first")
    seen = {}

    def while_stopped():
        seen["aliases"] = all_aliases(registry)
        seen["set"] = model_set.champion_set(registry, NAMES).versions
        seen["tiers"] = {t.name: t.version for t in load_tiers(NAMES, model_set.champion_loader(registry, NAMES))}
        seen["recovered while it runs"] = model_set.recover(registry, NAMES)
        with pytest.raises(RuntimeError, match="another move of the champion set is in progress"):
            model_set.promote_set(registry, NAMES, 3, actor="bob", note="meanwhile")

    promote_and_kill(home, "fallback_alias", tmp_path, while_stopped)

    # On disk the aliases were mixed; every reader saw the committed set, whole.
    assert seen["aliases"]["primary"] == {"champion": 2, "previous": 1}
    assert seen["aliases"]["fallback"] == {"champion": 1}
    assert seen["set"] == same_set(1) and seen["tiers"] == {"primary": 1, "fallback": 1, "baseline": 1}
    assert seen["recovered while it runs"] is None, "a live process's move is its own"
    assert model_set.pending_intent(registry, NAMES)["target"] == same_set(2)

    done = keel(home, "status")

    assert done.returncode == 0, done.stderr
    assert "keel: recovered: completed the interrupted promote of flight_disruption v2 by alice" in done.stderr
    assert model_set.pending_intent(registry, NAMES) is None
    committed = model_set.champion_set(registry, NAMES)
    assert (committed.versions, committed.previous, committed.note) == (same_set(2), same_set(1), "killed halfway")
    assert all_aliases(registry) == {kind: {"champion": 2, "previous": 1} for kind in NAMES}
    for name in NAMES.values():
        assert [h["version"] for h in registry.promotion_history(name)] == [1, 2]
    assert keel(home, "status").stderr.count("recovered") == 0


def test_a_promotion_killed_after_its_commit_keeps_the_set_and_writes_its_records_once(home, tmp_path):
    registry = registry_of(home)
    model_set.promote_set(registry, NAMES, 1, actor="alice", note="first")
    seen = {}
    promote_and_kill(home, "records", tmp_path,
                     lambda: seen.update(set=model_set.champion_set(registry, NAMES).versions))
    assert seen["set"] == same_set(2), "committed before it was killed"

    line = model_set.recover(registry, NAMES)

    assert line.startswith("completed the interrupted promote of flight_disruption v2")
    assert "it was committed" in line
    assert model_set.recover(registry, NAMES) is None
    for name in NAMES.values():
        history = registry.promotion_history(name)
        assert [(h["version"], h["note"]) for h in history] == [(1, "first"), (2, "killed halfway")]
    assert all_aliases(registry) == {kind: {"champion": 2, "previous": 1} for kind in NAMES}


def test_an_interrupted_promotion_whose_version_is_gone_is_undone(home, tmp_path):
    registry = registry_of(home)
    model_set.promote_set(registry, NAMES, 1, actor="alice", note="first")
    promote_and_kill(home, "fallback_alias", tmp_path)
    registry.client().delete_model_version(NAMES["fallback"], "2")

    line = model_set.recover(registry, NAMES)

    assert line.startswith("undid the interrupted promote of flight_disruption v2")
    assert model_set.champion_set(registry, NAMES).versions == same_set(1)
    assert all_aliases(registry) == {kind: {"champion": 1} for kind in NAMES}
    assert model_set.pending_intent(registry, NAMES) is None
    assert [h["version"] for h in registry.promotion_history(NAMES["primary"])] == [1]


# --------------------------------------------------------------------------------------------
# A home copied or restored to another path


def test_a_home_restored_to_another_path_serves_its_own_models(home, tmp_path, monkeypatch, capsys):
    # Regression: a restored or copied KEEL_HOME failed with "experiment 'keel' already stores
    # its artifacts in file:///old/path/...", since MLflow records absolute artifact URIs.
    from keel.app.cli import main

    registry = registry_of(home)
    model_set.promote_set(registry, NAMES, 2, actor="alice", note="before the backup")
    rows = pd.DataFrame({config.current().usecase.model.baseline_feature: [0.05, 0.5, 0.95, np.nan]})
    expected = registry.load(NAMES["primary"], 2).predict(rows)
    restored = tmp_path / "restored" / "keel"
    shutil.copytree(home.home, restored)
    shutil.rmtree(home.home)  # the backup's origin is gone: nothing may still read it
    paths = _use_home(restored, monkeypatch)

    assert main(["lineage", "champion", "--json"]) == 0
    lineage = json.loads(capsys.readouterr().out)
    assert (lineage["registered_model"], lineage["version"], lineage["dagster_run_id"]) == (
        NAMES["primary"], 2, "run-2")
    assert main(["status", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert models[NAMES["fallback"]]["aliases"] == {"champion": 2}

    registry = registry_of(paths)
    tiers = load_tiers(NAMES, model_set.champion_loader(registry, NAMES))
    assert [(t.name, t.version, t.error) for t in tiers] == [(k, 2, None) for k in ("primary", "fallback", "baseline")]
    assert tiers[0].model.predict(rows).tobytes() == expected.tobytes()
    experiment = registry.client().get_experiment_by_name("keel")
    assert experiment.artifact_location == (restored / "mlflow" / "artifacts" / "keel").resolve().as_uri()
    run = registry.client().get_run(registry.client().get_model_version(NAMES["primary"], "2").run_id)
    assert run.info.artifact_uri.startswith(experiment.artifact_location + "/")


def test_an_experiment_put_elsewhere_on_purpose_is_still_refused(home, tmp_path):
    registry_of(home)
    with pytest.raises(ValueError, match="already stores its artifacts in"):
        open_registry(dataclasses.replace(config.at(home.home).tracking, artifact_root=tmp_path / "elsewhere"))
