"""keel simulate: a replay through the real sensors and automation, on a short period."""

from __future__ import annotations

import json
import tomllib

import dagster as dg
import pytest
from conftest import query, untimed_home

from keel.app.cli import main


@pytest.mark.slow
def test_simulate_replays_retrains_and_reports_champion_and_static_auc_per_month(tmp_path, monkeypatch, capsys):
    home = tmp_path / "replay"
    # simulate points these at the replay's home; monkeypatch restores them afterwards.
    monkeypatch.setenv("KEEL_HOME", str(tmp_path / "keel"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "keel" / "dagster"))
    monkeypatch.setenv("KEEL_TRAIN_THREADS", "1")
    monkeypatch.setenv("KEEL_CONFIG", "")  # empty: unset; simulate points it at the replay's keel.toml
    monkeypatch.delenv("KEEL_PROMOTION_POLICY", raising=False)
    untimed_home(tmp_path / "keel")  # the replay's keel.toml inherits it
    code = main(["simulate", "--start", "2013-01-01", "--end", "2013-03-14", "--warmup-end", "2013-02-28",
                 "--tick-days", "7", "--home", str(home), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"months", "retrains", "promotions", "rejections", "decisions", "timeline", "average",
            "static_model_version", "plot", "home"} <= set(result)
    assert [m["month"] for m in result["months"]] == ["2013-03"]
    (march,) = result["months"]
    assert 0.55 < march["champion_auc"] < 0.95 and 0.55 < march["static_auc"] < 0.95
    assert march["rows"] == query(home / "warehouse.duckdb",
                                  "select count(*) from marts.flight_labels where flight_date between "
                                  "'2013-03-01' and '2013-03-14'")[0][0]
    assert march["unscored_rows"] == 0
    # Every day after the warm-up was ingested, built, scored and monitored by the automation,
    # and the trigger decided each one.
    assert result["decisions"] == 14
    scored = query(home / "warehouse.duckdb",
                   "select count(distinct flight_date) from serving.predictions where flight_date > '2013-02-28'")
    assert scored == [(14,)]
    monitored = query(home / "warehouse.duckdb",
                      "select count(*) from monitoring.drift_daily where day > '2013-02-28'")
    assert monitored == [(14,)]
    assert result["retrains"] == len([e for e in result["timeline"] if e["kind"] == "retrain_requested"])
    assert result["promotions"] + result["rejections"] + result["training_failures"] <= result["retrains"]
    assert (home / "simulation" / "timeline.png").stat().st_size > 10_000
    assert json.loads((home / "simulation" / "summary.json").read_text())["months"] == result["months"]
    # The replay ran under the keel.toml it wrote in its home, and counted drifted days by it.
    written = tomllib.loads((home / "keel.toml").read_text())
    assert (written["retraining"]["decide_every_days"], written["training"]["threads"]) == (1, 1)
    assert result["drift_bar"] == written["retraining"]["calibrated_drift_share"]
    assert written["promotion"]["batch_p95_ms"] == 1e9  # from the home it was started from
    # The runs are in the replay's own Dagster instance, for the UI.
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    runs = dg.DagsterInstance.get().get_runs()
    assert len(runs) > result["runs"]  # and the warm-up keel run's runs
    assert any(run.job_name == "train_models" for run in runs)


def test_simulate_refuses_to_clear_a_folder_it_did_not_create(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_HOME", str(tmp_path / "keel"))
    target = tmp_path / "precious"
    target.mkdir()
    (target / "warehouse.duckdb").write_text("not yours")
    with pytest.raises(SystemExit, match="not a keel simulate home"):
        main(["simulate", "--start", "2013-01-01", "--end", "2013-03-10", "--warmup-end", "2013-02-10",
              "--home", str(target)])
    assert (target / "warehouse.duckdb").read_text() == "not yours"


@pytest.mark.parametrize("argv, words", [
    (["--start", "2013-03-01", "--end", "2013-03-20"], "at least 5 weeks"),
    (["--start", "2013-01-01", "--end", "2014-02-01"], "outside"),
    (["--start", "2013-01-01", "--end", "2013-06-30", "--warmup-end", "2013-07-15"], "must end inside"),
])
def test_simulate_refuses_a_period_it_cannot_replay_with_exit_2_and_a_reason(tmp_path, monkeypatch, capsys,
                                                                            argv, words):
    monkeypatch.setenv("KEEL_HOME", str(tmp_path / "keel"))
    assert main(["simulate", *argv]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "keel" / "simulations").exists(), "nothing was written"
