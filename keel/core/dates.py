"""Dates: contiguous runs of days, and the one way a value becomes a calendar day."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd


def contiguous_ranges(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted, merged ``(first, last)`` ranges of consecutive days (duplicates ignored)."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if ranges and day - ranges[-1][1] == dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def as_date(value: dt.date | dt.datetime | str | pd.Timestamp | np.datetime64) -> dt.date:
    """The calendar day of a date, a timestamp, a ``numpy.datetime64`` or an ISO string."""
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, (str, np.datetime64)):
        return pd.Timestamp(value).date()
    raise TypeError(f"not a date: {value!r}")


def days_of(frame: pd.DataFrame, column: str) -> pd.Series:
    """The calendar day of each row of ``frame[column]``."""
    return pd.to_datetime(frame[column]).dt.date


def utc_now() -> dt.datetime:
    """Now in UTC as a naive timestamp, as the warehouse stores it."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
