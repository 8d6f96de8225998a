"""Live features of flights: the origin's weather and recent operations, from events.

The slow features (trailing rates, aircraft, calendar) come from an online snapshot
(``OnlineFeatureStore``). The two time-bucketed tables, ``online.origin_weather_hourly`` and
``online.origin_ops_minutely``, hold rows only for the dates the snapshot was built through;
for later moments ``LiveFeatureStore`` answers from the events it was given, by the rules of
those two dbt models (their doc blocks), so the served row equals the mart's row once the day
is built in batch:

* weather at bucket b (an hour start, UTC): the last observation at or before b, if it is at
  most ``weather_max_age_hours`` old (dbt var), else nothing;
* operations at minute p over [p - 3 h, p): a flight departed at a = s + floor(dep_delay) min
  (s: its scheduled departure) counts as a departure, with its dep_delay, for p in
  [a + 1, a + 180]; a flight scheduled at s counts as scheduled for p in [s + 1, s + 180] and as
  not departed for p in [s + 1, min(s + 180, a)] (to s + 180 while it has not left).

A moment the snapshot covers is answered from the snapshot, never from events: the batch
already saw every flight of those days. Late flights of the last snapshot day count towards
the first minutes of the next day only if their events were pushed too.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from keel.core.settings import PROJECT_ROOT
from usecases.flights_online import PREDICTION_LEAD_MINUTES, OnlineFeatureStore, flight_id
from usecases.flights_records import feature_records

_WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib")
_WINDOW_MINUTES = 180
PREDICTION_LEAD_SECONDS = PREDICTION_LEAD_MINUTES * 60
_DBT_PROJECT = PROJECT_ROOT / "dbt_project" / "dbt_project.yml"


def weather_max_age_hours() -> int:
    """The dbt var the weather model uses, read from the dbt project itself."""
    return int(yaml.safe_load(_DBT_PROJECT.read_text())["vars"]["weather_max_age_hours"])


class _LiveWeather:
    """One origin's weather rows: the snapshot's, then the ones events made."""

    def __init__(self, base):
        self.base, self.live = base, {}
        self.first_live_bucket = base.first + base.step * len(base.values) if base is not None else -(2 ** 62)

    def row(self, bucket: int):
        if bucket < self.first_live_bucket:
            return self.base.row(bucket)
        return self.live.get(bucket)


class _LiveOps:
    """One origin's operation counts per minute past the snapshot: running sums of events."""

    def __init__(self, base_counts, base_delay, first_live_minute: int):
        self.base_counts, self.base_delay = base_counts, base_delay
        self.first_live_minute = first_live_minute
        self.counts: dict[int, np.ndarray] = {}  # minute -> [departures, scheduled, not departed]
        self.delay_sum: dict[int, float] = {}

    def add(self, first: int, last: int, column: int, sign: int, delay: float = 0.0) -> None:
        for minute in range(max(first, self.first_live_minute), last + 1):
            counts = self.counts.get(minute)
            if counts is None:
                counts = self.counts[minute] = np.zeros(3, dtype=np.int32)
            counts[column] += sign
            if column == 0:
                self.delay_sum[minute] = self.delay_sum.get(minute, 0.0) + sign * delay

    def counts_row(self, minute: int):
        if minute < self.first_live_minute:
            return self.base_counts.row(minute) if self.base_counts is not None else None
        return self.counts.get(minute)

    def delay_row(self, minute: int):
        if minute < self.first_live_minute:
            return self.base_delay.row(minute) if self.base_delay is not None else None
        counts = self.counts.get(minute)
        if counts is None or counts[0] <= 0:
            return np.array([math.nan])
        return np.array([self.delay_sum[minute] / counts[0]])


class _CountsView(dict):
    def get(self, origin, default=None):
        ops = dict.get(self, origin)
        return _RowView(ops.counts_row) if ops is not None else default


class _DelayView(dict):
    def __getitem__(self, origin):
        return _RowView(dict.__getitem__(self, origin).delay_row)


class _RowView:
    __slots__ = ("row",)

    def __init__(self, row):
        self.row = row


class LiveFeatureStore:
    """An online snapshot's store plus the live weather and operations that events bring.

    ``get_features`` and ``feature_records`` answer like ``OnlineFeatureStore``'s; ``apply(table, rows)``
    takes typed, validated rows of ``weather`` or ``flights``.
    """

    def __init__(self, snapshot: Path | str):
        self.base = OnlineFeatureStore(snapshot)
        self.max_age_minutes = weather_max_age_hours() * 60
        self.weather = {origin: _LiveWeather(series) for origin, series in self.base.weather.items()}
        # Minutes from the first one the snapshot does not cover, per origin.
        self._ops: dict[str, _LiveOps] = {}
        for origin, series in self.base.ops_counts.items():
            self._ops[origin] = _LiveOps(series, self.base.ops_delay.get(origin),
                                         series.first + series.step * len(series.values))
        self.ops_counts = _CountsView(self._ops)
        self.ops_delay = _DelayView(self._ops)
        self._flights: dict[str, tuple[str, int, float | None]] = {}  # key -> origin, s, dep_delay
        self.as_of: str | None = None

    def get_features(self, requests: pd.DataFrame) -> pd.DataFrame:
        return self.base.get_features(requests, as_of=self)

    def feature_records(self, requests: list[dict]) -> list[dict]:
        return feature_records(self.base, requests, as_of=self)

    def apply(self, table: str, rows: pd.DataFrame) -> str | None:
        """Fold typed rows of ``table`` into the live features; returns the latest moment the
        rows tell of (ISO, UTC), or None."""
        if table == "weather":
            return self._apply_weather(rows)
        if table == "flights":
            return self._apply_flights(rows)
        raise KeyError(f"no live features come from table {table!r}")

    def _apply_weather(self, rows: pd.DataFrame) -> str | None:
        observed = _minutes(rows["time_hour"])
        values = rows[list(_WEATHER_COLUMNS)].astype("float64").to_numpy(na_value=np.nan)
        for origin, at, row in zip(rows["origin"], observed, values):
            series = self.weather.get(origin)
            if series is None:
                series = self.weather[origin] = _LiveWeather(None)
            first_bucket = at + (-at) % 60
            for bucket in range(max(first_bucket, series.first_live_bucket), at + self.max_age_minutes + 1, 60):
                current = series.row(bucket)
                if current is None or math.isnan(current[0]) or current[0] <= at:
                    series.live[bucket] = np.concatenate(([float(at)], row))
        return _iso(observed.max()) if len(observed) else None

    def _apply_flights(self, rows: pd.DataFrame) -> str | None:
        scheduled = _minutes(rows["time_hour"]) + rows["minute"].astype("int64").to_numpy()
        latest = None
        for i, (origin, s) in enumerate(zip(rows["origin"], scheduled)):
            key = flight_id(int(rows["year"].iat[i]), int(rows["month"].iat[i]), int(rows["day"].iat[i]),
                            rows["carrier"].iat[i], int(rows["flight"].iat[i]), origin)
            departed = not pd.isna(rows["dep_time"].iat[i])
            delay = float(rows["dep_delay"].iat[i]) if departed else None
            ops = self._ops.get(origin)
            if ops is None:
                ops = self._ops[origin] = _LiveOps(None, None, -(2 ** 62))
            previous = self._flights.get(key)
            if previous is not None:
                self._count(ops, previous[1], previous[2], -1)
            self._count(ops, int(s), delay, +1)
            self._flights[key] = (origin, int(s), delay)
            moment = int(s) + (math.floor(delay) if delay is not None else 0)
            latest = moment if latest is None else max(latest, moment)
        return _iso(latest) if latest is not None else None

    @staticmethod
    def _count(ops: _LiveOps, s: int, delay: float | None, sign: int) -> None:
        ops.add(s + 1, s + _WINDOW_MINUTES, 1, sign)
        if delay is None:
            ops.add(s + 1, s + _WINDOW_MINUTES, 2, sign)
            return
        departed = s + math.floor(delay)
        ops.add(departed + 1, departed + _WINDOW_MINUTES, 0, sign, delay)
        if departed > s:
            ops.add(s + 1, min(s + _WINDOW_MINUTES, departed), 2, sign)


def _minutes(stamps: pd.Series) -> np.ndarray:
    values = pd.to_datetime(stamps)
    if values.dt.tz is not None:
        values = values.dt.tz_convert(None)
    return values.to_numpy().astype("datetime64[m]").astype(np.int64)


def _iso(minute: int) -> str:
    return (np.datetime64(int(minute), "m").astype("datetime64[s]").item().isoformat() + "Z")


# -- a day of live traffic (keel replay --live) ------------------------------------------------

_OUTCOMES = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")
_ARRIVAL_OUTCOMES = ("arr_time", "arr_delay", "air_time")
_PRIOR_FLIGHT_DAYS = 3  # late departures of these days still count in the day's first windows
_PRIOR_WEATHER_DAYS = 2  # the last observations before the day, within weather_max_age_hours


def live_plan(usecase, day: dt.date) -> list[tuple[float, int, str, dict]]:
    """Day ``day`` of flights as live traffic (``keel.serving.live``), from the replay source.

    Before the clock starts: the flights of the three days before and the weather of the two
    days before (what a server that ran through them would have received), then the day's
    schedule as published (every flight, no outcomes). Then, in time order: each weather
    observation at its hour, each departure at its moment (scheduled departure plus its
    delay, without arrival outcomes), and each flight's prediction request at its prediction
    moment (two hours before its scheduled departure)."""
    # Only the replay's client side needs it, not the server's store.
    from keel.serving.live import json_rows

    flights_spec, weather_spec = usecase.table("flights"), usecase.table("weather")
    flights = usecase.source("flights")
    weather = usecase.source("weather")
    flight_days = pd.Series(usecase.row_date("flights", flights), index=flights.index)
    weather_days = pd.Series(usecase.row_date("weather", weather), index=weather.index)
    before = -math.inf
    items: list[tuple[float, int, str, dict]] = []
    prior = flights[(flight_days >= day - dt.timedelta(days=_PRIOR_FLIGHT_DAYS)) & (flight_days < day)]
    items += [(before, 0, "flights", row) for row in json_rows(flights_spec, prior)]
    prior = weather[(weather_days >= day - dt.timedelta(days=_PRIOR_WEATHER_DAYS)) & (weather_days < day)]
    items += [(before, 0, "weather", row) for row in json_rows(weather_spec, prior)]

    today = flights[flight_days == day]
    scheduled = (_minutes(today["time_hour"]) + today["minute"].astype("int64").to_numpy()) * 60
    published = today.assign(**{column: None for column in _OUTCOMES})
    items += [(before, 1, "flights", row) for row in json_rows(flights_spec, published)]
    departed = today["dep_time"].notna().to_numpy()
    departures = today[departed].assign(**{column: None for column in _ARRIVAL_OUTCOMES})
    moments = scheduled[departed] + np.floor(today["dep_delay"].to_numpy()[departed]).astype(np.int64) * 60
    items += [(float(at), 0, "flights", row) for at, row in zip(moments, json_rows(flights_spec, departures))]
    observed = weather[weather_days == day]
    items += [(float(at) * 60, 0, "weather", row)
              for at, row in zip(_minutes(observed["time_hour"]), json_rows(weather_spec, observed))]
    columns = usecase.serving.request_columns
    for at, row in zip(scheduled, json_rows(flights_spec, today)):
        items.append((float(at - PREDICTION_LEAD_SECONDS), 1, "", {c: row[c] for c in columns}))
    return items
