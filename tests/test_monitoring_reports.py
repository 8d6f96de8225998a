"""What the monitoring assets hand their data to, tested without Dagster: the served rows
read back from a real DuckDB file, the monitoring tables' rows, the drift check's verdict and
the reference's importance, each against figures counted here independently."""

import dataclasses
import datetime as dt
import json

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from keel.core.spec import ModelSpec
from keel.ml.predictions import labelled_predictions, served_predictions, write_predictions
from keel.monitoring import store
from keel.monitoring.daily import build_reference, drift_baseline, performance, prediction_drift
from keel.monitoring.reference import model_inputs, normalised_importance, reference_paths
from keel.monitoring.reports import (
    daily_feature_drift,
    drift_check_message,
    drift_tables,
    evidently_days,
    most_important_only,
    performance_rows,
    prediction_drift_fields,
    served_day,
    serving_model,
)

SPEC = ModelSpec(
    features_relation="marts.order_features", labels_relation="marts.order_labels", key="order_id",
    date_column="order_date", label="returned", features=("basket", "hour", "channel"),
    categorical=("channel",), fallback_features=("basket",), baseline_feature="basket", slices=("channel",),
)
DAYS = [dt.date(2024, 5, 1) + dt.timedelta(days=i) for i in range(4)]
COMPUTED_AT = dt.datetime(2024, 5, 5, 6, 0)


def orders(seed: int, rows: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "basket": np.round(rng.gamma(2.0, 20.0 + shift, rows), 2),
        "hour": rng.integers(0, 24, rows).astype(float),
        "channel": rng.choice(["web", "app", "store"], rows),
    })


@pytest.fixture(scope="module")
def reference():
    training = orders(1, 3_000)
    numeric, categorical = model_inputs(SPEC)
    data = build_reference(training, numeric, categorical,
                           scores=np.random.default_rng(2).beta(2, 5, 3_000), threshold=0.3)
    ordinary = pd.concat([orders(100 + i, 300).assign(order_date=DAYS[0] - dt.timedelta(days=10 - i))
                          for i in range(6)], ignore_index=True)
    data["drift_baseline"] = drift_baseline(build_reference(training, numeric, categorical, scores=None),
                                            ordinary, "order_date")
    return data


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Four days of served orders (the last one on the fallback tier) and labels for three."""
    rng = np.random.default_rng(7)
    rows = []
    for i, day in enumerate(DAYS):
        for n in range(50):
            rows.append({"order_id": f"o{i}-{n}", "order_date": day, "score": float(rng.uniform()),
                         "tier": "fallback" if i == 3 else "primary", "model_name": "orders_primary",
                         "model_version": 2 if n < 30 else 1, "scored_at": COMPUTED_AT})
    frame = pd.DataFrame(rows)
    labels = frame.loc[frame["order_date"] < DAYS[3], ["order_id"]].assign(
        returned=rng.integers(0, 2, int((frame["order_date"] < DAYS[3]).sum())))
    path = tmp_path_factory.mktemp("served") / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        write_predictions(con, SPEC, frame, DAYS)
        con.execute("create schema marts")
        con.register("labels_frame", labels)
        con.execute("create table marts.order_labels as select * from labels_frame")
    return path, frame, labels


def test_served_rows_come_back_in_day_and_key_order_under_the_specs_names(served):
    path, frame, _ = served
    with duckdb.connect(str(path)) as con:
        got = served_predictions(con, SPEC, DAYS[1], DAYS[2])
    expected = frame[frame["order_date"].between(DAYS[1], DAYS[2])].sort_values(["order_date", "order_id"])
    assert list(got.columns) == ["day", "score", "tier", "model_name", "model_version"]
    assert got["score"].tolist() == expected["score"].tolist()
    assert len(got) == 100


def test_labelled_predictions_leave_out_the_rows_without_a_label(served):
    path, frame, labels = served
    with duckdb.connect(str(path)) as con:
        got = labelled_predictions(con, SPEC, DAYS[0], DAYS[3])
    joined = frame.merge(labels, on="order_id").sort_values(["order_date", "order_id"])
    assert len(got) == 150 and got["label"].tolist() == joined["returned"].tolist()


def test_a_days_prediction_drift_row_counts_its_tiers_and_takes_the_version_that_served_most(served, reference):
    _, frame, _ = served
    today = frame[frame["order_date"] == DAYS[0]]
    row, primary = served_day(DAYS[0], today, COMPUTED_AT)
    assert row == {"day": DAYS[0], "rows": 50, "primary_rows": 50, "tier_counts": json.dumps({"primary": 50}),
                   "computed_at": COMPUTED_AT}
    name, version, scores = serving_model(primary)
    assert (name, version) == ("orders_primary", 2)
    assert scores.tolist() == today.loc[today["model_version"] == 2, "score"].tolist()
    result = prediction_drift(reference, scores.to_numpy())
    fields = prediction_drift_fields(result)
    assert set(fields) == set(store.COLUMNS["prediction_drift"]) - {
        "day", "rows", "primary_rows", "tier_counts", "computed_at", "model_name", "model_version",
        "reference_version"}
    assert fields["positive_rate"] == pytest.approx(float(np.mean(scores.to_numpy() >= 0.3)))
    fallback_row, fallback_primary = served_day(DAYS[3], frame[frame["order_date"] == DAYS[3]], COMPUTED_AT)
    assert fallback_primary.empty and json.loads(fallback_row["tier_counts"]) == {"fallback": 50}


def test_performance_rows_cover_only_the_days_asked_and_pool_the_trailing_window(served):
    path, _, _ = served
    with duckdb.connect(str(path)) as con:
        frame = labelled_predictions(con, SPEC, DAYS[0], DAYS[3])
    rows = performance_rows(frame, DAYS[1:], COMPUTED_AT, window_days=2)
    assert [row["day"] for row in rows] == DAYS[1:3]  # the last day has no labels
    expected = performance(frame["label"], frame["score"], frame["day"], window_days=2)["days"]
    assert rows[1]["trailing_rows"] == 100 and rows[1]["trailing_roc_auc"] == expected[2]["trailing"]["roc_auc"]
    assert json.loads(rows[0]["model_versions"]) == {"orders_primary v1": 20, "orders_primary v2": 30}
    assert set(rows[0]) == set(store.COLUMNS["performance"])
    assert performance_rows(frame.iloc[:0], DAYS, COMPUTED_AT) == []


def test_drift_of_each_day_becomes_one_row_per_feature_and_one_daily_row(reference):
    frame = pd.concat([orders(10 + i, 200, shift=30.0 * (i == 2)).assign(order_date=day)
                       for i, day in enumerate(DAYS[:3])], ignore_index=True)
    days = pd.Series(frame["order_date"])
    results = daily_feature_drift(reference, {"basket": 3.0, "hour": 1.0, "channel": 1.0},
                                  frame[list(SPEC.features)], days, DAYS)
    assert list(results) == DAYS[:3]  # the fourth day has no rows
    tables = drift_tables(results, "orders_primary", 2, COMPUTED_AT, {DAYS[2]: reference_paths(
        "/srv/keel/monitoring", "orders_primary", 2)[0]})
    assert len(tables["feature_drift"]) == 3 * len(SPEC.features)
    assert set(tables["feature_drift"].columns) == set(store.COLUMNS["feature_drift"])
    assert set(tables["drift_daily"].columns) == set(store.COLUMNS["drift_daily"])
    assert tables["drift_daily"]["report_path"].tolist() == [
        None, None, "/srv/keel/monitoring/reference/orders_primary-v2.json"]
    shifted = results[DAYS[2]]
    assert "basket" in shifted["drifted_features"]
    assert evidently_days(results, "always", 0.2) == DAYS[:3]
    assert evidently_days(results, "never", 0.2) == []
    assert evidently_days(results, "drifted", 0.2) == [d for d, r in results.items()
                                                       if r["calibrated_drift_share"] >= 0.2]
    trimmed = most_important_only([{"date": "2024-05-03", "features": shifted["features"]}], shifted, 1)
    assert list(trimmed[0]["features"]) == ["basket"]


@pytest.mark.parametrize("share, passed, relation", [(0.05, True, "<"), (0.2, False, ">="), (0.6, False, ">=")])
def test_the_drift_check_passes_under_its_threshold_and_names_the_features_beyond_their_bar(share, passed, relation):
    beyond = [{"feature": f"f{i}", "importance": share / 10, "score": 4.0, "bar": 2.0} for i in range(10)]
    result = {"calibrated_drift_share": share, "calibrated_drifted_features": beyond, "n_drifted": 12,
              "n_features": 40, "important_drift_share": 0.5, "flagged_features": {"gust": "no_current_values"}}
    ok, message = drift_check_message(DAYS[0], result, 0.2)
    assert ok is passed
    assert message.startswith(f"2024-05-01: importance beyond the ordinary-day bars {share:.3f} {relation} 0.20")
    assert "f7 (importance" in message and "f8 (" not in message and "and 2 more" in message
    assert message.endswith("no current values: gust")


def test_importance_is_the_boosters_gain_as_shares_of_the_models_inputs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 3))
    booster = lgb.train({"objective": "binary", "verbosity": -1, "seed": 1}, lgb.Dataset(
        x, label=(x[:, 0] + 0.2 * x[:, 1] > 0).astype(float), feature_name=["basket", "hour", "noise"]),
        num_boost_round=10)
    gain = dict(zip(booster.feature_name(), booster.feature_importance(importance_type="gain")))
    shares = normalised_importance(booster, ["basket", "hour"])
    assert shares == pytest.approx({"basket": gain["basket"] / (gain["basket"] + gain["hour"]),
                                    "hour": gain["hour"] / (gain["basket"] + gain["hour"])})
    with pytest.raises(ValueError, match="no feature"):
        normalised_importance(booster, ["basket", "weather"])


def test_the_models_inputs_split_as_the_reference_profiles_them():
    assert model_inputs(SPEC) == (["basket", "hour"], ["channel"])
    reordered = dataclasses.replace(SPEC, features=("channel", "basket"))
    assert model_inputs(reordered) == (["basket"], ["channel"])
