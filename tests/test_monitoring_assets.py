"""Monitoring assets end to end: the champion's reference, each day's feature drift (with its
check and Evidently's report), prediction drift and performance, written to the warehouse
and read back as the retraining trigger reads them.

The home is a copy of conftest's ``keel run`` template (2013-01-01..2013-02-28): one
model is trained on it (train January, validate February 1-14, test February 15-28), the
test weeks are scored, the reference is built and ``monitor_daily`` runs over February
20-28, the days the model never saw. The figures are checked against scipy and sklearn on
the same rows, read independently from the warehouse.
"""

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from conftest import query
from scipy import stats
from scipy.spatial import distance
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from model_fixtures import PRIMARY, copy_home, materialize_reference, monitor, registry, score, train

from keel.monitoring import store as monitoring_store
from keel.core.config import current
from keel.core.settings import KeelPaths
from keel.core.warehouse import connect, ident

SPEC = current().usecase.model
FIRST, LAST = dt.date(2013, 2, 20), dt.date(2013, 2, 28)
DAYS = [FIRST + dt.timedelta(days=i) for i in range((LAST - FIRST).days + 1)]
REFERENCE_WINDOW = (dt.date(2013, 1, 1), dt.date(2013, 2, 14))  # train + validation weeks
SCORED_FROM = dt.date(2013, 2, 14)  # the trailing week of February 20 is scored too
CHECK = "important_feature_drift"


@dataclass(frozen=True)
class Monitored:
    paths: KeelPaths
    reference: dg.ExecuteInProcessResult
    monitor: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def monitored(template, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        paths = copy_home(template, tmp_path_factory.mktemp("monitored") / "keel", patch)
        assert train(trials=1).success
        assert score(SCORED_FROM, LAST).success
        built = materialize_reference()
        assert built.success
        result = monitor(FIRST, LAST)
        assert result.success
        yield Monitored(paths, built, result)


def rows(paths: KeelPaths, sql: str, params=()) -> pd.DataFrame:
    with connect(paths.warehouse, read_only=True) as con:
        return con.execute(sql, list(params)).df()


def metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    """The metadata of a node's materialization; a range run records one per day, all alike."""
    events = result.asset_materializations_for_node(node)
    assert events and all(e.metadata == events[0].metadata for e in events)
    return {k: v.value for k, v in events[-1].metadata.items()}


def features_of(paths: KeelPaths, first: dt.date, last: dt.date) -> pd.DataFrame:
    return rows(paths, "select * from marts.flight_features where flight_date between ? and ?", [first, last])


# --------------------------------------------------------------------------------------------
# Reference


@pytest.mark.slow
def test_the_reference_is_the_champions_training_rows_and_is_built_once_per_version(monitored):
    paths = monitored.paths
    first = metadata(monitored.reference, "monitoring__reference")
    (record,) = rows(paths, "select * from monitoring.reference").to_dict("records")
    assert (record["model_name"], record["model_version"], first["built"]) == (PRIMARY, 1, True)
    assert (record["window_start"].date(), record["window_end"].date()) == REFERENCE_WINDOW
    (labelled,) = query(paths.warehouse,
                        "select count(*) from marts.flight_features as f join marts.flight_labels as l "
                        "on l.flight_id = f.flight_id where f.flight_date between ? and ?", REFERENCE_WINDOW)
    assert record["rows"] == first["rows"] == labelled[0], "train and validation weeks, never the test weeks"

    reg = registry(paths)
    run = reg.client().get_run(reg.client().get_model_version(PRIMARY, "1").run_id)
    assert record["threshold"] == first["threshold"] == run.data.metrics["valid.threshold"]
    booster = reg.load(PRIMARY, 1).booster
    gain = dict(zip(booster.feature_name(), booster.feature_importance("gain")))
    importance = json.loads(record["importance"])
    assert set(importance) == set(SPEC.features)
    assert importance == pytest.approx({f: gain[f] / sum(gain.values()) for f in SPEC.features}, rel=1e-12)
    top = max(importance, key=importance.get)
    assert f"| 1 | {top} |" in first["top_features"]

    data = json.loads(Path(record["path"]).read_text())
    assert Path(record["path"]).name == f"{PRIMARY}-v1.json"
    assert data["features"]["n_rows"] == record["rows"]
    assert data["scores"]["threshold"] == record["threshold"] and data["scores"]["n"] == record["rows"]
    sample = pd.read_parquet(record["sample_path"])
    assert len(sample) == record["sample_rows"] == 5_000 and list(sample.columns) == list(SPEC.features)
    assert Path(first["score_distribution_plot"]).stat().st_size > 10_000

    again = materialize_reference()
    second = metadata(again, "monitoring__reference")
    (kept,) = rows(paths, "select built_at, path from monitoring.reference").to_dict("records")
    assert second["built"] is False
    assert kept["built_at"] == record["built_at"] and second["built_at"] == first["built_at"]
    assert json.loads(Path(kept["path"]).read_text()) == data


# --------------------------------------------------------------------------------------------
# Feature drift


@pytest.mark.slow
def test_feature_drift_writes_every_feature_of_every_day_and_one_check_per_day(monitored):
    paths = monitored.paths
    per_feature = rows(paths, "select * from monitoring.feature_drift where day between ? and ? "
                              "order by day, feature", [FIRST, LAST])
    daily = rows(paths, "select * from monitoring.drift_daily where day between ? and ? order by day", [FIRST, LAST])
    assert [d.date() for d in daily["day"]] == DAYS
    assert len(per_feature) == len(DAYS) * len(SPEC.features)
    assert per_feature.groupby("day")["feature"].apply(set).map(lambda f: f == set(SPEC.features)).all()
    flights = rows(paths, "select flight_date, count(*) as n from marts.flight_features "
                          "where flight_date between ? and ? group by 1 order by 1", [FIRST, LAST])
    assert daily["rows"].tolist() == flights["n"].tolist()
    assert (per_feature["model_version"] == 1).all() and (daily["model_version"] == 1).all()

    for day, features in per_feature.groupby("day"):
        summary = daily.loc[daily["day"] == day].iloc[0]
        drifted = features.loc[features["drifted"]]
        assert summary["n_drifted"] == len(drifted)
        assert summary["share_drifted"] == pytest.approx(len(drifted) / len(SPEC.features))
        assert summary["important_drift_share"] == pytest.approx(drifted["importance"].sum(), rel=1e-12)
        assert sorted(json.loads(summary["drifted_features"])) == sorted(drifted["feature"])

    evaluations = monitored.monitor.get_asset_check_evaluations()
    assert sorted(e.partition for e in evaluations) == [d.isoformat() for d in DAYS]
    for evaluation in evaluations:
        summary = daily.loc[daily["day"] == pd.Timestamp(evaluation.partition)].iloc[0]
        assert evaluation.check_name == CHECK
        assert evaluation.severity == dg.AssetCheckSeverity.WARN and not evaluation.blocking
        assert evaluation.passed == (summary["calibrated_drift_share"] < 0.2)
        assert (f"importance beyond the ordinary-day bars {summary['calibrated_drift_share']:.3f}"
                in evaluation.description)
        beyond = json.loads(summary["calibrated_drifted_features"])
        assert summary["calibrated_drift_share"] == pytest.approx(sum(f["importance"] for f in beyond))
        assert all(f["score"] >= f["bar"] >= 1.0 for f in beyond)
    assert monitored.monitor.success, "a drift warning never fails the run"

    materialized = monitored.monitor.asset_materializations_for_node("monitoring__feature_drift")
    assert [m.partition for m in materialized] == [d.isoformat() for d in DAYS]
    meta = metadata(monitored.monitor, "monitoring__feature_drift")
    last = daily.iloc[-1]
    assert meta["last_day"] == LAST.isoformat() and meta["n_drifted"] == last["n_drifted"]
    assert meta["important_drift_share"] == pytest.approx(last["important_drift_share"])
    assert meta["evidently_reports"] == {}
    for plot in ("drift_plot", "timeline_plot"):
        assert Path(meta[plot]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with connect(paths.warehouse, read_only=True) as con:
        history = monitoring_store.drift_history(con, FIRST, LAST)
    assert [h["date"] for h in history] == DAYS
    assert [h["important_drift_share"] for h in history] == pytest.approx(daily["important_drift_share"].tolist())
    assert history[-1]["drifted_features"] == json.loads(last["drifted_features"])


@pytest.mark.slow
def test_drift_figures_equal_scipy_on_the_reference_rows_and_the_days_rows(monitored):
    paths = monitored.paths
    reference = rows(paths, "select * from marts.flight_features where flight_date between ? and ?",
                     REFERENCE_WINDOW)
    day = dt.date(2013, 2, 25)
    current = features_of(paths, day, day)
    stored = rows(paths, "select * from monitoring.feature_drift where day = ?", [day]).set_index("feature")
    data = json.loads(Path(rows(paths, "select path from monitoring.reference")["path"][0]).read_text())

    # distance has 179 distinct values over the window: its reference is stored exactly.
    assert data["features"]["numeric"]["distance"]["exact"]
    ref, cur = reference["distance"].dropna().to_numpy(), current["distance"].dropna().to_numpy()
    ks = stats.ks_2samp(ref, cur, method="asymp")
    assert stored.loc["distance", "ks_stat"] == pytest.approx(ks.statistic, rel=1e-12)
    assert stored.loc["distance", "ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-9)
    wasserstein = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 1e-3)
    assert stored.loc["distance", "wasserstein_norm"] == pytest.approx(wasserstein, rel=1e-9)
    assert stored.loc["distance", "stattest"] == "wasserstein"
    assert stored.loc["distance", "drift_score"] == pytest.approx(wasserstein, rel=1e-9)
    assert stored.loc["distance", "drifted"] == (wasserstein >= 0.1)
    assert (stored.loc["distance", "n_ref"], stored.loc["distance", "n_cur"]) == (len(ref), len(cur))

    origins = sorted(set(reference["origin"]) | set(current["origin"]))
    ref_counts = reference["origin"].value_counts().reindex(origins, fill_value=0).to_numpy()
    cur_counts = current["origin"].value_counts().reindex(origins, fill_value=0).to_numpy()
    chi2 = stats.chisquare(cur_counts, ref_counts * cur_counts.sum() / ref_counts.sum())
    assert stored.loc["origin", "chi2_pvalue"] == pytest.approx(chi2.pvalue, rel=1e-9, abs=1e-300)
    js = distance.jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    assert stored.loc["origin", "js_distance"] == pytest.approx(js, rel=1e-12)
    assert stored.loc["origin", "stattest"] == "jensenshannon"


@pytest.mark.slow
def test_rerunning_a_day_replaces_its_rows_and_writes_evidentlys_report(monitored):
    paths = monitored.paths
    before = rows(paths, "select * from monitoring.feature_drift where day = ? order by feature", [LAST])
    totals = {t: len(rows(paths, f"select * from monitoring.{t}")) for t in monitoring_store.DAILY_TABLES}

    rerun = monitor(LAST, LAST, evidently="always")

    assert rerun.success
    after = rows(paths, "select * from monitoring.feature_drift where day = ? order by feature", [LAST])
    assert {t: len(rows(paths, f"select * from monitoring.{t}")) for t in monitoring_store.DAILY_TABLES} == totals
    figures = ["feature", "stattest", "drift_score", "drifted", "importance", "ks_stat", "psi", "n_cur"]
    pd.testing.assert_frame_equal(after[figures], before[figures])
    assert (after["computed_at"] > before["computed_at"]).all()

    report = paths.home / "monitoring" / "reports" / "feature_drift" / f"{LAST.isoformat()}.html"
    html = report.read_text()
    assert "window.drawDashboard" in html
    # Evidently's own summary, over every feature that has values on the day.
    current = features_of(paths, LAST, LAST)
    present = [f for f in SPEC.features if current[f].notna().any()]
    summary = re.search(r"Drift is (?:NOT )?detected for [\d.]+% of columns \((\d+) out of (\d+)\)", html)
    assert summary and int(summary.group(2)) == len(present)
    assert all(feature in html for feature in present)
    (stored,) = rows(paths, "select report_path from monitoring.drift_daily where day = ?", [LAST])["report_path"]
    assert stored == str(report)
    meta = metadata(rerun, "monitoring__feature_drift")
    assert meta["evidently_report"] == str(report) and meta["evidently_seconds_per_day"] > 0

    (evaluation,) = rerun.get_asset_check_evaluations()
    assert (evaluation.check_name, evaluation.partition) == (CHECK, LAST.isoformat())


@pytest.mark.slow
def test_a_sharp_shift_on_one_day_fails_important_feature_drift_for_that_day_only(monitored):
    paths = monitored.paths
    first, broken, last = dt.date(2013, 2, 15), dt.date(2013, 2, 16), dt.date(2013, 2, 17)
    # The check holds each feature to its own ordinary-day bar; the days around the broken one
    # set the threshold just above their own level.
    natural = monitor(first, last)
    assert natural.success
    ratios = dict(rows(paths, "select day, calibrated_drift_share from monitoring.drift_daily "
                              "where day between ? and ?", [first, last]).itertuples(index=False))
    threshold = max(0.2, max(ratios.values()) + 0.05)
    steady = rows(paths, "select feature, kind from monitoring.feature_drift where day = ? and not drifted "
                         "and flag is null", [broken])
    assert len(steady) >= 5
    top_numeric = rows(paths, "select feature, kind from monitoring.feature_drift where day = ? and "
                              "kind = 'numeric' and flag is null order by importance desc limit 3", [broken])
    broken_features = pd.concat([steady, top_numeric]).drop_duplicates()

    # The plane and route dimensions and the busiest inputs break for one day: unseen codes,
    # one constant size.
    with connect(paths.warehouse) as con:
        for feature, kind in broken_features.itertuples(index=False):
            value = "ZZZ" if kind == "categorical" else 1e6
            con.execute(f"update marts.flight_features set {ident(feature)} = ? where flight_date = ?",
                        [value, broken])
    shifted = monitor(first, last, threshold=threshold)

    assert shifted.success, "the check warns; it never blocks"
    verdicts = {e.partition: e for e in shifted.get_asset_check_evaluations()}
    assert {day: e.passed for day, e in verdicts.items()} == {
        first.isoformat(): True, broken.isoformat(): False, last.isoformat(): True}
    failed = verdicts[broken.isoformat()]
    assert failed.severity == dg.AssetCheckSeverity.WARN
    now = rows(paths, "select * from monitoring.feature_drift where day = ?", [broken]).set_index("feature")
    assert now.loc[broken_features["feature"], "drifted"].all()
    top = now.loc[broken_features["feature"]].sort_values("importance", ascending=False).index[0]
    assert f"{top} (importance {now.loc[top, 'importance']:.3f}" in failed.description
    (ratio,) = rows(paths, "select calibrated_drift_share from monitoring.drift_daily where day = ?",
                    [broken])["calibrated_drift_share"]
    assert ratio >= threshold and failed.metadata["calibrated_drift_share"].value == ratio
    untouched = rows(paths, "select day, calibrated_drift_share from monitoring.drift_daily "
                            "where day in (?, ?) order by day", [first, last])
    assert untouched["calibrated_drift_share"].tolist() == pytest.approx([ratios[pd.Timestamp(first)],
                                                               ratios[pd.Timestamp(last)]])


# --------------------------------------------------------------------------------------------
# Prediction drift and performance


@pytest.mark.slow
def test_prediction_drift_compares_each_days_primary_scores_with_the_training_scores(monitored):
    paths = monitored.paths
    table = rows(paths, "select * from monitoring.prediction_drift where day between ? and ? order by day",
                 [FIRST, LAST])
    served = rows(paths, "select flight_date, score, tier from serving.predictions where flight_date between ? and ?",
                  [FIRST, LAST])
    (threshold,) = rows(paths, "select threshold from monitoring.reference")["threshold"]
    data = json.loads(Path(rows(paths, "select path from monitoring.reference")["path"][0]).read_text())
    assert [d.date() for d in table["day"]] == DAYS
    for row in table.itertuples():
        today = served.loc[served["flight_date"] == row.day]
        primary = today.loc[today["tier"] == "primary", "score"].to_numpy()
        assert (row.rows, row.primary_rows) == (len(today), len(primary))
        assert json.loads(row.tier_counts) == today["tier"].value_counts().to_dict()
        assert (row.model_version, row.reference_version, row.threshold) == (1, 1, threshold)
        assert row.positive_rate == pytest.approx(np.mean(primary >= threshold), rel=1e-12)
        assert row.mean_score == pytest.approx(primary.mean(), rel=1e-12)
        assert row.mean_confidence == pytest.approx(np.mean(np.abs(primary - 0.5) * 2), rel=1e-12)
        assert row.reference_positive_rate == data["scores"]["positive_rate"]
        assert row.reference_mean_score == data["scores"]["mean"]
        assert row.stattest == "wasserstein" and row.drifted == (row.drift_score >= 0.1)
    meta = metadata(monitored.monitor, "monitoring__prediction_drift")
    assert meta["positive_rate"] == pytest.approx(table["positive_rate"].iloc[-1])
    assert Path(meta["score_distribution_plot"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_performance_per_day_and_over_the_trailing_week_equals_sklearn(monitored):
    paths = monitored.paths
    table = rows(paths, "select * from monitoring.performance where day between ? and ? order by day",
                 [FIRST, LAST])
    joined = rows(paths, "select p.flight_date, p.score, cast(l.is_disrupted as integer) as label "
                         "from serving.predictions p join marts.flight_labels l on l.flight_id = p.flight_id "
                         "where p.flight_date between ? and ?", [FIRST - dt.timedelta(days=6), LAST])
    assert [d.date() for d in table["day"]] == DAYS
    for row in table.itertuples():
        day = row.day.date()
        today = joined.loc[joined["flight_date"] == row.day]
        window = joined.loc[joined["flight_date"].between(pd.Timestamp(day - dt.timedelta(days=6)), row.day)]
        assert (row.rows, row.positives) == (len(today), today["label"].sum())
        assert row.roc_auc == pytest.approx(roc_auc_score(today["label"], today["score"]), rel=1e-12)
        assert (row.trailing_start.date(), row.trailing_end.date()) == (day - dt.timedelta(days=6), day)
        assert row.trailing_rows == len(window) and row.trailing_days_with_data == 7
        assert row.trailing_roc_auc == pytest.approx(roc_auc_score(window["label"], window["score"]), rel=1e-12)
        assert row.trailing_log_loss == pytest.approx(log_loss(window["label"], window["score"]), rel=1e-9)
        assert row.trailing_brier == pytest.approx(brier_score_loss(window["label"], window["score"]), rel=1e-12)
        assert json.loads(row.model_versions) == {f"{PRIMARY} v1": len(today)}

    with connect(paths.warehouse, read_only=True) as con:
        trailing = monitoring_store.trailing_performance(con, LAST)
        monitored_days = monitoring_store.monitored_days(con)
        drift_days = {d for (d,) in con.execute("select day from monitoring.drift_daily").fetchall()}
        performance_days = {d for (d,) in con.execute("select day from monitoring.performance").fetchall()}
        assert monitoring_store.trailing_performance(con, FIRST - dt.timedelta(days=1)) is None
    assert monitored_days == sorted(drift_days & performance_days) and set(DAYS) <= set(monitored_days)
    last = table.iloc[-1]
    assert trailing == {
        "start": (LAST - dt.timedelta(days=6)).isoformat(), "end": LAST.isoformat(),
        "n": last["trailing_rows"], "positives": last["trailing_positives"],
        "roc_auc": last["trailing_roc_auc"], "log_loss": last["trailing_log_loss"], "brier": last["trailing_brier"],
        "positive_rate": last["trailing_positive_rate"], "mean_predicted": last["trailing_mean_predicted"],
        "days_with_data": 7,
    }
    meta = metadata(monitored.monitor, "monitoring__performance")
    assert meta["trailing_roc_auc"] == pytest.approx(last["trailing_roc_auc"])
    assert Path(meta["performance_plot"]).read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# Wiring and the store, without a model


def test_the_monitoring_assets_are_wired_as_the_trigger_and_the_automation_expect():
    from definitions import defs

    from assets.partitions import daily_partitions

    graph = defs.resolve_asset_graph()
    key = lambda name: dg.AssetKey(["monitoring", name])  # noqa: E731
    assert graph.get(key("reference")).parent_keys == {dg.AssetKey(["models", "champion"])}
    assert graph.get(key("reference")).partitions_def is None
    assert graph.get(key("feature_drift")).parent_keys == {dg.AssetKey(["marts", "flight_features"]), key("reference")}
    assert graph.get(key("prediction_drift")).parent_keys == {dg.AssetKey(["models", "predictions"]), key("reference")}
    assert graph.get(key("performance")).parent_keys == {
        dg.AssetKey(["models", "predictions"]), dg.AssetKey(["marts", "flight_labels"])}
    for name in ("feature_drift", "prediction_drift", "performance"):
        node = graph.get(key(name))
        assert node.partitions_def == daily_partitions and node.group_name == "monitoring"
        assert node.automation_condition.get_label() == "daily_refresh"
    check = graph.get_check_spec(dg.AssetCheckKey(key("feature_drift"), CHECK))
    assert not check.blocking and check.partitions_def == daily_partitions
    job = defs.resolve_job_def("monitor_daily")
    assert set(job.asset_layer.selected_asset_keys) == {key("feature_drift"), key("prediction_drift"), key("performance")}
    assert job.partitions_def == daily_partitions


def test_replacing_days_is_one_transaction_and_readers_create_nothing(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    day = dt.date(2013, 3, 1)
    summary = {"day": day, "model_name": "m", "model_version": 1, "rows": 10, "n_features": 2, "n_drifted": 1,
               "share_drifted": 0.5, "important_drift_share": 0.8, "dataset_drifted": True,
               "drifted_features": json.dumps(["a"]), "flagged_features": "{}"}
    with connect(path) as con:
        assert monitoring_store.drift_history(con, day, day) == [] and monitoring_store.monitored_days(con) == []
        assert not con.execute("select * from information_schema.schemata where schema_name = 'monitoring'").fetchall()
        monitoring_store.replace_days(con, {"drift_daily": pd.DataFrame([summary])}, [day])
        with pytest.raises(ValueError, match="unknown columns"):
            monitoring_store.replace_days(con, {
                "drift_daily": pd.DataFrame([{**summary, "important_drift_share": 0.1}]),
                "performance": pd.DataFrame([{"day": day, "no_such_column": 1}]),
            }, [day])
        (record,) = monitoring_store.drift_history(con, day, day)
        assert record["important_drift_share"] == 0.8, "the failed replacement left the day as it was"
        monitoring_store.replace_days(con, {"drift_daily": pd.DataFrame([{**summary, "rows": 11}])}, [day])
        assert con.execute("select count(*), max(rows) from monitoring.drift_daily").fetchone() == (1, 11)
        with pytest.raises(ValueError, match="outside the days replaced"):
            monitoring_store.replace_days(con, {"drift_daily": pd.DataFrame([summary])}, [day + dt.timedelta(days=1)])
