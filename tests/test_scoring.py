"""Tiered batch scoring with real models on synthetic flights, and the predictions table."""

from __future__ import annotations

import dataclasses
import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest
from synthetic import SPEC, synthetic_flights

from keel.ml import modeling
from keel.ml.split import Split, time_split
from keel.ml.datasets import corrupt_labels, split_weeks
from keel.ml.predictions import prediction_columns, write_predictions
from keel.ml.scoring import Tier, load_tiers, score_days

SCORED_AT = dt.datetime(2013, 5, 1, 6, 0)


@pytest.fixture(scope="module")
def split() -> Split:
    return time_split(synthetic_flights(days=60, per_day=80), SPEC, valid_weeks=2, test_weeks=2)


@pytest.fixture(scope="module")
def models(split) -> dict[str, modeling.TrainedModel]:
    return {
        "primary": modeling.train_primary(split, SPEC, search_trials=1),
        "fallback": modeling.train_fallback(split, SPEC),
        "baseline": modeling.train_baseline(split, SPEC),
    }


def tiers(models, **broken) -> list[Tier]:
    return [
        Tier(kind, f"m_{kind}", version=i + 1, model=None if kind in broken else models[kind], error=broken.get(kind))
        for i, kind in enumerate(("primary", "fallback", "baseline"))
    ]


def days_of(frame: pd.DataFrame) -> list[dt.date]:
    return sorted(set(frame["flight_date"]))


def test_the_champion_scores_every_day_when_it_works(split, models):
    frame = split.test
    result = score_days(frame, "flight_id", "flight_date", days_of(frame), tiers(models), SCORED_AT)
    assert list(result.predictions.columns) == ["flight_id", "flight_date", "score", "tier", "model_name",
                                               "model_version", "scored_at"]
    assert list(result.predictions.columns) == list(prediction_columns(SPEC.key, SPEC.date_column))
    assert len(result.predictions) == len(frame)
    assert set(result.predictions["tier"]) == {"primary"} and set(result.predictions["model_version"]) == {1}
    expected = models["primary"].predict(frame)
    scored = result.predictions.set_index("flight_id").loc[frame["flight_id"], "score"].to_numpy()
    np.testing.assert_array_equal(scored, expected)
    assert result.rows_per_tier() == {"primary": len(frame), "fallback": 0, "baseline": 0}
    assert result.failures == []


def test_a_primary_that_did_not_load_hands_every_day_to_the_fallback(split, models):
    frame = split.test
    result = score_days(frame, "flight_id", "flight_date", days_of(frame),
                        tiers(models, primary="ValueError: sha256 does not match model.json"), SCORED_AT)
    assert result.rows_per_tier() == {"primary": 0, "fallback": len(frame), "baseline": 0}
    assert set(result.predictions["model_name"]) == {"m_fallback"}


def test_a_day_the_primary_fails_on_goes_to_the_fallback_alone(split, models):
    frame = split.test.copy()
    days = days_of(frame)
    # One day's weather arrives as text: the primary cannot read it, the fallback does not use it.
    frame["weather_wind_speed"] = frame["weather_wind_speed"].astype(object)
    frame.loc[frame["flight_date"] == days[3], "weather_wind_speed"] = "calm"
    result = score_days(frame, "flight_id", "flight_date", days, tiers(models), SCORED_AT)
    per_day = result.rows_per_day
    assert per_day[days[3]]["fallback"] == (frame["flight_date"] == days[3]).sum()
    assert per_day[days[3]]["primary"] == 0
    assert all(per_day[d]["primary"] > 0 and per_day[d]["fallback"] == 0 for d in days if d != days[3])
    assert len(result.failures) == 1 and result.failures[0].startswith(f"{days[3]} primary v1: ValueError")
    assert result.days_not_on_primary() == [str(days[3])]


def test_scoring_fails_loudly_when_no_tier_can_score(split, models):
    frame = split.test.drop(columns=["route_disruption_rate_28d"])
    with pytest.raises(RuntimeError, match=r"no tier could score \d+ day\(s\)"):
        score_days(frame, "flight_id", "flight_date", days_of(frame),
                   tiers(models, primary="not loaded"), SCORED_AT)


def test_load_tiers_keeps_each_load_error(models):
    def load(name):
        if name == "m_primary":
            raise LookupError("registered model 'm_primary' has no alias 'champion'")
        return 4, models[name.removeprefix("m_")]

    loaded = load_tiers({k: f"m_{k}" for k in ("primary", "fallback", "baseline")}, load)
    assert [(t.name, t.version, t.error) for t in loaded] == [
        ("primary", None, "LookupError: registered model 'm_primary' has no alias 'champion'"),
        ("fallback", 4, None),
        ("baseline", 4, None),
    ]


def test_writing_a_range_replaces_exactly_its_days(split, models, tmp_path):
    frame = split.test
    days = days_of(frame)
    first = score_days(frame, "flight_id", "flight_date", days, tiers(models), SCORED_AT)
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        write_predictions(con, SPEC, first.predictions, days)
        rescored = score_days(frame[frame["flight_date"] == days[0]], "flight_id", "flight_date", days[:1],
                              tiers(models, primary="gone"), SCORED_AT)
        write_predictions(con, SPEC, rescored.predictions, days[:1])
        rows = dict(con.execute(
            "select tier, count(*) from serving.predictions group by tier").fetchall())
        (total,) = con.execute("select count(*) from serving.predictions").fetchone()
    on_day = int((frame["flight_date"] == days[0]).sum())
    assert total == len(frame)
    assert rows == {"fallback": on_day, "primary": len(frame) - on_day}


def test_the_predictions_table_is_keyed_by_the_model_specs_key_and_date(split, models, tmp_path):
    spec = dataclasses.replace(SPEC, key="order_id", date_column="order_date")
    frame = split.test.rename(columns={"flight_id": "order_id", "flight_date": "order_date"})
    days = sorted(set(frame["order_date"]))[:3]
    frame = frame[frame["order_date"].isin(days)]
    # The models read features only: the renamed key and date are the table's business.
    result = score_days(frame, spec.key, spec.date_column, days, tiers(models), SCORED_AT)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        write_predictions(con, spec, result.predictions, days)
        columns = [name for name, *_ in con.execute("describe serving.predictions").fetchall()]
        stored = con.execute("select order_id, order_date from serving.predictions order by all").fetchall()
    assert columns == ["order_id", "order_date", "score", "tier", "model_name", "model_version", "scored_at"]
    assert stored == sorted(zip(frame["order_id"].astype(str), frame["order_date"]))


def test_split_weeks_keep_half_the_window_for_training():
    assert split_weeks(364) == 4
    assert split_weeks(59) == 2
    assert split_weeks(30) == 1
    assert split_weeks(27) is None and split_weeks(4) is None


@pytest.mark.parametrize("mode", ["shuffle", "invert"])
def test_corrupted_labels_touch_training_and_validation_never_the_test(split, mode):
    corrupted = corrupt_labels(split, SPEC, mode)
    pd.testing.assert_frame_equal(corrupted.test, split.test)
    assert not corrupted.train["disrupted"].equals(split.train["disrupted"])
    if mode == "invert":
        assert (corrupted.valid["disrupted"] == 1 - split.valid["disrupted"]).all()
        assert corrupted.positives["train"] == split.rows["train"] - split.positives["train"]
    else:
        assert corrupted.positives == split.positives  # the same labels, in another order
    assert corrupt_labels(split, SPEC, "none") is split


# -- a rollout's candidate in batch (serving.shadow_predictions) -------------------------------


def test_the_candidates_batch_scores_sit_beside_the_champions_with_the_apis_arms(split, models, tmp_path):
    import hashlib

    from keel.ml.predictions import write_shadow_predictions
    from keel.ml.scoring import shadow_scores

    frame = split.test
    days = days_of(frame)
    champion = score_days(frame, "flight_id", "flight_date", days, tiers(models), SCORED_AT)
    # The candidate's primary does not load: its fallback answers, as the API's chain would.
    candidate = tiers(models, primary="not loaded")
    rows, failures = shadow_scores(frame, "flight_id", "flight_date", days, candidate, champion.predictions,
                                   rollout_id="0123456789ab", stage="canary", share=0.25, scored_at=SCORED_AT)
    assert failures == [] and len(rows) == len(frame)
    by_key = rows.set_index("flight_id")
    expected = models["fallback"].predict(frame)
    np.testing.assert_array_equal(by_key.loc[frame["flight_id"], "score"].to_numpy(), expected)
    np.testing.assert_array_equal(by_key.loc[frame["flight_id"], "champion_score"].to_numpy(),
                                  models["primary"].predict(frame))

    def arm(key: str) -> str:
        u = int.from_bytes(hashlib.sha256(f"0123456789ab\x1f{key}".encode()).digest()[:8], "big") / 2**64
        return "canary" if u < 0.25 else "champion"

    assert list(rows["arm"]) == [arm(str(k)) for k in rows["flight_id"]]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        write_shadow_predictions(con, SPEC, rows, days, "0123456789ab")
        write_shadow_predictions(con, SPEC, rows, days, "0123456789ab")  # a rerun replaces its rows
        stored = con.execute("select arm, count(*) from serving.shadow_predictions group by arm").fetchall()
    assert dict(stored) == rows["arm"].value_counts().to_dict()


def test_a_candidate_that_cannot_score_is_reported_and_never_fails_the_champions_run(split, models):
    from keel.ml.scoring import shadow_scores

    frame = split.test
    days = days_of(frame)
    champion = score_days(frame, "flight_id", "flight_date", days, tiers(models), SCORED_AT)
    nothing = tiers(models, primary="gone", fallback="gone", baseline="gone")
    rows, failures = shadow_scores(frame, "flight_id", "flight_date", days, nothing, champion.predictions,
                                   rollout_id="0123456789ab", stage="shadow", share=0.0, scored_at=SCORED_AT)
    assert rows.empty and len(failures) == 1 and "no tier could score" in failures[0]

