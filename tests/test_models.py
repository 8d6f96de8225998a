"""Models end to end: keel run trains, gates, promotes and scores; the gates block bad models;
approval, rollback, lineage, reproduction and tiered scoring, on real data and real stores.

The homes (``template``, ``home``, ``trained``) come from tests/model_fixtures.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess

import dagster as dg
import pytest
from conftest import query
from model_fixtures import END, NAMES, PRIMARY, START, registry, score, train

from keel.app.cli import main
from keel.app.pipeline import run_pipeline
from keel.core.settings import PROJECT_ROOT, KeelPaths
from keel.ml.lineage import LINEAGE_FIELDS
from keel.registry.model_set import promote_set
from keel.registry.promotion import alias_or_none

# Stumps on a twentieth of the features, one huge leaf minimum: a real model, clearly worse.
WEAKER_PARAMS = {"num_leaves": 3, "learning_rate": 1.0, "min_data_in_leaf": 5000, "feature_fraction": 0.05}


def aliases(paths: KeelPaths, name: str = PRIMARY) -> dict[str, int]:
    return {a: int(v) for a, v in registry(paths).client().get_registered_model(name).aliases.items()}


def gate_results(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}


def metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    (event,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in event.metadata.items()}


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_keel_run_trains_gates_promotes_the_first_model_and_scores_every_gated_day(template):
    out = template.output
    assert template.exit_code == 0, out
    assert "trained on 2013-01-01..2013-02-28: 51,954 rows over 59 days" in out
    for kind in ("primary", "fallback", "baseline"):
        assert f"{kind:<9} {NAMES[kind]:<28} v1" in out
    assert "promotion gates: 5 passed, 0 failed" in out
    assert "passed  beats_champion: no champion yet" in out
    assert "promotion: v1 promoted automatically: every gate passed (champion: v1)" in out
    assert "predictions    51,954 rows over 59 days (champion v1): primary 51,954, fallback 0, baseline 0" in out
    rows = query(template.home / "warehouse.duckdb",
                 "select tier, model_name, model_version, count(*), count(distinct flight_date), "
                 "min(score) >= 0 and max(score) <= 1 from serving.predictions group by all")
    assert rows == [("primary", PRIMARY, 1, 51_954, 59, True)]
    (features,) = query(template.home / "warehouse.duckdb",
                        "select count(*) from marts.flight_features f join serving.predictions p using (flight_id)")
    assert features == (51_954,)


@pytest.mark.slow
def test_keel_run_again_on_the_same_rows_and_code_registers_no_new_model(home, monkeypatch):
    # The commit pins the code only in a clean checkout; pin both for the test's checkout.
    monkeypatch.setattr("keel.ml.lineage.git_commit", lambda root=PROJECT_ROOT: "c" * 40)
    monkeypatch.setattr("keel.ml.lineage.git_dirty", lambda root=PROJECT_ROOT: False)
    first, second = io.StringIO(), io.StringIO()
    assert run_pipeline(START, END, out=first) == 0, first.getvalue()
    served = query(home.warehouse, "select flight_id, score, model_version from serving.predictions order by all")
    assert run_pipeline(START, END, out=second) == 0, second.getvalue()
    assert "training skipped: champion v1 was trained on these very rows with this code" in second.getvalue()
    assert [int(v.version) for v in registry(home).client().search_model_versions(f"name='{PRIMARY}'")] == [1]
    assert query(home.warehouse, "select flight_id, score, model_version from serving.predictions order by all") == served


@pytest.mark.slow
def test_a_challenger_worse_than_the_champion_is_not_promoted_and_the_check_says_why(home, capsys):
    assert train().success
    worse = train(params=WEAKER_PARAMS)

    assert not worse.success
    passed, why = gate_results(worse)["beats_champion"]
    assert not passed
    assert why.startswith("does not beat the champion: challenger v2 AUC 0.6")
    assert "vs champion v1 0.6" in why
    report = metadata(worse, "models__evaluation_report")
    assert report["challenger_roc_auc"] < report["champion_roc_auc"]
    assert not worse.asset_materializations_for_node("models__champion"), "a failed gate blocks promotion"
    assert aliases(home) == {"champion": 1, "challenger": 2}
    tags = registry(home).client().get_model_version(PRIMARY, "2").tags
    assert tags["keel.gates"] == "failed" and tags["keel.gate.beats_champion"].startswith("failed: does not beat")

    assert main(["approve", "2", "--note", "ship it anyway"]) == 1
    err = capsys.readouterr().err
    assert "cannot be promoted" in err and "beats_champion: failed: does not beat the champion" in err
    assert aliases(home) == {"champion": 1, "challenger": 2}


@pytest.mark.slow
def test_a_model_trained_on_inverted_labels_is_blocked(home):
    result = train(corruption="invert")

    assert not result.success
    gates = gate_results(result)
    assert gates["beats_champion"][0], "no champion yet: that gate passes, the others must catch it"
    assert not gates["beats_baseline"][0]
    assert gates["beats_baseline"][1].startswith("does not beat the baseline: challenger v1 AUC 0.")
    assert report_auc(result) < 0.5
    assert not gates["calibrated"][0]
    assert metadata(result, "models__training_set")["label_corruption"] == "invert"
    assert "champion" not in aliases(home)
    assert registry(home).lineage(PRIMARY, 1)["label_corruption"] == "invert"


def report_auc(result) -> float:
    return metadata(result, "models__evaluation_report")["challenger_roc_auc"]


@pytest.mark.slow
def test_rollback_restores_the_previous_champion_of_the_whole_model_set(home, capsys):
    assert train().success
    second = train()
    assert second.success
    assert metadata(second, "models__champion")["decision"] == "v2 promoted automatically: every gate passed"
    for name in NAMES.values():
        assert aliases(home, name) == {"champion": 2, "previous": 1}

    assert main(["rollback", "--note", "slice EWR regressed", "--actor", "carol"]) == 0
    assert "rolled back from v2 to v1 by carol: slice EWR regressed" in capsys.readouterr().out
    for name in NAMES.values():
        assert aliases(home, name) == {"champion": 1}
    last = registry(home).promotion_history(PRIMARY)[-1]
    assert (last["action"], last["version"], last["from_version"], last["actor"], last["note"]) == (
        "rollback", 1, 2, "carol", "slice EWR regressed")

    assert main(["rollback", "--note", "again"]) == 1
    assert "no previous champion" in capsys.readouterr().err
    assert score(dt.date(2013, 2, 27), dt.date(2013, 2, 28)).success
    versions = query(home.warehouse, "select distinct tier, model_version from serving.predictions "
                                     "where flight_date >= '2013-02-27'")
    assert versions == [("primary", 1)]


@pytest.mark.slow
def test_scoring_survives_a_primary_model_that_fails_to_load(home, capsys):
    assert train().success
    (model_txt,) = [
        path for path in (home.mlflow / "artifacts").rglob("model.txt")
        if json.loads((path.parent / "model.json").read_text())["kind"] == "primary"
    ]
    model_txt.write_text(model_txt.read_text() + "\n")  # the stored file no longer matches its hash

    result = score(dt.date(2013, 2, 20), dt.date(2013, 2, 22))

    assert result.success
    meta = metadata_of_any_partition(result)
    rows = query(home.warehouse, "select count(*) from marts.flight_features where flight_date between ? and ?",
                 [dt.date(2013, 2, 20), dt.date(2013, 2, 22)])[0][0]
    assert meta["rows_per_tier"] == {"primary": 0, "fallback": rows, "baseline": 0}
    assert "does not match model.json" in meta["tier_load_errors"]["primary"]
    assert query(home.warehouse, "select tier, model_name, model_version, count(*) from serving.predictions "
                                 "where flight_date between '2013-02-20' and '2013-02-22' group by all") == [
        ("fallback", NAMES["fallback"], 1, rows)]

    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["predictions"]["2013-02-21"]["fallback"] > 0 and doc["predictions"]["2013-02-21"]["primary"] == 0


def metadata_of_any_partition(result) -> dict:
    events = result.get_asset_materialization_events()
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


@pytest.mark.slow
def test_manual_policy_leaves_the_challenger_until_keel_approve_records_who_and_why(home, capsys):
    assert train().success
    second = train(policy="manual")

    assert second.success, "every gate passed; the policy, not a gate, holds it"
    decision = metadata(second, "models__champion")
    assert decision["policy"] == "manual" and decision["promoted"] is False
    assert "waiting for approval (keel approve 2" in decision["decision"]
    assert aliases(home) == {"champion": 1, "challenger": 2}

    assert main(["approve", "2", "--note", "reviewed the slices with ops", "--actor", "alice"]) == 0
    assert "v2 approved by alice: reviewed the slices with ops (champion: v2, previous: v1)" in capsys.readouterr().out
    assert aliases(home) == {"champion": 2, "previous": 1}
    assert aliases(home, NAMES["fallback"]) == {"champion": 2, "previous": 1}
    last = registry(home).promotion_history(PRIMARY)[-1]
    assert (last["action"], last["version"], last["actor"], last["note"]) == (
        "promote", 2, "alice", "reviewed the slices with ops")
    assert dt.datetime.fromisoformat(last["at"]).tzinfo is not None
    tags = registry(home).client().get_model_version(PRIMARY, "2").tags
    assert tags["keel.promoted_by"] == "alice" and tags["keel.promotion_note"] == "reviewed the slices with ops"
    # Recorded in Dagster too: the approval is a materialization of models/champion.
    records = dg.DagsterInstance.get().fetch_materializations(dg.AssetKey(["models", "champion"]), limit=1).records
    approved = records[0].asset_materialization.metadata
    assert approved["actor"].value == "alice" and approved["champion_version"].value == 2


@pytest.mark.slow
def test_reproduce_retrains_the_same_model_from_its_lineage(trained, capsys):
    assert main(["reproduce", "1"]) == 0
    out = capsys.readouterr().out
    assert "training set: same rows as recorded" in out
    assert "max abs difference 0; identical" in out
    assert "model text: identical" in out and "reproduced: the same model" in out
    assert main(["reproduce", "fallback/1"]) == 0
    assert "reproduced: the same model" in capsys.readouterr().out


@pytest.mark.slow
def test_reproduce_says_when_the_training_data_changed(home, capsys):
    assert train().success
    with_labels = query(home.warehouse, "select count(*) from marts.flight_labels")[0][0]
    import duckdb

    with duckdb.connect(str(home.warehouse)) as con:
        con.execute("update marts.flight_labels set is_disrupted = not is_disrupted where flight_date = ?",
                    [dt.date(2013, 1, 10)])
    assert query(home.warehouse, "select count(*) from marts.flight_labels")[0][0] == with_labels

    assert main(["reproduce", "1"]) == 1
    out = capsys.readouterr().out
    assert "THE DATA CHANGED" in out and "not reproduced" in out


@pytest.mark.slow
def test_lineage_prints_every_field(trained, capsys):
    paths, result = trained
    assert main(["lineage", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(LINEAGE_FIELDS) <= set(doc)
    assert all(doc[field] is not None for field in LINEAGE_FIELDS if field != "git_dirty")
    assert doc["registered_model"] == PRIMARY and doc["version"] == 1 and doc["model_kind"] == "primary"
    assert doc["window"] == {"start": "2013-01-01", "end": "2013-02-28"}
    assert doc["rows"]["total"] == 51_954
    assert doc["rows"]["train"] + doc["rows"]["valid"] + doc["rows"]["test"] == 51_954
    assert doc["split"]["test"] == {"start": "2013-02-15", "end": "2013-02-28", "rows": doc["rows"]["test"],
                                    "positives": doc["split"]["test"]["positives"]}
    assert doc["training_set_hash"] == metadata(result, "models__training_set")["training_set_hash"]
    assert doc["dagster_run_id"] == result.run_id
    assert doc["lock_file_sha256"] == hashlib.sha256((PROJECT_ROOT / "requirements.lock").read_bytes()).hexdigest()
    manifest = PROJECT_ROOT / "dbt_project" / "target" / "manifest.json"
    assert doc["dbt_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert doc["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert doc["params"]["seed"] == 13 and "num_leaves" in doc["params"]
    assert doc["training_config"]["valid_weeks"] == 2
    # The same record is the model asset's metadata.
    assert metadata(result, "models__primary_model")["training_set_hash"] == doc["training_set_hash"]

    assert main(["lineage", "flight_disruption_baseline@champion"]) == 0
    text = capsys.readouterr().out
    for field in LINEAGE_FIELDS:
        assert f"\n{field} " in text or text.startswith(f"{field} ")


@pytest.mark.slow
def test_status_json_gains_models_and_predictions(trained, capsys):
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"tables", "checks", "models", "predictions"} <= set(doc)
    assert set(doc["models"]) == set(NAMES.values())
    for name, model in doc["models"].items():
        assert model["aliases"] == {"champion": 1}
        (version,) = model["versions"]
        assert type(version["version"]) is int and version["version"] == 1
        assert isinstance(version["run_id"], str) and len(version["run_id"]) == 32
        assert dt.datetime.fromisoformat(version["created"]).tzinfo is not None
        assert version["aliases"] == ["champion"]
        metrics = {m: version[m] for m in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")}
        assert all(type(v) is float for v in metrics.values()), (name, metrics)
    # The template's keel run scored every day; this module's copy rescored February 20-22.
    assert list(doc["predictions"]) == [(START + dt.timedelta(days=i)).isoformat() for i in range(59)]
    for day, tiers in doc["predictions"].items():
        assert set(tiers) == {"primary", "fallback", "baseline"}
        assert all(type(n) is int for n in tiers.values())
        assert tiers["primary"] > 0 and tiers["fallback"] == tiers["baseline"] == 0


@pytest.mark.slow
def test_a_run_scored_below_the_primary_tier_says_so_in_run_status_and_a_warning_check(home, capsys):
    # Regression: when the champion failed to load, every row was scored by the baseline rule
    # and keel run exited 0 with no word of it in its summary.
    train()
    if alias_or_none(registry(home), PRIMARY, "champion") is None:
        # The gates are not under test here: on a loaded machine the latency gate blocks.
        promote_set(registry(home), NAMES, 1, actor="test", note="set-up", require_gates=False)
    for path in (home.mlflow / "artifacts").rglob("model.txt"):
        if json.loads((path.parent / "model.json").read_text())["kind"] in ("primary", "fallback"):
            path.write_text(path.read_text() + "\n")  # the stored file no longer matches its hash
    first, last = dt.date(2013, 2, 20), dt.date(2013, 2, 22)

    assert main(["run", "--start", first.isoformat(), "--end", last.isoformat()]) == 0
    out = capsys.readouterr().out
    rows = dict(query(home.warehouse, "select flight_date, count(*) from marts.flight_features "
                                      "where flight_date between ? and ? group by 1", [first, last]))
    assert dict(query(home.warehouse, "select flight_date, count(*) from serving.predictions where tier = 'baseline' "
                                      "and flight_date between ? and ? group by 1", [first, last])) == rows
    assert f"DEGRADED: 3 day(s) scored below the primary tier ({sum(rows.values()):,} of their" in out
    (line,) = [line for line in out.splitlines() if line.startswith("  2013-02-21 ")]
    assert "100% below primary" in line and "primary flight_disruption did not load" in line
    assert "fallback flight_disruption_fallback did not load" in line

    assert main(["status", "--json"]) == 0
    degraded = {d["day"]: d for d in json.loads(capsys.readouterr().out)["degraded"]}
    assert sorted(degraded) == ["2013-02-20", "2013-02-21", "2013-02-22"]
    day = degraded["2013-02-21"]
    assert day["share_below_primary"] == 1.0 and day["rows"] == rows[dt.date(2013, 2, 21)]
    assert day["rows_per_tier"] == {"primary": 0, "fallback": 0, "baseline": day["rows"]}
    assert "does not match model.json" in day["reason"]

    result = score(first, last)
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "scored_by_primary"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["bound"].value == 0.01 and "(bound 1%)" in check.description

    # The bound is the deployment's: keel.toml moves it for the next run.
    (home.home / "keel.toml").write_text("[scoring]\nmax_share_below_primary = 1.0\n")
    result = score(first, last)
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "scored_by_primary"]
    assert check.passed and check.metadata["bound"].value == 1.0


def _train_window(end: dt.date) -> dg.ExecuteInProcessResult:
    from definitions import defs

    run_config = {"ops": {
        "models__training_set": {"config": {"start": START.isoformat(), "end": end.isoformat(),
                                            "valid_weeks": 2, "test_weeks": 2}},
        "models__primary_model": {"config": {"search_trials": 1}},
    }}
    return defs.resolve_job_def("train_models").execute_in_process(
        instance=dg.DagsterInstance.get(), run_config=run_config, raise_on_error=False)


@pytest.mark.slow
def test_overlapping_training_runs_each_evaluate_and_promote_their_own_model(home, monkeypatch):
    # Regression: the training set had one fixed path and evaluation read whatever the
    # challenger alias pointed at, so a run that overlapped another evaluated its model.
    import threading

    import assets.evaluation as evaluation

    other: dict = {}
    real_model_spec = evaluation.model_spec

    def other_run_lands_first(keel):
        # Run A has trained and registered; before it evaluates, run B trains on another
        # window, registers, moves the challenger alias and writes its own training set.
        if not other:
            other["started"] = True
            thread = threading.Thread(target=lambda: other.update(result=_train_window(dt.date(2013, 2, 21))))
            thread.start()
            thread.join()
        return real_model_spec(keel)

    monkeypatch.setattr(evaluation, "model_spec", other_run_lands_first)
    a = _train_window(END)
    b = other["result"]
    assert b.success
    a_version = metadata(a, "models__primary_model")["model_version"]
    b_version = metadata(b, "models__primary_model")["model_version"]
    assert a_version != b_version
    a_report, b_report = metadata(a, "models__evaluation_report"), metadata(b, "models__evaluation_report")
    assert a_report["challenger_version"] == a_version and b_report["challenger_version"] == b_version
    assert a_report["holdout"].endswith("..2013-02-28") and b_report["holdout"].endswith("..2013-02-21")
    assert metadata(a, "models__training_set")["path"] != metadata(b, "models__training_set")["path"]
    # A's champion step decides on A's model, unless A's own gates stopped it before.
    if a.asset_materializations_for_node("models__champion"):
        assert f"v{a_version} " in metadata(a, "models__champion")["decision"]
