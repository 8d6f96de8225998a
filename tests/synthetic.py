"""Synthetic flights shaped like the flight features, and a model spec over them: data for the
modeling, registry and scoring tests that need real LightGBM models but not the pipeline."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from keel.core.spec import ModelSpec

SPEC = ModelSpec(
    features_relation="marts.flight_features",
    labels_relation="marts.flight_labels",
    key="flight_id",
    date_column="flight_date",
    label="disrupted",
    features=(
        "sched_dep_hour", "distance", "weather_wind_speed", "weather_visib",
        "route_disruption_rate_28d", "carrier", "origin",
    ),
    categorical=("carrier", "origin"),
    fallback_features=("sched_dep_hour", "route_disruption_rate_28d", "origin"),
    baseline_feature="route_disruption_rate_28d",
    slices=("origin", "carrier"),
)
FIRST_DAY = dt.date(2013, 1, 1)
CARRIERS = ["9E", "AA", "B6", "DL", "EV", "MQ", "UA", "WN"]


def synthetic_flights(days: int = 120, per_day: int = 150, seed: int = 7) -> pd.DataFrame:
    """Flights with a disruption label that depends on hour, weather, carrier and origin, plus
    a seasonal swing; ``route_disruption_rate_28d`` is a noisy probability of the label."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    day = np.repeat(np.arange(days), per_day)
    carrier = rng.choice(CARRIERS, n, p=[0.1, 0.1, 0.15, 0.15, 0.15, 0.1, 0.15, 0.1])
    origin = rng.choice(["EWR", "JFK", "LGA"], n)
    hour = rng.integers(5, 23, n)
    distance = rng.gamma(4.0, 250.0, n).round()
    wind = rng.gamma(2.0, 5.0, n)
    wind[rng.random(n) < 0.03] = np.nan
    visib = np.where(rng.random(n) < 0.1, rng.uniform(0, 5, n), 10.0)
    carrier_effect = dict(zip(CARRIERS, [0.4, -0.2, 0.3, -0.3, 0.5, 0.2, 0.0, -0.1]))
    origin_effect = {"EWR": 0.3, "JFK": 0.0, "LGA": 0.1}
    logit = (
        -2.0 + 0.08 * (hour - 12) + 0.04 * np.nan_to_num(wind, nan=10.0) - 0.12 * (visib - 10)
        + np.vectorize(carrier_effect.get)(carrier) + np.vectorize(origin_effect.get)(origin)
        + 0.6 * np.sin(2 * np.pi * day / 90)
    )
    probability = 1 / (1 + np.exp(-logit))
    route_rate = np.clip(probability + rng.normal(0, 0.08, n), 0.01, 0.99)
    route_rate[rng.random(n) < 0.02] = np.nan
    return pd.DataFrame({
        "flight_id": np.arange(n) * 7 + 1000,
        "flight_date": [FIRST_DAY + dt.timedelta(days=int(d)) for d in day],
        "sched_dep_hour": hour,
        "distance": distance,
        "weather_wind_speed": wind,
        "weather_visib": visib,
        "route_disruption_rate_28d": route_rate,
        "carrier": carrier,
        "origin": origin,
        "disrupted": (rng.random(n) < probability).astype(int),
    })
