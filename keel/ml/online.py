"""Online features: what a use case's online store provides, and the generic machinery under it.

A use case that serves features online computes them twice: once in its dbt mart (training
reads it) and once per request from an in-memory store (serving reads it). Keel holds the two
equal: ``UseCase.feature_skew`` samples a day's mart rows, recomputes them through the store
and compares every value. This module gives a use case the pieces that check is made of, so
that only the use case's lookups stay in its own module:

- :class:`OnlineStore`: the contract a store fulfils (``ServingSpec.load_store`` builds one);
- :class:`DenseTimeSeries` and :func:`dense_series_by`: rows of a table keyed by
  (entity, time bucket) as one dense array per entity, a lookup by array offset;
- :func:`compare_feature_rows`: every difference between two frames of feature rows;
- :func:`sample_rows`, :func:`skew_sample` and :func:`skew_days`: a day's (or each day's)
  seeded sample of mart rows recomputed online and compared.

Time buckets are integers (minutes since the epoch, say); a series' ``step`` is the bucket
width in the same unit.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@runtime_checkable
class OnlineStore(Protocol):
    """What a use case's online store provides.

    ``get_features(requests)`` takes a frame of requests (the ``ServingSpec.request_columns``
    of the request table, one row per entity to score) and returns, in input order and with the
    same index, one row per request: the model key (``ModelSpec.key``) and every feature, with
    the mart's column names and dtypes, equal to that entity's row of the mart. It answers
    from memory; the store is built once from an online snapshot (``ServingSpec.load_store``).
    The serving path's per-request variant, without pandas, is ``ServingSpec.features(store,
    records)``: the same rows as dicts (a store may expose it as ``feature_records``).
    """

    def get_features(self, requests: pd.DataFrame) -> pd.DataFrame: ...


class DenseTimeSeries:
    """Rows of one entity indexed by time bucket: an array offset instead of a hash lookup."""

    __slots__ = ("first", "step", "values")

    def __init__(self, buckets: np.ndarray, values: np.ndarray, step: int, fill):
        self.first = int(buckets.min())
        self.step = step
        size = int(buckets.max() - self.first) // step + 1
        dense = np.full((size, values.shape[1]), fill, dtype=values.dtype)
        dense[(buckets - self.first) // step] = values
        self.values = dense

    def row(self, bucket: int):
        """The row of the bucket starting at ``bucket``, or None (off the grid or out of range)."""
        offset, remainder = divmod(bucket - self.first, self.step)
        if remainder == 0 and 0 <= offset < len(self.values):
            return self.values[offset]
        return None


def dense_series_by(data: Mapping, entity: str, value_columns: Sequence[str], step: int, dtype, fill,
                    bucket: str = "bucket") -> dict[object, DenseTimeSeries]:
    """Columns fetched from a table keyed by (``entity``, ``bucket``) (for example DuckDB's
    ``fetchnumpy()``), as one dense series per entity value. Float columns have their nulls
    (masked values) as NaN; a bucket without a row holds ``fill``."""
    entities = np.asarray(data[entity], dtype=object)
    buckets = np.asarray(data[bucket], dtype=np.int64)
    if np.dtype(dtype).kind == "f":
        columns = [np.ma.filled(np.ma.asarray(data[c]).astype(np.float64), np.nan) for c in value_columns]
    else:
        columns = [np.asarray(data[c]) for c in value_columns]
    values = np.column_stack(columns).astype(dtype) if len(buckets) else np.empty((0, len(value_columns)), dtype)
    return {
        value: DenseTimeSeries(buckets[entities == value], values[entities == value], step, fill)
        for value in np.unique(entities)
    }


MISMATCH_FIELDS = ("column", "kind", "mart_value", "online_value")
"""The columns of a comparison's result after the key: kind is value, dtype, missing_row or
missing_column."""


def compare_feature_rows(mart: pd.DataFrame, online: pd.DataFrame, *, key: str, columns: Sequence[str],
                         rel_tol: float = 1e-9) -> pd.DataFrame:
    """Every difference between feature rows of the same entities (matched on ``key``).

    ``columns`` are the features compared. Floats agree within ``rel_tol`` relative (null
    equals null), everything else exactly, dtypes too. Returns one row per difference: ``key``
    (None for a column-level difference) and ``MISMATCH_FIELDS``.
    """
    mismatches: list[tuple] = []
    columns = [c for c in columns if c != key]
    for name in columns:
        if name not in online.columns or name not in mart.columns:
            mismatches.append((None, name, "missing_column",
                               "present" if name in mart.columns else None,
                               "present" if name in online.columns else None))
        elif mart[name].dtype != online[name].dtype:
            mismatches.append((None, name, "dtype", str(mart[name].dtype), str(online[name].dtype)))
    mart_rows = mart.set_index(key)
    online_rows = online.set_index(key)
    for value in mart_rows.index.difference(online_rows.index):
        mismatches.append((value, None, "missing_row", "present", None))
    for value in online_rows.index.difference(mart_rows.index):
        mismatches.append((value, None, "missing_row", None, "present"))
    shared = mart_rows.index.intersection(online_rows.index)
    for name in columns:
        if name not in online_rows.columns or name not in mart_rows.columns:
            continue
        left, right = mart_rows.loc[shared, name], online_rows.loc[shared, name]
        differs = ~_agree(left, right, rel_tol)
        for value, a, b in zip(shared[differs], left[differs], right[differs]):
            mismatches.append((value, name, "value", a, b))
    return pd.DataFrame(mismatches, columns=[key, *MISMATCH_FIELDS])


def _agree(left: pd.Series, right: pd.Series, rel_tol: float) -> np.ndarray:
    left_missing, right_missing = left.isna().to_numpy(), right.isna().to_numpy()
    both_present = ~left_missing & ~right_missing
    numeric = pd.api.types.is_numeric_dtype(left) and pd.api.types.is_numeric_dtype(right)
    if numeric and (pd.api.types.is_float_dtype(left) or pd.api.types.is_float_dtype(right)):
        a = left.to_numpy(dtype=np.float64, na_value=np.nan)
        b = right.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            close = (a == b) | (np.abs(a - b) <= rel_tol * np.maximum(np.abs(a), np.abs(b)))
    else:
        close = np.array([x == y for x, y in zip(left.to_numpy(), right.to_numpy())], dtype=bool)
    return (left_missing & right_missing) | (both_present & close)


def sample_rows(rows: np.ndarray | int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of ``size`` of ``rows`` (positions, or a count n for 0..n-1) without
    replacement, in their order: the same rows for the same seed."""
    rows = np.arange(rows) if isinstance(rows, (int, np.integer)) else np.asarray(rows)
    rng = np.random.default_rng(seed)
    return rows[np.sort(rng.choice(len(rows), size=min(size, len(rows)), replace=False))]


def skew_sample(mart: pd.DataFrame, requests: pd.DataFrame, get_features: Callable[[pd.DataFrame], pd.DataFrame],
                *, key: str, columns: Sequence[str], sample_size: int, seed: int,
                rel_tol: float = 1e-9) -> tuple[int, pd.DataFrame]:
    """A day's training-serving skew: ``sample_size`` rows of ``mart`` (one day, in a stable
    order; seeded), recomputed by ``get_features`` from their rows of ``requests`` (indexed by
    ``key``) and compared. Returns the number of rows compared and the differences."""
    mart = mart.iloc[sample_rows(len(mart), sample_size, seed)].reset_index(drop=True)
    picked = requests.loc[requests.index.intersection(mart[key])].reset_index(drop=True)
    return len(mart), compare_feature_rows(mart, get_features(picked), key=key, columns=columns, rel_tol=rel_tol)


def skew_days(marts: pd.DataFrame, requests: pd.DataFrame, get_features: Callable[[pd.DataFrame], pd.DataFrame],
              days: Sequence[dt.date], *, key: str, columns: Sequence[str], sample_size: int,
              mart_day: str, request_day: str, rel_tol: float = 1e-9) -> dict[dt.date, tuple[int, pd.DataFrame]]:
    """:func:`skew_sample` for each of ``days`` (each day seeded with its ordinal), with one
    ``get_features`` call and one comparison for the whole range.

    ``marts`` holds the mart rows of the range in a stable order, their day in ``mart_day``;
    ``requests`` the request rows, indexed by ``key``, their day in ``request_day``. The
    differences are handed back to their days; a column-level difference (missing column,
    dtype) concerns every day.
    """
    empty = np.empty(0, dtype=np.int64)
    def rows_by_day(frame: pd.DataFrame, column: str) -> dict:
        # positions, grouped by the day as an array: the frame's own index plays no part
        return pd.Series(np.arange(len(frame))).groupby(pd.to_datetime(frame[column]).dt.date.to_numpy()).indices

    mart_rows, raw_rows = rows_by_day(marts, mart_day), rows_by_day(requests, request_day)
    requests = requests.drop(columns=request_day)
    picked_rows, request_rows, sampled = [], [], {}
    for day in days:
        picked = sample_rows(mart_rows.get(day, empty), sample_size, day.toordinal())
        picked_rows.append(picked)
        sampled[day] = marts[key].to_numpy()[picked]
        day_raw = raw_rows.get(day, empty)
        request_rows.append(day_raw[requests.index[day_raw].isin(sampled[day])])
    mart = marts.iloc[np.concatenate(picked_rows)].reset_index(drop=True)
    picked_requests = requests.iloc[np.concatenate(request_rows)].reset_index(drop=True)
    mismatches = compare_feature_rows(mart, get_features(picked_requests), key=key, columns=columns,
                                      rel_tol=rel_tol)
    whole_table = mismatches[mismatches[key].isna()]
    return {
        day: (
            len(keys),
            pd.concat([whole_table, mismatches[mismatches[key].isin(keys)]], ignore_index=True)
            if len(mismatches) else mismatches,
        )
        for day, keys in sampled.items()
    }


__all__ = [
    "DenseTimeSeries", "MISMATCH_FIELDS", "OnlineStore", "compare_feature_rows", "dense_series_by",
    "sample_rows", "skew_days", "skew_sample",
]
