"""The framework's online-feature machinery, on a use case of its own (sensor readings)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from keel.ml.online import (
    MISMATCH_FIELDS,
    DenseTimeSeries,
    OnlineStore,
    compare_feature_rows,
    dense_series_by,
    sample_rows,
    skew_days,
    skew_sample,
)


def test_a_dense_series_answers_its_buckets_and_none_off_the_grid():
    series = DenseTimeSeries(np.array([120, 60, 240]), np.array([[2.0], [1.0], [4.0]]), step=60, fill=np.nan)
    assert series.row(60)[0] == 1.0 and series.row(120)[0] == 2.0 and series.row(240)[0] == 4.0
    assert np.isnan(series.row(180)[0])  # inside the range, no row: the fill
    assert series.row(90) is None and series.row(0) is None and series.row(300) is None


def test_dense_series_by_splits_by_entity_and_turns_nulls_into_nan():
    data = {"sensor": np.array(["a", "b", "a"], dtype=object), "bucket": np.array([0, 5, 1]),
            "temp": np.ma.masked_array([1.5, 2.5, 0.0], mask=[False, False, True])}
    by_sensor = dense_series_by(data, "sensor", ("temp",), step=1, dtype=np.float64, fill=np.nan)
    assert sorted(by_sensor) == ["a", "b"]
    assert by_sensor["a"].row(0)[0] == 1.5 and np.isnan(by_sensor["a"].row(1)[0])
    assert by_sensor["b"].row(5)[0] == 2.5 and by_sensor["b"].row(4) is None


def test_compare_feature_rows_reports_each_kind_of_difference():
    mart = pd.DataFrame({"reading_id": ["r1", "r2", "r3"], "temp": [1.0, np.nan, 3.0],
                         "site": ["x", "y", "z"], "count": np.array([1, 2, 3], dtype="int32")})
    online = pd.DataFrame({"reading_id": ["r1", "r2", "r4"], "temp": [1.0 + 1e-12, np.nan, 9.0],
                           "site": ["x", "q", "z"], "count": np.array([1, 2, 3], dtype="int64")})
    found = compare_feature_rows(mart, online, key="reading_id", columns=("temp", "site", "count", "gone"))
    assert list(found.columns) == ["reading_id", *MISMATCH_FIELDS]
    kinds = sorted(zip(found["reading_id"].fillna("-"), found["column"].fillna("-"), found["kind"]))
    assert kinds == [("-", "count", "dtype"), ("-", "gone", "missing_column"),
                     ("r2", "site", "value"), ("r3", "-", "missing_row"), ("r4", "-", "missing_row")]
    same = compare_feature_rows(mart, mart.copy(), key="reading_id", columns=("temp", "site", "count"))
    assert same.empty


class _Doubling:
    """A store whose feature is twice the request's value; wrong on one reading."""

    def __init__(self, wrong: str | None = None):
        self.wrong = wrong

    def get_features(self, requests: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"reading_id": requests["reading_id"], "double": requests["value"] * 2.0})
        out.loc[out["reading_id"] == self.wrong, "double"] = -1.0
        return out


def test_skew_days_samples_each_day_as_skew_sample_does():
    days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    ids = [f"{d.isoformat()}-{i:02d}" for d in days for i in range(10)]
    values = np.arange(len(ids), dtype=np.float64)
    marts = pd.DataFrame({"reading_id": ids, "day": [d for d in days for _ in range(10)], "double": values * 2})
    requests = pd.DataFrame({"reading_id": ids, "value": values, "at": marts["day"].to_numpy()},
                            index=ids)
    wrong = ids[10 + int(sample_rows(10, 4, days[1].toordinal())[0])]  # first sampled row of day 2
    store = _Doubling(wrong)
    assert isinstance(store, OnlineStore)
    per_day = skew_days(marts, requests, store.get_features, days, key="reading_id", columns=("double",),
                        sample_size=4, mart_day="day", request_day="at")
    assert {day: (n, len(found)) for day, (n, found) in per_day.items()} == {days[0]: (4, 0), days[1]: (4, 1),
                                                                               days[2]: (4, 0)}
    assert per_day[days[1]][1]["reading_id"].tolist() == [wrong]
    for day in days:
        one = marts[marts["day"] == day].reset_index(drop=True)
        n, found = skew_sample(one, requests.drop(columns="at"), store.get_features, key="reading_id",
                               columns=("double",), sample_size=4, seed=day.toordinal())
        assert (n, found["reading_id"].tolist()) == (per_day[day][0], per_day[day][1]["reading_id"].tolist())
