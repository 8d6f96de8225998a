"""The online store serves the mart's features exactly, quickly, and the skew check sees drift."""

from __future__ import annotations

import copy
import datetime as dt
import math
import statistics
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from dbt_fixtures import DBT_PROJECT_DIR, built_warehouse, copy_home, read_table, warehouse_file

import usecases.flights_online as features_online
from usecases.flights_online import (
    FEATURE_COLUMNS,
    FEATURE_DTYPES,
    METADATA_COLUMNS,
    OUTPUT_COLUMNS,
    RAW_FLIGHT_COLUMNS,
    OnlineFeatureStore,
    compare_feature_rows,
    feature_skew_sample,
)

SKEW_DAY = "2013-03-12"


@pytest.fixture(scope="session")
def features_home(tmp_path_factory):
    return built_warehouse(tmp_path_factory)


@pytest.fixture(scope="module")
def store(features_home) -> OnlineFeatureStore:
    return OnlineFeatureStore(warehouse_file(features_home))


def scheduled_flights(keel_home, day: str) -> pd.DataFrame:
    """A day's requests: the schedule columns of validated.flights, as the pipeline lands them."""
    return read_table(
        keel_home,
        f"select {', '.join(RAW_FLIGHT_COLUMNS)} from validated.flights "
        "where _partition_date = ? order by origin, time_hour, minute, carrier, flight",
        [day],
    )


def mart_rows(keel_home, day: str) -> pd.DataFrame:
    return read_table(keel_home, "select * from marts.flight_features where flight_date = ?", [day])


@pytest.mark.parametrize("day", ["2013-02-20", "2013-03-10", "2013-03-11", "2013-03-20"])
def test_online_features_equal_the_mart(features_home, store, day):
    # the first day (no history yet), the 23-hour DST day, the day after, and the last day
    compared, mismatches = feature_skew_sample(warehouse_file(features_home), day, 250, seed=11, store=store)
    assert compared == 250
    assert mismatches.empty, mismatches.head(20)


def test_online_features_equal_the_mart_for_every_flight_of_a_day(features_home, store):
    flights = scheduled_flights(features_home, SKEW_DAY)
    online = store.get_features(flights)
    mart = mart_rows(features_home, SKEW_DAY)
    assert len(online) == len(mart) > 800
    assert online.index.equals(flights.index)
    assert compare_feature_rows(mart, online).empty
    # every kind of feature is populated, not only equally empty
    assert online["weather_temp"].notna().mean() > 0.95
    assert online["aircraft_seats"].notna().mean() > 0.8
    assert (online["origin_departures_3h"] > 0).mean() > 0.8  # early flights follow a quiet night
    assert online["route_disruption_rate_28d"].nunique() > 100


def test_online_columns_and_dtypes_are_the_marts(features_home):
    mart = read_table(features_home, "select * from marts.flight_features limit 50")
    assert [c for c in mart.columns if c not in METADATA_COLUMNS] == list(OUTPUT_COLUMNS)
    assert {c: str(mart[c].dtype) for c in FEATURE_COLUMNS} == FEATURE_DTYPES
    spec = yaml.safe_load((DBT_PROJECT_DIR / "models/marts/flight_features.yml").read_text())
    roles = {c["name"]: c["config"]["meta"]["role"] for c in spec["models"][0]["columns"]}
    assert list(roles) == list(mart.columns)
    assert [name for name, role in roles.items() if role == "feature"] == list(FEATURE_COLUMNS)
    assert [name for name, role in roles.items() if role == "metadata"] == list(METADATA_COLUMNS)


def test_skew_check_reports_an_altered_lookup_value(features_home, store):
    altered = copy.deepcopy(store)
    altered.weather["JFK"].values[:, 1] += 0.5  # column 0 is the observation time, 1 the temperature

    compared, mismatches = feature_skew_sample(warehouse_file(features_home), SKEW_DAY, 300, seed=3, store=altered)

    assert compared == 300
    assert len(mismatches) > 50
    assert set(mismatches["kind"]) == {"value"}
    assert set(mismatches["column"]) == {"weather_temp"}
    assert mismatches["flight_id"].str.endswith("-JFK").all()
    shift = mismatches["online_value"].astype(float) - mismatches["mart_value"].astype(float)
    assert np.allclose(shift, 0.5)


def test_skew_check_reports_a_shifted_time_bucket(features_home, store, monkeypatch):
    # the online path predicting one hour before departure instead of two
    monkeypatch.setattr(features_online, "PREDICTION_LEAD_MINUTES", 60)

    compared, mismatches = feature_skew_sample(warehouse_file(features_home), SKEW_DAY, 300, seed=3, store=store)

    assert compared == 300
    time_bucketed = {c for c in FEATURE_COLUMNS if c.startswith("weather_")} | {
        "origin_departures_3h", "origin_mean_dep_delay_3h", "origin_scheduled_3h", "origin_not_departed_3h"}
    assert set(mismatches["column"]) <= time_bucketed
    assert {"weather_temp", "origin_departures_3h", "origin_scheduled_3h"} <= set(mismatches["column"])
    assert mismatches["flight_id"].nunique() > 250


def test_skew_check_reports_missing_rows_and_dtypes(features_home, store):
    mart = mart_rows(features_home, SKEW_DAY).head(40)
    online = store.get_features(scheduled_flights(features_home, SKEW_DAY))
    online = online[online["flight_id"].isin(mart["flight_id"])]
    online = online[online["flight_id"] != mart["flight_id"].iloc[0]]
    online = online.astype({"sched_dep_hour": "int64"})

    mismatches = compare_feature_rows(mart, online)

    assert sorted(mismatches["kind"]) == ["dtype", "missing_row"]
    assert mismatches.set_index("kind").loc["missing_row", "flight_id"] == mart["flight_id"].iloc[0]
    assert mismatches.set_index("kind").loc["dtype", "column"] == "sched_dep_hour"


def test_single_flight_lookup_is_well_under_a_millisecond(features_home, store, record_property):
    flights = scheduled_flights(features_home, SKEW_DAY)
    one = flights.iloc[[100]]
    expected = mart_rows(features_home, SKEW_DAY)
    assert compare_feature_rows(expected, store.get_features(one)).query("kind != 'missing_row'").empty

    timings = []
    for _ in range(300):
        started = time.perf_counter()
        store.get_features(one)
        timings.append(time.perf_counter() - started)
    median_us = statistics.median(timings) * 1e6
    record_property("get_features_single_flight_median_us", round(median_us))
    # Recorded, not asserted: a timed assertion fails on a loaded machine; the latency goal is
    # held by bench/bench_serving.py, which measures it beside its floor.
    print(f"get_features, one flight: median {median_us:.0f} us")


def test_flights_without_rows_get_zero_counts_and_the_network_rate(features_home, store):
    request = scheduled_flights(features_home, SKEW_DAY).query("origin == 'EWR'").iloc[[0]].copy()
    request[["tailnum", "dest", "carrier"]] = ["N0NE", "XYZ", "ZZ"]

    row = store.get_features(request).iloc[0]

    network = read_table(features_home, "select * from online.network_features where feature_date = ?",
                         [SKEW_DAY]).iloc[0]
    assert row["flight_id"].startswith("20130312-ZZ-")
    assert math.isnan(row["aircraft_seats"]) and row["aircraft_engine_type"] is None
    assert row["route_flights_28d"] == 0 and row["carrier_flights_7d"] == 0
    assert row["route_disruption_rate_28d"] == network["network_disruption_rate_28d"]
    assert row["carrier_disruption_rate_7d"] == network["network_disruption_rate_7d"]
    assert row["origin_hour_flights_28d"] > 0  # EWR at that hour does have history
    assert not math.isnan(row["weather_temp"])


def test_requests_accept_iso_time_stamps_and_reject_dates_outside_the_calendar(features_home, store):
    requests = scheduled_flights(features_home, SKEW_DAY).head(20)
    as_text = requests.assign(time_hour=requests["time_hour"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    pd.testing.assert_frame_equal(store.get_features(as_text), store.get_features(requests))

    with pytest.raises(KeyError, match="calendar_features"):
        store.get_features(requests.assign(year=2016))


def test_an_as_of_store_supplies_weather_and_recent_operations_only(features_home, store):
    fresher = copy.deepcopy(store)
    fresher.weather["JFK"].values[:, 1] = -40.0
    for origin_series in fresher.ops_counts.values():
        origin_series.values[:] = 7
    for table in fresher.rates.values():
        table.clear()
    requests = scheduled_flights(features_home, SKEW_DAY).query("origin == 'JFK'")

    served = store.get_features(requests, as_of=fresher)
    baseline = store.get_features(requests)

    observed = baseline["weather_temp"].notna()
    assert observed.sum() > 100
    assert (served.loc[observed, "weather_temp"] == -40.0).all()
    assert (served["origin_departures_3h"] == 7).all()
    rates = [c for c in FEATURE_COLUMNS if c.startswith(("route_", "carrier_", "origin_hour_"))]
    pd.testing.assert_frame_equal(served[rates], baseline[rates])


def test_the_store_reads_once_and_lets_go_of_the_file(features_home, tmp_path):
    home = copy_home(features_home, tmp_path / "keel")
    store = OnlineFeatureStore(warehouse_file(home))

    # a writer can take the file while the store keeps serving from memory
    con = duckdb.connect(str(warehouse_file(home)))
    con.execute("drop schema online cascade")
    con.close()
    served = store.get_features(scheduled_flights(home, SKEW_DAY).head(5))
    assert len(served) == 5 and served["weather_temp"].notna().all()


def test_skew_days_samples_and_compares_each_day_as_skew_sample_does(features_home, store, monkeypatch):
    # drifted, so that there are differences to hand back to their days
    monkeypatch.setattr(features_online, "PREDICTION_LEAD_MINUTES", 60)
    days = [dt.date(2013, 3, 11), dt.date(2013, 3, 12), dt.date(2013, 3, 13)]

    per_day = features_online.feature_skew_days(warehouse_file(features_home), days, 40, store=store)

    assert sorted(per_day) == days
    for day in days:
        compared, mismatches = feature_skew_sample(warehouse_file(features_home), day, 40,
                                                   seed=day.toordinal(), store=store)
        assert per_day[day][0] == compared == 40
        assert len(mismatches) > 0
        key = ["flight_id", "column"]
        assert (per_day[day][1].sort_values(key).reset_index(drop=True)[key]
                .equals(mismatches.sort_values(key).reset_index(drop=True)[key]))
