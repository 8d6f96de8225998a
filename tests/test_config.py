"""One deployment configuration: a threshold set once in keel.toml reaches every place that
decides or shows it (the data gates, the important_feature_drift check, the plots, the
retraining trigger and keel status), and the layers stack as documented: the use case's
defaults, then keel.toml, then the environment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import textwrap

import dagster as dg
import pandas as pd
import pytest
from conftest import RANGE_END, RANGE_START, USECASE, query, registry, score, train, write_config

from keel.app.cli import main
from keel.core import config
from keel.core.config import ConfigError, current
from keel.core.policies import GateThresholds, TriggerPolicy
from keel.core.warehouse import connect
from keel.data.replay import replay
from keel.monitoring import retraining
from keel.monitoring import store as monitoring_store

DEFAULT = TriggerPolicy()
DRIFT_CHECK = "important_feature_drift"


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """A home of its own and none of the variables the deployment reads."""
    for name in config.env.DEPLOYMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "keel"
    home.mkdir()
    monkeypatch.setenv("KEEL_HOME", str(home))
    return home


# --------------------------------------------------------------------------------------------
# Layers, errors and the cache


@pytest.fixture
def usecase_with_defaults(tmp_path, monkeypatch):
    """A use case module whose own defaults set a retraining window and a promotion bound."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "scratch_usecase.py").write_text(textwrap.dedent("""
        import dataclasses
        from usecases.flights import USECASE as FLIGHTS

        USECASE = dataclasses.replace(FLIGHTS, deployment={
            "retraining": {"training_days": 56, "cooldown_days": 3},
            "promotion": {"max_ece": 0.1},
            "gates": {"weather": {"max_quarantine_rate": 0.03}},
        })
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setenv("KEEL_USECASE", "scratch_usecase")
    yield "scratch_usecase"
    sys.modules.pop("scratch_usecase", None)


def test_keel_toml_overrides_the_use_case_and_the_environment_overrides_keel_toml(
        clean_env, usecase_with_defaults, monkeypatch):
    alone = current()
    assert alone.usecase_module == "scratch_usecase"
    assert (alone.retraining.training_days, alone.retraining.trigger.cooldown_days) == (56, 3)
    assert alone.promotion.gates.max_ece == 0.1 and alone.promotion.policy == "auto"
    assert alone.gates["weather"].max_quarantine_rate == 0.03

    write_config(clean_env, retraining={"training_days": 70}, promotion={"policy": "auto"},
                 training={"threads": 2}, gates={"max_quarantine_rate": 0.04},
                 gates__flights={"max_quarantine_rate": 0.1, "volume_weeks": 6},
                 gates__weather__null_rate_overrides={"wind_gust": 0.9, "temp": False})
    written = current()
    assert written.retraining.training_days == 70, "keel.toml over the use case"
    assert written.retraining.trigger.cooldown_days == 3, "what keel.toml leaves alone stays the use case's"
    assert written.training_threads == 2
    assert written.gates["flights"].max_quarantine_rate == 0.1, "[gates.flights] over [gates]"
    assert written.gates["flights"].volume_weeks == 6
    assert written.gates["weather"].max_quarantine_rate == 0.04, "[gates] over the use case's table"
    assert written.gates["planes"].max_quarantine_rate == 0.04
    # The use case's own null-rate exceptions stay unless keel.toml names the column.
    assert dict(written.gates["weather"].null_rate_overrides) == {"wind_gust": 0.9, "pressure": 0.6, "temp": None}
    assert dict(written.gates["flights"].null_rate_overrides) == dict(USECASE.table("flights").gates.null_rate_overrides)
    # The tables the gates read carry the same thresholds.
    assert written.usecase.table("flights").gates is written.gates["flights"]

    monkeypatch.setenv("KEEL_PROMOTION_POLICY", "manual")
    monkeypatch.setenv("KEEL_TRAIN_THREADS", "3")
    monkeypatch.setenv("KEEL_MLFLOW_EXPERIMENT", "elsewhere")
    overridden = current()
    assert (overridden.promotion.policy, overridden.training_threads) == ("manual", 3), "environment over keel.toml"
    assert overridden.tracking.experiment == "elsewhere"
    assert overridden.retraining.training_days == 70


def test_tracking_defaults_to_a_store_inside_the_home_and_keel_toml_can_move_it(clean_env, tmp_path):
    default = current().tracking
    assert default.tracking_uri == f"sqlite:///{clean_env.resolve() / 'mlflow' / 'mlflow.db'}"
    assert default.artifact_root == clean_env.resolve() / "mlflow" / "artifacts"
    assert default.experiment == "keel"
    write_config(clean_env, tracking={"uri": f"sqlite:///{tmp_path / 'other.db'}", "experiment": "x"})
    moved = current().tracking
    assert (moved.tracking_uri, moved.experiment) == (f"sqlite:///{tmp_path / 'other.db'}", "x")
    assert not moved.exists()


@pytest.mark.parametrize("text, named", [
    ("[retraining]\ncalibrated_drift_shar = 0.3\n", "calibrated_drift_shar"),
    ("[retrain]\ntraining_days = 42\n", "retrain"),
    ("[gates.flight]\nmax_quarantine_rate = 0.1\n", "flight"),
    ("[gates.flights]\nmax_quarantine = 0.1\n", "max_quarantine"),
    ("[promotion]\nthreads = 2\n", "threads"),
    ("colour = 'red'\n", "colour"),
])
def test_an_unknown_key_is_an_error_that_names_it(clean_env, text, named):
    (clean_env / "keel.toml").write_text(text)
    with pytest.raises(ConfigError, match=f"'{named}'") as raised:
        current()
    assert str(clean_env / "keel.toml") in str(raised.value)


@pytest.mark.parametrize("text, message", [
    ("[retraining]\ncalibrated_drift_share = 'high'\n", "calibrated_drift_share must be a number"),
    ("[retraining]\ncalibrated_drift_share = 1.5\n", "calibrated_drift_share must be in"),
    ("[retraining]\ntraining_days = 14\n", "training_days"),
    ("[promotion]\npolicy = 'sometimes'\n", "promotion policy must be one of"),
    ("[training]\nthreads = 0\n", "threads must be >= 1"),
    ("[retraining\n", "not valid TOML"),
])
def test_a_value_keel_cannot_use_is_an_error_that_says_why(clean_env, text, message):
    (clean_env / "keel.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        current()


def test_keel_config_names_another_file_and_a_missing_one_is_an_error(clean_env, tmp_path, monkeypatch):
    elsewhere = tmp_path / "team.toml"
    elsewhere.write_text("[retraining]\nmin_auc = 0.61\n")
    write_config(clean_env, retraining={"min_auc": 0.7})
    monkeypatch.setenv("KEEL_CONFIG", str(elsewhere))
    assert current().trigger.min_auc == 0.61 and current().config_file == elsewhere
    monkeypatch.setenv("KEEL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml"):
        current()


def test_the_deployment_is_built_once_and_again_when_keel_toml_the_environment_or_the_home_change(
        clean_env, tmp_path, monkeypatch):
    first = current()
    assert current() is first, "built once per process"
    write_config(clean_env, retraining={"calibrated_drift_share": 0.3})
    second = current()
    assert second is not first and second.trigger.calibrated_drift_share == 0.3
    assert current() is second
    write_config(clean_env, retraining={"calibrated_drift_share": 0.25, "min_auc": 0.6})
    assert current().trigger.calibrated_drift_share == 0.25, "an edited keel.toml is read again"
    (clean_env / "keel.toml").unlink()
    assert current().trigger == DEFAULT, "a removed keel.toml leaves the defaults"
    monkeypatch.setenv("KEEL_PROMOTION_POLICY", "manual")
    assert current().promotion.policy == "manual"
    other = tmp_path / "other"
    other.mkdir()
    write_config(other, retraining={"calibrated_drift_share": 0.4})
    monkeypatch.setenv("KEEL_HOME", str(other))
    assert current().home == other.resolve() and current().trigger.calibrated_drift_share == 0.4


def test_toml_text_writes_a_file_that_gives_the_same_deployment_back(clean_env, tmp_path, monkeypatch):
    write_config(clean_env, retraining={"calibrated_drift_share": 0.3, "decide_every_days": 7},
                 promotion={"policy": "manual", "min_auc_gain": 0.002},
                 gates__weather={"max_quarantine_rate": 0.05}, training={"threads": 2})
    source = current()
    moved = config.relocated(source, tmp_path / "replay")
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "keel.toml").write_text(config.toml_text(moved))
    monkeypatch.setenv("KEEL_HOME", str(tmp_path / "replay"))
    again = current()
    assert again.home == (tmp_path / "replay").resolve()
    for field in ("usecase_module", "promotion", "retraining", "training_threads", "gates"):
        assert getattr(again, field) == getattr(source, field), field
    assert again.tracking.tracking_uri == f"sqlite:///{again.home / 'mlflow' / 'mlflow.db'}", "the replay's own store"


# --------------------------------------------------------------------------------------------
# A gate threshold set in keel.toml, on real data


def test_a_quarantine_bound_in_keel_toml_is_the_one_the_gate_and_keel_status_use(replayed_home, pipeline, capsys):
    day = dt.date(2013, 3, 2)
    replay(USECASE, replayed_home.landing, day, day, fault="duplicate_rows", fault_date=day)
    default = GateThresholds().max_quarantine_rate

    def quarantine_gate():
        result = pipeline.ingest_day(day)
        (evaluation,) = [e for e in result.get_asset_check_evaluations()
                         if e.asset_key == dg.AssetKey(["validated", "flights"]) and e.check_name == "quarantine_rate"]
        return evaluation

    held = quarantine_gate()
    landed, _, quarantined, _ = pipeline.partition_stats("flights")[day]
    assert quarantined / landed > default and not held.passed, "the default bound holds the day back"
    assert held.metadata["details"].value["max_quarantine_rate"] == default

    write_config(replayed_home.home, gates__flights={"max_quarantine_rate": 0.5})
    admitted = quarantine_gate()
    assert admitted.passed, admitted.description
    assert admitted.metadata["details"].value["max_quarantine_rate"] == 0.5
    assert pipeline.check_results()[("flights", day, "quarantine_rate")][0] is True
    (passed,) = query(replayed_home.warehouse, "select passed from audit.gate_status "
                      "where table_name = 'flights' and partition_date = ?", [day])
    assert passed == (True,)

    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["deployment"]["gates"]["flights"]["max_quarantine_rate"] == 0.5
    assert doc["deployment"]["gates"]["weather"]["max_quarantine_rate"] == default
    assert doc["deployment"]["config_file"] == str(replayed_home.home / "keel.toml")
    (gate,) = [c for c in doc["checks"] if (c["asset"], c["partition"], c["name"])
               == ("validated/flights", day.isoformat(), "quarantine_rate")]
    assert gate["passed"] and f"{quarantined} of {landed}" not in gate["message"]


# --------------------------------------------------------------------------------------------
# calibrated_drift_share set in keel.toml: the check, the plots, the trigger and keel status


def evaluate_trigger(cursor: str | None = None):
    from definitions import defs

    # KeelState opens per evaluation (it takes the home's lock), so the context is entered.
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.get(), cursor=cursor, definitions=defs,
        resources={"keel": defs.resources["keel"], "mlflow": defs.resources["mlflow"]},
    ) as context:
        return defs.resolve_sensor_def("retraining_trigger").evaluate_tick(context)


def write_drifted_march(con, share: float, days: int = 5) -> list[dt.date]:
    """Monitoring rows after the champion's window as the monitoring assets write them: every
    day's importance beyond the ordinary-day bars at ``share``, a healthy trailing AUC."""
    march = [dt.date(2013, 3, 1) + dt.timedelta(days=i) for i in range(days)]
    monitoring_store.replace_days(con, {
        "drift_daily": pd.DataFrame({
            "day": march, "model_name": "flight_disruption", "model_version": 1, "rows": 900,
            "n_features": 20, "n_drifted": 2, "share_drifted": 0.1, "important_drift_share": 0.1,
            "calibrated_drift_share": share, "dataset_drifted": False, "drifted_features": "[]",
            "flagged_features": "{}", "calibrated_drifted_features": "[]",
        }),
        "performance": pd.DataFrame({
            "day": march, "model_versions": "{}", "rows": 900, "positives": 200, "roc_auc": 0.72,
            "trailing_start": [d - dt.timedelta(days=6) for d in march], "trailing_end": march,
            "trailing_days_with_data": 7, "trailing_rows": 5000, "trailing_positives": 1000,
            "trailing_roc_auc": 0.72,
        }),
    }, march)
    return march


@pytest.mark.slow
def test_calibrated_drift_share_in_keel_toml_reaches_the_check_the_plots_the_trigger_and_status(home, capsys):
    from definitions import defs

    raised = 0.3
    write_config(home.home, retraining={"calibrated_drift_share": raised, "min_auc": 0.6})
    assert current().trigger == dataclasses.replace(DEFAULT, calibrated_drift_share=raised, min_auc=0.6)
    assert train(trials=1).success
    first, last = dt.date(2013, 2, 20), dt.date(2013, 2, 28)
    assert score(dt.date(2013, 2, 14), last).success
    assert dg.materialize([defs.get_assets_def(dg.AssetKey(["monitoring", "reference"]))],
                          instance=dg.DagsterInstance.get(),
                          resources={"keel": defs.resources["keel"], "mlflow": defs.resources["mlflow"]}).success
    monitored = defs.resolve_job_def("monitor_daily").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False,
        tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()},
        run_config={"ops": {"monitoring__feature_drift": {"config": {"evidently_html": "never"}}}},
    )
    assert monitored.success

    # The check: one verdict per day, against 0.3, as the warehouse's shares say.
    shares = dict(query(home.warehouse, "select day, calibrated_drift_share from monitoring.drift_daily "
                                        "where day between ? and ?", [first, last]))
    verdicts = {e.partition: e for e in monitored.get_asset_check_evaluations() if e.check_name == DRIFT_CHECK}
    assert sorted(verdicts) == [d.isoformat() for d in sorted(shares)]
    for day, share in shares.items():
        verdict = verdicts[day.isoformat()]
        assert verdict.metadata["threshold"].value == raised
        assert verdict.passed == (share < raised), (day, share)
        assert f"{share:.3f} {'<' if share < raised else '>='} {raised:.2f}" in verdict.description

    # The plots: the lines drawn are the deployment's thresholds.
    (drift,) = monitored.asset_materializations_for_node("monitoring__feature_drift")[-1:]
    assert drift.metadata["timeline_thresholds"].value == {
        "calibrated_drift_share": raised, "important_drift_share": DEFAULT.important_drift_share}
    assert drift.metadata["days_over_threshold"].value == sorted(
        d.isoformat() for d, share in shares.items() if share >= raised)
    (performance,) = monitored.asset_materializations_for_node("monitoring__performance")[-1:]
    assert performance.metadata["performance_plot_min_auc"].value == 0.6
    assert (home.home / "monitoring" / "plots" / "feature_drift" / "timeline.png").stat().st_size > 0

    # The trigger: five days at 0.25 are drifted under the default 0.2, not under 0.3.
    assert registry(home).get_alias("flight_disruption", "champion") == 1
    with connect(home.warehouse) as con:
        march = write_drifted_march(con, share=0.25)
    held = evaluate_trigger()
    assert not held.run_requests and held.cursor == march[-1].isoformat()
    with connect(home.warehouse, read_only=True) as con:
        decided = retraining.decisions(con, march[0], march[-1])
    assert [d["day"] for d in decided] == [d.isoformat() for d in march]
    for decision in decided:
        signal = decision["signals"]["important_drift"]
        assert signal["calibrated_share_threshold"] == raised and not signal["fired"]
        assert not any(entry["over"] for entry in signal["days"] if entry["date"] >= "2013-03-01")
        assert decision["signals"]["performance"]["threshold"] == 0.6

    # keel status: the effective thresholds, and the drifted days counted against them.
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["deployment"]["retraining"]["calibrated_drift_share"] == raised
    assert doc["deployment"]["retraining"]["min_auc"] == 0.6
    assert doc["deployment"]["retraining"]["important_drift_share"] == DEFAULT.important_drift_share
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    over = sum(share >= raised for share in shares.values())  # the March days sit at 0.25
    ((days,),) = query(home.warehouse, "select count(*) from (select day from monitoring.drift_daily "
                                       "union select day from monitoring.performance)")
    assert f"retrain on drift share {raised:.2f} or AUC below 0.60" in text
    assert f"monitoring: {days} days, {over} drifted beyond their ordinary-day bars" in text

    # Without the file, the same days decide under the defaults: the trigger fires.
    (home.home / "keel.toml").unlink()
    fired = evaluate_trigger()
    (request,) = fired.run_requests
    assert request.tags["keel/trigger_fired"] == "important_drift"
    assert request.tags["keel/trigger_day"] <= "2013-03-03"
    with connect(home.warehouse, read_only=True) as con:
        (decision,) = [d for d in retraining.decisions(con) if d["day"] == request.tags["keel/trigger_day"]]
    assert decision["signals"]["important_drift"]["calibrated_share_threshold"] == DEFAULT.calibrated_drift_share


def test_the_scoring_bound_comes_from_keel_toml_and_an_impossible_one_is_refused(clean_env):
    # Regression: the share of rows a run may score below the primary tier was a constant in
    # the framework; a deployment could not move the warning check's bound.
    assert config.current().scoring.max_share_below_primary == 0.01
    (clean_env / "keel.toml").write_text("[scoring]\nmax_share_below_primary = 0.25\n")
    deployment = config.current()
    assert deployment.scoring.max_share_below_primary == 0.25
    assert deployment.to_dict()["scoring"] == {"max_share_below_primary": 0.25}
    (clean_env / "keel.toml").write_text("[scoring]\nmax_share_below_primary = 1.5\n")
    with pytest.raises(config.ConfigError, match="max_share_below_primary"):
        config.current()
    (clean_env / "keel.toml").write_text("[scoring]\nmax_share_below_primry = 0.5\n")
    with pytest.raises(config.ConfigError, match="max_share_below_primry"):
        config.current()


def test_the_rollout_section_and_the_staged_policy_come_from_keel_toml_and_the_environment(clean_env, monkeypatch):
    assert config.current().rollout.canary_steps == (0.05, 0.25, 0.5)
    (clean_env / "keel.toml").write_text(
        "[promotion]\npolicy = \"staged\"\n[rollout]\ncanary_steps = [0.1, 0.5]\nshadow_hours = 12\n"
        "error_rate_factor = 3\n")
    deployment = config.current()
    assert deployment.promotion.policy == "staged"
    assert (deployment.rollout.canary_steps, deployment.rollout.shadow_hours) == ((0.1, 0.5), 12.0)
    assert deployment.to_dict()["rollout"]["canary_steps"] == [0.1, 0.5]
    assert deployment.to_dict()["rollout"]["error_rate_factor"] == 3.0
    (clean_env / "keel.toml").write_text(config.toml_text(deployment))
    assert config.current().rollout == deployment.rollout
    monkeypatch.setenv("KEEL_PROMOTION_POLICY", "staged")
    (clean_env / "keel.toml").unlink()
    assert config.current().promotion.policy == "staged"
    for text, key in (("canary_steps = [0.5, 0.25]", "canary_steps"), ("canary_steps = 0.5", "canary_steps"),
                      ("shadow_hour = 4", "shadow_hour")):
        (clean_env / "keel.toml").write_text(f"[rollout]\n{text}\n")
        with pytest.raises(config.ConfigError, match=key):
            config.current()
