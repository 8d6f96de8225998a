"""The registry against a real MLflow sqlite store in a temporary folder (one per module: a
fresh store migrates its tables for ~2-3 s)."""

from __future__ import annotations

import os

# Before mlflow is imported: it starts its telemetry client at import time.
os.environ["DO_NOT_TRACK"] = "true"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from keel.ml import modeling
from keel.ml.split import Split, time_split, training_set_hash
from keel.registry import store as registry
from synthetic import SPEC, synthetic_flights

NAME = "flight_disruption"
PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".cloudpickle", ".skops"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A configured MLflow store; the working directory is an empty folder, to show that
    nothing lands in ./mlruns or ./mlflow.db."""
    root = tmp_path_factory.mktemp("mlflow")
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.chdir(cwd)
        registry.configure(f"sqlite:///{root}/mlflow.db", root / "artifacts", "keel-tests")
        yield root
        assert list(cwd.iterdir()) == []


@pytest.fixture(scope="module")
def split() -> Split:
    return time_split(synthetic_flights(), SPEC)


@pytest.fixture(scope="module")
def primary(split) -> modeling.TrainedModel:
    return modeling.train_primary(split, SPEC, search_trials=3)


@pytest.fixture(scope="module")
def lineage_record(split) -> dict:
    return {
        "training_set_hash": training_set_hash(split.train, SPEC),
        "split": split.summary(),
        "features_relation": SPEC.features_relation,
        "code_version": "5b95c36",
    }


@pytest.fixture(scope="module")
def registered(store, primary, lineage_record, tmp_path_factory) -> registry.RegisteredVersion:
    report = tmp_path_factory.mktemp("report") / "slices.csv"
    report.write_text("slice,value,n\norigin,EWR,100\n")
    return registry.log_and_register(
        primary,
        name=NAME,
        metrics={"valid": {"log_loss": 0.55, "roc_auc": 0.64}, "test.ece": 0.03, "test.roc_auc": None},
        params={"search_trials": 3, "valid_weeks": 4},
        lineage=lineage_record,
        artifacts=[report],
        trials=primary.trials,
    )


def _files(store: Path) -> list[Path]:
    return [p for p in (store / "artifacts").rglob("*") if p.is_file()]


def test_the_logged_model_is_lightgbm_text_and_nothing_is_pickled(store, registered):
    assert registered.model_uri.startswith("models:/m-")
    model_txt = [p for p in _files(store) if p.name == "model.txt"]
    assert len(model_txt) == 1
    assert model_txt[0].read_text().startswith("tree\n")
    assert {p.name for p in model_txt[0].parent.iterdir()} == {"model.txt", "encoder.json", "model.json"}
    assert not [p for p in _files(store) if p.suffix in PICKLE_SUFFIXES]
    mlmodel = json.dumps(mlflow.models.Model.load(registered.model_uri).to_dict())
    assert '"loader_module": "keel.registry.store"' in mlmodel and "pickle" not in mlmodel


def test_a_registered_version_predicts_identically_after_loading(split, primary, registered):
    by_version = registry.load(NAME, registered.version)
    assert by_version.predict(split.test).tobytes() == primary.test_pred.tobytes()
    assert by_version.params == primary.params and by_version.best_iteration == primary.best_iteration
    # MLflow's own loader goes through the same text artifacts; its signature wants numeric
    # columns as float64 (MLflow refuses int64 -> double as unsafe).
    pyfunc = mlflow.pyfunc.load_model(registered.registry_uri)
    raw = split.test[list(primary.features)].astype({"sched_dep_hour": "float64"})
    assert pyfunc.predict(raw).tobytes() == primary.test_pred.tobytes()


def test_the_run_records_params_metrics_lineage_and_trials(registered, primary, lineage_record):
    run = MlflowClient().get_run(registered.run_id)
    assert run.data.params["search_trials"] == "3"
    assert run.data.params["model.num_leaves"] == str(primary.params["num_leaves"])
    assert run.data.params["model.metric"] == '["binary_logloss", "auc"]'
    assert run.data.metrics["valid.log_loss"] == 0.55 and run.data.metrics["test.ece"] == 0.03
    assert "test.roc_auc" not in run.data.metrics
    assert run.data.tags["keel.lineage.training_set_hash"] == lineage_record["training_set_hash"]
    assert run.data.tags["keel.kind"] == "primary"
    assert registry.lineage(NAME, registered.version) == lineage_record

    artifacts = {a.path for a in MlflowClient().list_artifacts(registered.run_id)}
    assert {"lineage.json", "trials.json", "slices.csv"} <= artifacts
    trials = mlflow.artifacts.load_dict(f"runs:/{registered.run_id}/trials.json")
    assert trials == json.loads(json.dumps(primary.trials))
    history = MlflowClient().get_metric_history(registered.run_id, "trial.valid_log_loss")
    assert sorted((m.step, m.value) for m in history) == [(t["trial"], t["valid_log_loss"]) for t in primary.trials]

    version = MlflowClient().get_model_version(NAME, str(registered.version))
    assert version.run_id == registered.run_id
    assert version.tags["keel.lineage.training_set_hash"] == lineage_record["training_set_hash"]


def test_more_params_and_lineage_than_one_mlflow_batch_takes_are_all_logged(store, split):
    # MLflow takes at most 100 params and 100 tags per log_batch call.
    baseline = modeling.train_baseline(split, SPEC)
    lineage = {f"source_{i}": f"file_{i}.csv" for i in range(120)} | {"first_day": dt.date(2013, 1, 1)}
    version = registry.log_and_register(
        baseline, name=f"{NAME}_batches", metrics={f"m{i}": float(i) for i in range(1_200)},
        params={f"p{i}": i for i in range(150)}, lineage=lineage, trials=None,
    )
    run = MlflowClient().get_run(version.run_id)
    assert len([k for k in run.data.params if k.startswith("p")]) == 150
    assert len([k for k in run.data.tags if k.startswith("keel.lineage.")]) == 121
    assert len(run.data.metrics) == 1_200
    assert registry.lineage(version.name, version.version)["first_day"] == "2013-01-01"


def test_metrics_that_are_not_numbers_are_refused(store, primary):
    with pytest.raises(TypeError, match="metric 'calibration' is a list"):
        registry.log_and_register(
            primary, name="refused", metrics={"calibration": [0.1, 0.2]}, params={}, lineage={},
        )


@pytest.mark.parametrize("train", [modeling.train_fallback, modeling.train_baseline], ids=["fallback", "baseline"])
def test_every_model_kind_round_trips_through_the_registry(store, split, train):
    model = train(split, SPEC)
    version = registry.log_and_register(
        model, name=f"{NAME}_{model.kind}", metrics={}, params={}, lineage={"kind": model.kind}, trials=None,
    )
    loaded = registry.load(version.name, version.version)
    assert loaded.kind == model.kind
    assert loaded.predict(split.test).tobytes() == model.test_pred.tobytes()
    assert registry.lineage(version.name, version.version) == {"kind": model.kind}


@pytest.fixture
def three_versions(store, primary) -> str:
    """A registered model of its own with versions 1, 2 and 3 (the same booster thrice)."""
    name = f"promotion_{len(MlflowClient().search_registered_models())}"
    for _ in range(3):
        registry.log_and_register(primary, name=name, metrics={}, params={}, lineage={}, trials=None)
    return name


def _aliases(name: str) -> dict[str, int]:
    return {a: int(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


def test_promote_and_rollback_move_the_aliases_and_keep_the_history(three_versions, split, primary):
    name = three_versions
    registry.promote(name, 1, actor="alice", note="first model")
    assert _aliases(name) == {"champion": 1}
    registry.promote(name, 2, actor="bob", note="better auc")
    assert _aliases(name) == {"champion": 2, "previous": 1}
    tags = MlflowClient().get_model_version(name, "2").tags
    assert tags["keel.promoted_by"] == "bob" and tags["keel.promotion_note"] == "better auc"
    assert tags["keel.promoted_at"].endswith("+00:00")

    registry.rollback(name, actor="carol", note="slice EWR regressed")
    assert _aliases(name) == {"champion": 1}
    assert MlflowClient().get_model_version(name, "2").tags["keel.rolled_back_by"] == "carol"
    with pytest.raises(LookupError, match="no previous champion"):
        registry.rollback(name, actor="carol", note="again")
    assert _aliases(name) == {"champion": 1}
    with pytest.raises(ValueError, match="already is the champion"):
        registry.promote(name, 1, actor="alice", note="twice")

    registry.mark_challenger(name, 3)
    assert registry.get_alias(name, "challenger") == 3
    registry.promote(name, "challenger", actor="dave", note="shadow period passed")
    assert _aliases(name) == {"champion": 3, "previous": 1}
    assert registry.load(name, "champion").predict(split.test).tobytes() == primary.test_pred.tobytes()

    history = registry.promotion_history(name)
    assert [(h["seq"], h["action"], h["version"], h["from_version"], h["actor"], h["note"]) for h in history] == [
        (1, "promote", 1, None, "alice", "first model"),
        (2, "promote", 2, 1, "bob", "better auc"),
        (3, "rollback", 1, 2, "carol", "slice EWR regressed"),
        (4, "promote", 3, 1, "dave", "shadow period passed"),
    ]


def test_a_promotion_that_fails_halfway_puts_the_aliases_back(three_versions):
    name = three_versions
    registry.promote(name, 1, actor="alice", note="first")
    registry.mark_challenger(name, 2)
    # MLflow refuses a tag value over 100,000 characters; by then the aliases have moved.
    with pytest.raises(Exception, match="100000"):
        registry.promote(name, 2, actor="bob", note="x" * 100_001)
    assert _aliases(name) == {"champion": 1, "challenger": 2}
    assert [h["version"] for h in registry.promotion_history(name)] == [1]


def test_unknown_aliases_and_versions_are_errors(registered):
    assert registry.get_alias(NAME, "champion") is None
    with pytest.raises(LookupError, match="has no alias 'champion'"):
        registry.load(NAME, "champion")
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry.promote(NAME, 99, actor="alice", note="no such version")
    assert _aliases(NAME) == {}


def test_configure_refuses_an_experiment_stored_elsewhere(store, tmp_path):
    with pytest.raises(ValueError, match="already stores its artifacts in"):
        registry.configure(f"sqlite:///{store}/mlflow.db", tmp_path / "elsewhere", "keel-tests")
    assert registry.configure(f"sqlite:///{store}/mlflow.db", store / "artifacts", "keel-tests")
