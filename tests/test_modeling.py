"""Time split, categorical codes, the three models, their artifacts and the training-set hash.

The data is synthetic but shaped like the flight features: 120 days, a few numeric features
with missing values, two categoricals and a label whose rate drifts with the season. The
models are real LightGBM models.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from synthetic import CARRIERS, FIRST_DAY, SPEC, synthetic_flights

from keel.ml import modeling
from keel.ml.encoding import CategoryEncoder
from keel.ml.split import Split, time_split, training_set_hash

@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return synthetic_flights()


@pytest.fixture(scope="module")
def split(flights) -> Split:
    return time_split(flights, SPEC)


@pytest.fixture(scope="module")
def primary(split) -> modeling.TrainedModel:
    return modeling.train_primary(split, SPEC, search_trials=4)


@pytest.fixture(scope="module")
def fallback(split) -> modeling.TrainedModel:
    return modeling.train_fallback(split, SPEC)


@pytest.fixture(scope="module")
def baseline(split) -> modeling.TrainedModel:
    return modeling.train_baseline(split, SPEC)


# --- time split ------------------------------------------------------------------------------


def test_time_split_cuts_four_test_weeks_after_four_validation_weeks(flights, split):
    last = FIRST_DAY + dt.timedelta(days=119)
    assert split.windows["test"] == (last - dt.timedelta(days=27), last)
    assert split.windows["valid"] == (last - dt.timedelta(days=55), last - dt.timedelta(days=28))
    assert split.windows["train"] == (FIRST_DAY, last - dt.timedelta(days=56))
    assert split.rows == {"train": 64 * 150, "valid": 28 * 150, "test": 28 * 150}
    assert sum(split.rows.values()) == len(flights)
    for part in ("train", "valid", "test"):
        frame = getattr(split, part)
        start, end = split.windows[part]
        assert frame["flight_date"].min() == start and frame["flight_date"].max() == end
        assert split.positives[part] == frame["disrupted"].sum()
    assert split.windows["train"][1] < split.windows["valid"][0]
    assert split.windows["valid"][1] < split.windows["test"][0]
    assert set(split.train["flight_id"]).isdisjoint(split.valid["flight_id"])
    assert set(split.valid["flight_id"]).isdisjoint(split.test["flight_id"])
    assert split.summary()["valid"] == {
        "start": "2013-03-06", "end": "2013-04-02", "rows": 4200, "positives": split.positives["valid"],
    }


def test_time_split_ignores_row_order_and_date_type(flights, split):
    shuffled = flights.sample(frac=1.0, random_state=3)
    shuffled["flight_date"] = pd.to_datetime(shuffled["flight_date"])
    again = time_split(shuffled, SPEC)
    assert again.windows == split.windows
    for part in ("train", "valid", "test"):
        assert getattr(again, part)["flight_id"].tolist() == getattr(split, part)["flight_id"].tolist()


def test_time_split_names_the_empty_part(flights):
    seven_weeks = flights[flights["flight_date"] < FIRST_DAY + dt.timedelta(days=49)]
    with pytest.raises(ValueError, match=r"the train part \(before 2012-12-25\) is empty"):
        time_split(seven_weeks, SPEC)


def test_time_split_rejects_duplicate_keys(flights):
    with pytest.raises(ValueError, match="flight_id is not unique"):
        time_split(pd.concat([flights, flights.head(2)]), SPEC)


# --- categorical codes -----------------------------------------------------------------------


def test_encoder_codes_sorted_values_and_scores_unseen_as_minus_one_missing_as_nan():
    train = pd.DataFrame({"carrier": ["UA", "AA", None, "DL", "AA"], "hour": [7, 9, 7, 22, 9]})
    encoder = CategoryEncoder.fit(train, ["carrier", "hour"])
    assert encoder.columns == {
        "carrier": {"kind": "string", "values": ["AA", "DL", "UA"]},
        "hour": {"kind": "number", "values": [7, 9, 22]},
    }
    scoring = pd.DataFrame({"carrier": ["DL", "ZZ", np.nan, "AA"], "hour": [22.0, 8.0, np.nan, 7.0]})
    codes = encoder.transform(scoring)
    np.testing.assert_array_equal(codes["carrier"], [1, -1, np.nan, 0])
    np.testing.assert_array_equal(codes["hour"], [2, -1, np.nan, 0])
    assert [encoder.code("carrier", v) for v in ("DL", "ZZ", "AA")] == [1.0, -1.0, 0.0]
    assert np.isnan(encoder.code("carrier", None)) and np.isnan(encoder.code("carrier", pd.NA))


def test_encoder_round_trips_through_json_and_accepts_category_dtype(split):
    encoder = CategoryEncoder.fit(split.train, SPEC.categorical)
    restored = CategoryEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    as_category = split.test.astype({"carrier": "category", "origin": "category"})
    for column in SPEC.categorical:
        np.testing.assert_array_equal(restored.transform(split.test)[column], encoder.transform(split.test)[column])
        np.testing.assert_array_equal(encoder.transform(as_category)[column], encoder.transform(split.test)[column])
    assert restored.columns["carrier"]["values"] == CARRIERS


# --- training --------------------------------------------------------------------------------


def test_primary_search_keeps_the_trial_with_the_lowest_validation_log_loss(primary, split):
    assert [t["trial"] for t in primary.trials] == [0, 1, 2, 3]
    assert primary.trials[0]["params"] == modeling.DEFAULT_PRIMARY_PARAMS
    assert len({json.dumps(t["params"], sort_keys=True) for t in primary.trials}) == 4
    best = min(primary.trials, key=lambda t: t["valid_log_loss"])
    assert {k: primary.params[k] for k in best["params"]} == best["params"]
    assert primary.best_iteration == best["best_iteration"] == primary.booster.num_trees()
    assert primary.params["deterministic"] is True and primary.params["num_threads"] == 1
    assert primary.params["seed"] == 13
    assert primary.valid_pred.shape == (split.rows["valid"],)
    np.testing.assert_array_equal(primary.test_pred, primary.predict(split.test))
    # better than the base rate on the later, drifted test weeks
    y = split.test["disrupted"].to_numpy()
    base_rate = np.full(len(y), split.train["disrupted"].mean())
    assert _log_loss(y, primary.test_pred) < _log_loss(y, base_rate)


def test_training_twice_gives_the_same_model_to_the_bit_whatever_the_row_order(flights, primary):
    shuffled = flights.sample(frac=1.0, random_state=11).reset_index(drop=True)
    again = modeling.train_primary(time_split(shuffled, SPEC), SPEC, search_trials=4)
    assert again.booster.model_to_string() == primary.booster.model_to_string()
    assert again.test_pred.tobytes() == primary.test_pred.tobytes()
    assert again.trials == primary.trials


def test_recorded_params_reproduce_the_searched_model(split, primary):
    # What `keel reproduce` does: retrain with the parameters recorded with the model.
    recorded = json.loads(json.dumps(primary.params))
    reproduced = modeling.train_primary(split, SPEC, params=recorded, seed=recorded["seed"])
    assert len(reproduced.trials) == 1
    assert reproduced.params == primary.params
    assert reproduced.booster.model_to_string() == primary.booster.model_to_string()
    assert reproduced.test_pred.tobytes() == primary.test_pred.tobytes()


def test_fallback_uses_only_the_fallback_features(fallback, split):
    assert fallback.kind == "fallback"
    assert fallback.booster.feature_name() == list(SPEC.fallback_features)
    assert fallback.categorical == ("origin",)
    assert 1 <= fallback.booster.num_trees() <= modeling.FALLBACK_MAX_ROUNDS
    assert fallback.params["num_leaves"] == 31
    np.testing.assert_array_equal(fallback.predict(split.test), fallback.test_pred)


def test_baseline_predicts_the_route_rate_clipped_and_fills_missing_with_the_train_rate(split, baseline):
    frame = pd.DataFrame({"route_disruption_rate_28d": [0.25, np.nan, 0.0, 1.0]})
    expected = [0.25, split.train["disrupted"].mean(), 1e-4, 1 - 1e-4]
    np.testing.assert_allclose(baseline.predict(frame), expected, rtol=0, atol=1e-15)
    assert baseline.baseline.fill_value == split.positives["train"] / split.rows["train"]


def test_unseen_category_is_scored_like_a_missing_one(primary, split):
    rows = split.test.head(50).copy()
    unseen, missing = rows.assign(carrier="ZZ"), rows.assign(carrier=None)
    np.testing.assert_array_equal(primary.predict(unseen), primary.predict(missing))
    assert not np.array_equal(primary.predict(unseen), primary.predict(rows))


def test_row_matrix_from_a_record_equals_the_frame_path(primary, split):
    records = split.test[list(primary.features)].head(20).to_dict("records")
    records[0]["carrier"] = "ZZ"
    records[1]["weather_wind_speed"] = None
    frame = pd.DataFrame(records)
    from_records = np.vstack([primary.row_matrix(r) for r in records])
    np.testing.assert_array_equal(from_records, primary.matrix(frame))
    np.testing.assert_array_equal(primary.predict_matrix(from_records), primary.predict(frame))


def test_a_feature_with_text_values_must_be_declared_categorical(split):
    spec = dataclasses.replace(SPEC, categorical=("origin",), fallback_features=("carrier",))
    with pytest.raises(ValueError, match="feature carrier has dtype object but is not in spec.categorical"):
        modeling.train_fallback(split, spec)


# --- artifacts -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["primary", "fallback", "baseline"])
def test_artifacts_round_trip_to_identical_predictions(kind, request, split, tmp_path):
    model = request.getfixturevalue(kind)
    written = model.to_artifacts(tmp_path)
    names = sorted(p.name for p in written)
    manifest = json.loads((tmp_path / "model.json").read_text())
    assert manifest["kind"] == kind and manifest["features"] == list(model.features)
    if kind == "baseline":
        assert names == ["encoder.json", "model.json"]
    else:
        assert names == ["encoder.json", "model.json", "model.txt"]
        assert (tmp_path / "model.txt").read_text().startswith("tree\n")
        assert manifest["best_iteration"] == model.best_iteration
        assert lgb.Booster(model_file=str(tmp_path / "model.txt")).num_trees() == model.best_iteration
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    loaded = modeling.load_artifacts(tmp_path)
    assert loaded.predict(split.test).tobytes() == model.predict(split.test).tobytes()
    assert loaded.params == model.params and loaded.encoder.columns == model.encoder.columns


def test_loading_refuses_a_model_file_that_does_not_match_its_manifest(fallback, tmp_path):
    fallback.to_artifacts(tmp_path)
    text = (tmp_path / "model.txt").read_text()
    (tmp_path / "model.txt").write_text(text.replace("num_leaves=", "num_leaves= ", 1))
    with pytest.raises(ValueError, match="does not match model.json"):
        modeling.load_artifacts(tmp_path)


# --- training-set hash -----------------------------------------------------------------------


def test_training_set_hash_ignores_row_order_column_order_and_int_or_float(split):
    reference = training_set_hash(split.train, SPEC)
    shuffled = split.train.sample(frac=1.0, random_state=5)[list(reversed(split.train.columns))]
    assert training_set_hash(shuffled, SPEC) == reference
    as_float = split.train.astype({"sched_dep_hour": "float64", "disrupted": "float64"})
    assert training_set_hash(as_float, SPEC) == reference
    as_timestamps = split.train.assign(flight_date=pd.to_datetime(split.train["flight_date"]))
    assert training_set_hash(as_timestamps, SPEC) == reference


def test_training_set_hash_changes_with_one_label_or_one_row(split):
    reference = training_set_hash(split.train, SPEC)
    flipped = split.train.copy()
    flipped.loc[17, "disrupted"] = 1 - flipped.loc[17, "disrupted"]
    assert training_set_hash(flipped, SPEC) != reference
    assert training_set_hash(split.train.iloc[1:], SPEC) != reference
    renamed = split.train.copy()
    renamed.loc[3, "carrier"] = renamed.loc[3, "carrier"] + " "
    assert training_set_hash(renamed, SPEC) != reference


def test_training_set_hash_is_stable_across_runs_and_versions():
    # Pinned: a change of this value orphans every recorded training-set hash.
    frame = pd.DataFrame({
        "flight_id": [3, 1, 2],
        "flight_date": [dt.date(2013, 1, 2), dt.date(2013, 1, 1), dt.date(2013, 1, 1)],
        "sched_dep_hour": [7, 9, 22],
        "distance": [1400.0, np.nan, -0.0],
        "weather_wind_speed": [3.5, 0.0, np.nan],
        "weather_visib": [10.0, 10.0, 2.5],
        "route_disruption_rate_28d": [0.1, 0.25, np.nan],
        "carrier": ["UA", None, "B6"],
        "origin": ["EWR", "JFK", "LGA"],
        "disrupted": [0, 1, 0],
    })
    assert training_set_hash(frame, SPEC) == PINNED_HASH


PINNED_HASH = "58e936a60f5396b961555db6a1224e3e56f472198ddc24c3ef292ea079cf6ac7"


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
