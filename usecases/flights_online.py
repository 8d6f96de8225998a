"""Online feature lookups: the rows of ``marts.flight_features`` for flights being served.

The dbt project computes every feature value once, in the ``online.*`` tables, keyed by entity
and time bucket; ``marts.flight_features`` is nothing but the join of those tables onto the
scheduled flights. ``OnlineFeatureStore`` loads the same tables into memory and performs the
same join for a request with dictionary and array lookups, so serving and training see the
same values. ``feature_skew_sample`` proves it on a day of the mart.
The dense time series, the row comparison and the skew sampling are the framework's
(``keel.ml.online``); this module holds the flights' keys and lookups.

Keys of the lookups, for a flight with local date D and prediction moment p (scheduled
departure UTC - 2 h, ``time_hour + minute - 120 min``):

====================  ================================  =========================================
table (online.*)      key                               values
====================  ================================  =========================================
calendar_features     D                                 weekday, month, days to/since holidays
aircraft_features     tailnum                           seats, engines, engine type, build year
network_features      D                                 network disruption rates (the prior)
route_features        (origin, dest, D)                 7/28-day counts and smoothed rates
carrier_features      (carrier, D)                      idem
origin_hour_features  (origin, scheduled hour, D)       idem
origin_weather_hourly (origin, hour of p)               last observation at or before the hour
origin_ops_minutely   (origin, p)                       departures/schedule in [p - 3 h, p)
====================  ================================  =========================================

Besides lookups a request computes the key, the flight id, the minute of day, the aircraft's
age (year - build year) and the weather's age (p - observation time), with the same formulas
as the mart.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from keel.ml.online import MISMATCH_FIELDS, dense_series_by, skew_days, skew_sample
from keel.ml.online import compare_feature_rows as compare_rows

PREDICTION_LEAD_MINUTES = 120
"""Keel predicts a flight this long before its scheduled departure (as the dbt models do)."""

KEY_COLUMN = "flight_id"
METADATA_COLUMNS = ("flight_date", "flight_number", "tailnum", "sched_dep_at_utc", "prediction_at_utc")
"""Columns of marts.flight_features that identify or time a row but are no model input."""

_INT, _FLOAT, _TEXT = "int32", "float64", "object"
_RATE_ENTITIES = ("route", "carrier", "origin_hour")
_RATE_VALUES = ("flights_7d", "disrupted_7d", "disruption_rate_7d",
                "flights_28d", "disrupted_28d", "disruption_rate_28d")
_WEATHER_VALUES = ("weather_temp", "weather_dewp", "weather_humid", "weather_wind_speed",
                   "weather_wind_gust", "weather_precip", "weather_pressure", "weather_visib")
_OPS_COUNTS = ("origin_departures_3h", "origin_scheduled_3h", "origin_not_departed_3h")
_CALENDAR_VALUES = ("day_of_week", "month", "days_to_nearest_holiday", "days_to_next_holiday",
                    "days_since_last_holiday")

FEATURE_DTYPES: dict[str, str] = {
    "sched_dep_hour": _INT,
    "sched_dep_minute_of_day": _INT,
    **{name: _INT for name in _CALENDAR_VALUES},
    "origin": _TEXT,
    "dest": _TEXT,
    "carrier": _TEXT,
    "distance": _FLOAT,
    "aircraft_age_years": _FLOAT,
    "aircraft_seats": _FLOAT,
    "aircraft_engines": _FLOAT,
    "aircraft_engine_type": _TEXT,
    **{name: _FLOAT for name in _WEATHER_VALUES},
    "weather_obs_age_minutes": _FLOAT,
    "origin_departures_3h": _INT,
    "origin_mean_dep_delay_3h": _FLOAT,
    "origin_scheduled_3h": _INT,
    "origin_not_departed_3h": _INT,
    "network_disruption_rate_7d": _FLOAT,
    "network_disruption_rate_28d": _FLOAT,
    **{
        f"{entity}_{value}": _FLOAT if "rate" in value else _INT
        for entity in _RATE_ENTITIES
        for value in _RATE_VALUES
    },
}
"""Every feature of marts.flight_features, in the mart's column order, with its pandas dtype."""

FEATURE_COLUMNS = tuple(FEATURE_DTYPES)
OUTPUT_COLUMNS = (KEY_COLUMN, *FEATURE_COLUMNS)

RAW_FLIGHT_COLUMNS = ("year", "month", "day", "sched_dep_time", "carrier", "flight", "tailnum",
                      "origin", "dest", "distance", "hour", "minute", "time_hour")
"""What a request carries: the schedule columns of validated.flights."""


def flight_id(year: int, month: int, day: int, carrier: str, flight: int, origin: str) -> str:
    """The key of a scheduled flight, as the dbt macro flight_id builds it."""
    return f"{year:04d}{month:02d}{day:02d}-{carrier}-{flight}-{origin}"


def _date_key(year, month, day):
    return year * 10000 + month * 100 + day


def _utc_minutes(time_hour) -> np.ndarray:
    """Minutes since the epoch of naive-UTC time stamps (datetime64, tz-aware or ISO strings)."""
    values = np.asarray(time_hour)
    if not np.issubdtype(values.dtype, np.datetime64):
        parsed = pd.to_datetime(pd.Series(values), utc=True).dt.tz_convert(None)
        values = parsed.to_numpy()
    return values.astype("datetime64[m]").astype(np.int64)


class OnlineFeatureStore:
    """The online.* lookup tables of a Keel warehouse, in memory.

    Built once from a DuckDB file (read-only, closed before the constructor returns); then
    ``get_features`` answers from memory only.
    """

    def __init__(self, db_path: str | os.PathLike):
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            self._load(con)
        finally:
            con.close()

    # -- loading -------------------------------------------------------------------------

    def _load(self, con: duckdb.DuckDBPyConnection) -> None:
        def rows(sql: str) -> list[tuple]:
            return con.execute(sql).fetchall()

        self.calendar = {
            _date_key(d.year, d.month, d.day): tuple(values)
            for d, *values in rows(
                f"select feature_date, {', '.join(_CALENDAR_VALUES)} from online.calendar_features"
            )
        }
        self.aircraft = {
            tailnum: (_nan(year), _nan(seats), _nan(engines), engine_type)
            for tailnum, year, seats, engines, engine_type in rows(
                "select tailnum, manufacture_year, aircraft_seats, aircraft_engines, "
                "aircraft_engine_type from online.aircraft_features"
            )
        }
        self.network = {
            _date_key(d.year, d.month, d.day): (_nan(rate_7d), _nan(rate_28d))
            for d, rate_7d, rate_28d in rows(
                "select feature_date, network_disruption_rate_7d, network_disruption_rate_28d "
                "from online.network_features"
            )
        }
        rate_keys = {"route": ("origin", "dest"), "carrier": ("carrier",),
                     "origin_hour": ("origin", "sched_dep_hour")}
        self.rates: dict[str, dict[tuple, tuple]] = {}
        for entity, keys in rate_keys.items():
            columns = ", ".join(f"{entity}_{value}" for value in _RATE_VALUES)
            table = {}
            for row in rows(f"select {', '.join(keys)}, feature_date, {columns} "
                            f"from online.{entity}_features"):
                *entity_key, d = row[: len(keys) + 1]
                n7, d7, r7, n28, d28, r28 = row[len(keys) + 1:]
                table[(*entity_key, _date_key(d.year, d.month, d.day))] = (
                    n7, d7, _nan(r7), n28, d28, _nan(r28))
            self.rates[entity] = table
        weather = con.execute(
            f"""select origin, epoch_ms(bucket_start_utc) // 60000 as bucket,
                       epoch_ms(observed_at_utc) // 60000 as observed, {', '.join(_WEATHER_VALUES)}
                from online.origin_weather_hourly"""
        ).fetchnumpy()
        self.weather = dense_series_by(weather, "origin", ("observed", *_WEATHER_VALUES), step=60,
                                       dtype=np.float64, fill=np.nan)
        ops = con.execute(
            f"""select origin, epoch_ms(prediction_at_utc) // 60000 as bucket,
                       {', '.join(_OPS_COUNTS)}, origin_mean_dep_delay_3h
                from online.origin_ops_minutely"""
        ).fetchnumpy()
        self.ops_counts = dense_series_by(ops, "origin", _OPS_COUNTS, step=1, dtype=np.int32, fill=0)
        self.ops_delay = dense_series_by(ops, "origin", ("origin_mean_dep_delay_3h",), step=1,
                                         dtype=np.float64, fill=np.nan)

    # -- serving -------------------------------------------------------------------------

    def get_features(self, flights: pd.DataFrame, as_of: OnlineFeatureStore | None = None) -> pd.DataFrame:
        """Feature rows of scheduled flights, equal to their rows of marts.flight_features.

        ``flights`` holds the schedule columns of validated.flights (``RAW_FLIGHT_COLUMNS``;
        time_hour naive UTC). ``as_of`` optionally names another store, typically reloaded more
        often from a fresher snapshot, whose weather and recent-operations tables replace this
        store's; the slow tables still come from this one. Returns ``OUTPUT_COLUMNS`` (flight_id
        and the features, without the mart's metadata) with the mart's dtypes, one row per
        flight in input order. A flight date missing from the calendar raises KeyError.
        """
        time_buckets = as_of if as_of is not None else self
        n = len(flights)
        col = {name: flights[name].to_numpy() for name in RAW_FLIGHT_COLUMNS}
        years = col["year"].astype(np.int64)
        months = col["month"].astype(np.int64)
        days = col["day"].astype(np.int64)
        date_keys = _date_key(years, months, days)
        hours = col["hour"].astype(np.int64)
        minutes = col["minute"].astype(np.int64)
        prediction_minutes = _utc_minutes(col["time_hour"]) + minutes - PREDICTION_LEAD_MINUTES
        prediction_hours = prediction_minutes - prediction_minutes % 60
        origins, dests, carriers = col["origin"], col["dest"], col["carrier"]
        tailnums, flight_numbers = col["tailnum"], col["flight"]

        out: dict[str, np.ndarray] = {}
        out[KEY_COLUMN] = np.array(
            [flight_id(int(years[i]), int(months[i]), int(days[i]), carriers[i],
                       int(flight_numbers[i]), origins[i]) for i in range(n)],
            dtype=object,
        )
        out["sched_dep_hour"] = hours.astype(np.int32)
        out["sched_dep_minute_of_day"] = (hours * 60 + minutes).astype(np.int32)

        calendar_rows = []
        for key in date_keys.tolist():
            found = self.calendar.get(key)
            if found is None:
                raise KeyError(f"flight date {key} is not in online.calendar_features: extend "
                               "dbt_project/seeds/us_federal_holidays.csv and rebuild")
            calendar_rows.append(found)
        for name, values in zip(_CALENDAR_VALUES, _columns(calendar_rows, len(_CALENDAR_VALUES))):
            out[name] = np.array(values, dtype=np.int32)

        out["origin"] = np.array(origins, dtype=object)
        out["dest"] = np.array(dests, dtype=object)
        out["carrier"] = np.array(carriers, dtype=object)
        out["distance"] = col["distance"].astype(np.float64)

        no_aircraft = (math.nan, math.nan, math.nan, None)
        aircraft_rows = [self.aircraft.get(t, no_aircraft) for t in tailnums.tolist()]
        build_year, seats, engines, engine_type = _columns(aircraft_rows, 4)
        out["aircraft_age_years"] = years.astype(np.float64) - np.array(build_year, dtype=np.float64)
        out["aircraft_seats"] = np.array(seats, dtype=np.float64)
        out["aircraft_engines"] = np.array(engines, dtype=np.float64)
        out["aircraft_engine_type"] = np.array(engine_type, dtype=object)

        weather = np.full((n, 1 + len(_WEATHER_VALUES)), np.nan)
        ops_counts = np.zeros((n, len(_OPS_COUNTS)), dtype=np.int32)
        ops_delay = np.full(n, np.nan)
        for i in range(n):
            origin = origins[i]
            series = time_buckets.weather.get(origin)
            row = series.row(int(prediction_hours[i])) if series is not None else None
            if row is not None:
                weather[i] = row
            series = time_buckets.ops_counts.get(origin)
            row = series.row(int(prediction_minutes[i])) if series is not None else None
            if row is not None:
                ops_counts[i] = row
                ops_delay[i] = time_buckets.ops_delay[origin].row(int(prediction_minutes[i]))[0]
        for j, name in enumerate(_WEATHER_VALUES, start=1):
            out[name] = weather[:, j]
        out["weather_obs_age_minutes"] = prediction_minutes.astype(np.float64) - weather[:, 0]
        out["origin_departures_3h"] = ops_counts[:, 0]
        out["origin_mean_dep_delay_3h"] = ops_delay
        out["origin_scheduled_3h"] = ops_counts[:, 1]
        out["origin_not_departed_3h"] = ops_counts[:, 2]

        network_rows = [self.network.get(key, (math.nan, math.nan)) for key in date_keys.tolist()]
        prior_7d, prior_28d = (np.array(v, dtype=np.float64) for v in _columns(network_rows, 2))
        out["network_disruption_rate_7d"] = prior_7d
        out["network_disruption_rate_28d"] = prior_28d

        entity_keys = {
            "route": list(zip(origins.tolist(), dests.tolist(), date_keys.tolist())),
            "carrier": list(zip(carriers.tolist(), date_keys.tolist())),
            "origin_hour": list(zip(origins.tolist(), hours.tolist(), date_keys.tolist())),
        }
        missing = (0, 0, None, 0, 0, None)
        for entity, keys in entity_keys.items():
            table = self.rates[entity]
            rate_rows = [table.get(key, missing) for key in keys]
            n7, d7, r7, n28, d28, r28 = _columns(rate_rows, 6)
            out[f"{entity}_flights_7d"] = np.array(n7, dtype=np.int32)
            out[f"{entity}_disrupted_7d"] = np.array(d7, dtype=np.int32)
            # an entity without a row gets the network's rate, as in the mart
            out[f"{entity}_disruption_rate_7d"] = _or_prior(r7, prior_7d)
            out[f"{entity}_flights_28d"] = np.array(n28, dtype=np.int32)
            out[f"{entity}_disrupted_28d"] = np.array(d28, dtype=np.int32)
            out[f"{entity}_disruption_rate_28d"] = _or_prior(r28, prior_28d)

        return pd.DataFrame({name: out[name] for name in OUTPUT_COLUMNS},
                            index=flights.index, copy=False)


def _nan(value):
    return math.nan if value is None else value


def _columns(rows: Sequence[tuple], width: int) -> tuple[Sequence, ...]:
    return tuple(zip(*rows)) if rows else tuple(() for _ in range(width))


def _or_prior(rates: Sequence, prior: np.ndarray) -> np.ndarray:
    values = np.array([math.nan if r is None else r for r in rates], dtype=np.float64)
    missing = np.array([r is None for r in rates], dtype=bool)
    return np.where(missing, prior, values) if missing.any() else values


# -- skew check ----------------------------------------------------------------------------

MISMATCH_COLUMNS = (KEY_COLUMN, *MISMATCH_FIELDS)


def feature_skew_sample(
    db_path: str | os.PathLike,
    partition_date: dt.date | str,
    sample_size: int,
    seed: int,
    *,
    store: OnlineFeatureStore | None = None,
) -> tuple[int, pd.DataFrame]:
    """Recompute a sample of one day's marts.flight_features rows online and diff them.

    Draws ``sample_size`` flights of ``partition_date`` (seeded), rebuilds their features from
    their validated.flights schedule columns with ``store`` (a fresh OnlineFeatureStore of
    ``db_path`` by default), and compares every feature: floats within 1e-9 relative (nulls
    equal nulls), everything else exactly, dtypes too. Returns the number of flights compared
    and one row per difference (``MISMATCH_COLUMNS``; kind is value, dtype, missing_row or
    missing_column).
    """
    day = partition_date if isinstance(partition_date, dt.date) else dt.date.fromisoformat(partition_date)
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        mart = con.execute(
            "select * from marts.flight_features where flight_date = ? order by flight_id", [day]
        ).df()
        raw = con.execute(
            f"select {', '.join(RAW_FLIGHT_COLUMNS)} from validated.flights where _partition_date = ?",
            [day],
        ).df()
    finally:
        con.close()
    raw.index = _flight_ids(raw)
    return skew_sample(mart, raw, (store or OnlineFeatureStore(db_path)).get_features, key=KEY_COLUMN,
                       columns=FEATURE_COLUMNS, sample_size=sample_size, seed=seed)


def _flight_ids(raw: pd.DataFrame) -> list[str]:
    return [flight_id(r.year, r.month, r.day, r.carrier, r.flight, r.origin)
            for r in raw.itertuples(index=False)]


def feature_skew_days(
    db_path: str | os.PathLike,
    days: Sequence[dt.date],
    sample_size: int,
    *,
    store: OnlineFeatureStore | None = None,
) -> dict[dt.date, tuple[int, pd.DataFrame]]:
    """``feature_skew_sample`` for each of ``days``, each day's sample seeded with the day's
    ordinal, at the cost of one store load and two queries for the whole range.

    Loading the store takes about 2 s on a year of data and one day's sample about 50 ms,
    so a year-long backfill that reloaded it per day spent 13 minutes here. The samples,
    requests and comparisons are the ones ``feature_skew_sample`` makes day by day.
    """
    days = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(d) for d in days})
    if not days:
        return {}
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        marts = con.execute(
            "select * from marts.flight_features where flight_date between ? and ? "
            "order by flight_date, flight_id",
            [days[0], days[-1]],
        ).df()
        raw = con.execute(
            f"select _partition_date, {', '.join(RAW_FLIGHT_COLUMNS)} from validated.flights "
            "where _partition_date between ? and ?",
            [days[0], days[-1]],
        ).df()
    finally:
        con.close()
    raw.index = _flight_ids(raw.drop(columns="_partition_date"))
    return skew_days(marts, raw, (store or OnlineFeatureStore(db_path)).get_features, days, key=KEY_COLUMN,
                     columns=FEATURE_COLUMNS, sample_size=sample_size, mart_day="flight_date",
                     request_day="_partition_date")


def compare_feature_rows(mart: pd.DataFrame, online: pd.DataFrame, rel_tol: float = 1e-9) -> pd.DataFrame:
    """Every difference between feature rows of the same flights (matched on flight_id).

    Floats agree within ``rel_tol`` relative (null equals null), everything else exactly
    (``keel.ml.online.compare_feature_rows``).
    """
    return compare_rows(mart, online, key=KEY_COLUMN, columns=FEATURE_COLUMNS, rel_tol=rel_tol)


__all__ = [
    "FEATURE_COLUMNS", "FEATURE_DTYPES", "KEY_COLUMN", "METADATA_COLUMNS", "OUTPUT_COLUMNS",
    "OnlineFeatureStore", "RAW_FLIGHT_COLUMNS", "compare_feature_rows", "feature_skew_days",
    "feature_skew_sample",
    "flight_id",
]
