"""The reference profile: a training frame summarised once, stored as plain JSON.

:func:`keel.monitoring.drift.compare` scores a new sample against a :class:`ReferenceProfile`
without re-reading the reference rows. Numeric columns keep a table of their distinct values
(or of quantiles, beyond ``max_exact_values``), categorical ones their category counts.

Numeric reference storage
-------------------------
A numeric column is stored as a table of distinct reference values ``v_j`` with
``cum_counts[j]`` (reference values ``<= v_j``) and ``point_counts[j]`` (values ``== v_j``).

* Exact mode (at most ``max_exact_values`` distinct values): every distinct value is kept,
  the table *is* the sorted reference, and the KS statistic, its asymptotic p-value and the
  Wasserstein distance equal scipy's on the raw data (up to float summation order).
* Quantile mode (more distinct values): at most ``2 * n_quantiles + 1`` values are kept:
  equal-mass points, so that fewer than ``n / n_quantiles`` reference values lie strictly
  between two kept values, and equally spaced points, so that no gap is wider than
  ``(max - min) / n_quantiles`` (sparse tails are where the Wasserstein error would come
  from: for a lognormal, equal-mass points alone give 0.026 std of error, both give 7e-5).
  Between kept values the reference CDF is linearly interpolated (piecewise-uniform
  density); ties at kept values stay exact jumps.

  - KS statistic: ``|D_stored - D_exact| <= ks_stat_error_bound``, the largest gap
    ``(#reference values in (v_a, v_b)) / n``, always ``< 1 / n_quantiles``.  Proof sketch:
    on a gap both the true and the interpolated CDF lie in the same band of that height,
    and the current ECDF is constant between the evaluated points.  The asymptotic p-value
    is monotone in D, so it lies in ``[kstwo.sf(D + e), kstwo.sf(D - e)]``.
  - Wasserstein: ``|W_stored - W_exact| <= W(stored reference, true reference)`` by the
    triangle inequality.  That distance is computed exactly when the profile is built and
    stored as ``wasserstein_error_bound`` (data units; the report divides it by the norm
    as ``wasserstein_norm_error_bound``).  With the default 1,000 quantiles it is about
    1e-4 standard deviations at 250,000 rows and 5e-5 at 1,000,000 (normal, exponential,
    lognormal data); it can never exceed ``(max - min) / n_quantiles``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

PROFILE_FORMAT = "keel.drift.profile/1"
# Evidently 0.7.23 tests a column of at most this many reference values with KS or
# chi-square, which need the whole sample: such a column is always stored exactly.
SMALL_REFERENCE_ROWS = 1_000
PSI_BINS = 10

_Category = str | int | float | bool


@dataclass(eq=False)
class NumericReference:
    """What :func:`compare` needs of one numeric reference column (see the module docstring)."""

    n: int
    n_null: int
    n_unique: int
    exact: bool
    mean: float
    std: float
    min: float
    max: float
    values: np.ndarray
    cum_counts: np.ndarray
    point_counts: np.ndarray
    psi_edges: np.ndarray
    psi_counts: np.ndarray
    ks_stat_error_bound: float
    wasserstein_error_bound: float

    @classmethod
    def from_values(
        cls, raw: np.ndarray, *, max_exact_values: int, n_quantiles: int
    ) -> NumericReference:
        finite = np.isfinite(raw)
        valid = np.sort(raw[finite])
        n = int(valid.size)
        if n == 0:
            raise ValueError("no finite values")
        unique, cum = sorted_runs(valid)
        points = np.diff(cum, prepend=0)
        if unique.size <= max_exact_values:
            keep = slice(None)
        else:
            # Equal-mass points bound the KS error; equally spaced points keep the sparse
            # tails short, which is where most of the Wasserstein error would come from.
            levels = np.arange(1, n_quantiles + 1) * (n / n_quantiles)
            equal_mass = np.searchsorted(cum, levels, side="left")
            grid = np.linspace(unique[0], unique[-1], n_quantiles + 1)
            equal_width = np.searchsorted(unique, grid, side="left")
            candidates = np.concatenate(([0], equal_mass, equal_width))
            keep = np.unique(np.minimum(candidates, unique.size - 1))
        edges = np.unique(np.quantile(valid, np.linspace(0.0, 1.0, PSI_BINS + 1)[1:-1]))
        reference = cls(
            n=n,
            n_null=int(raw.size - n),
            n_unique=int(unique.size),
            exact=unique.size <= max_exact_values,
            mean=float(np.mean(valid)),
            std=float(np.std(valid)),
            min=float(valid[0]),
            max=float(valid[-1]),
            values=unique[keep],
            cum_counts=cum[keep],
            point_counts=points[keep],
            psi_edges=edges,
            psi_counts=bin_counts(unique, cum, edges),
            ks_stat_error_bound=0.0,
            wasserstein_error_bound=0.0,
        )
        if not reference.exact:
            below = reference.cum_counts - reference.point_counts
            reference.ks_stat_error_bound = float(np.max(below[1:] - reference.cum_counts[:-1]) / n)
            reference.wasserstein_error_bound = table_distances(reference, unique, cum)[1]
        return reference

    @cached_property
    def _gaps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per gap g (between values[g-1] and values[g]): count at its start, origin, slope.

        Gap 0 lies below the minimum and gap J above the maximum; both are flat.  In exact
        mode every slope is exactly 0, so the CDF is the reference ECDF bit for bit.
        """
        cum = self.cum_counts.astype(np.float64)
        below = cum - self.point_counts
        base = np.concatenate(([0.0], cum))
        origin = np.concatenate((self.values[:1], self.values))
        slope = np.zeros(self.values.size + 1)
        if self.values.size > 1:
            slope[1:-1] = (below[1:] - cum[:-1]) / np.diff(self.values)
        return base, origin, slope

    def sample(self) -> np.ndarray:
        """The sorted reference sample itself; only possible in exact mode."""
        if not self.exact:
            raise ValueError("a quantile-compressed reference cannot be expanded")
        return np.repeat(self.values, self.point_counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_null": self.n_null,
            "n_unique": self.n_unique,
            "exact": self.exact,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "table": {
                "values": self.values.tolist(),
                "cum_counts": self.cum_counts.tolist(),
                "point_counts": self.point_counts.tolist(),
            },
            "psi": {"edges": self.psi_edges.tolist(), "counts": self.psi_counts.tolist()},
            "ks_stat_error_bound": self.ks_stat_error_bound,
            "wasserstein_error_bound": self.wasserstein_error_bound,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericReference:
        table, psi = data["table"], data["psi"]
        return cls(
            n=int(data["n"]),
            n_null=int(data["n_null"]),
            n_unique=int(data["n_unique"]),
            exact=bool(data["exact"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
            min=float(data["min"]),
            max=float(data["max"]),
            values=np.asarray(table["values"], dtype=np.float64),
            cum_counts=np.asarray(table["cum_counts"], dtype=np.int64),
            point_counts=np.asarray(table["point_counts"], dtype=np.int64),
            psi_edges=np.asarray(psi["edges"], dtype=np.float64),
            psi_counts=np.asarray(psi["counts"], dtype=np.int64),
            ks_stat_error_bound=float(data["ks_stat_error_bound"]),
            wasserstein_error_bound=float(data["wasserstein_error_bound"]),
        )


@dataclass(eq=False)
class CategoricalReference:
    """Category frequencies of one categorical reference column (nulls excluded)."""

    n: int
    n_null: int
    categories: list[_Category]
    counts: np.ndarray

    @classmethod
    def from_series(cls, series: pd.Series) -> CategoricalReference:
        keys, counts, n_null = category_counts(series)
        if counts.size == 0:
            raise ValueError("no non-null values")
        categories = [_plain_category(key) for key in keys]
        return cls(n=int(counts.sum()), n_null=n_null, categories=categories, counts=counts)

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.categories, dtype=object)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_null": self.n_null,
            "categories": list(self.categories),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalReference:
        return cls(
            n=int(data["n"]),
            n_null=int(data["n_null"]),
            categories=list(data["categories"]),
            counts=np.asarray(data["counts"], dtype=np.int64),
        )


@dataclass(eq=False)
class ReferenceProfile:
    """Summary of a reference frame, built once and stored as JSON (never pickle)."""

    n_rows: int
    numeric: dict[str, NumericReference]
    categorical: dict[str, CategoricalReference]
    max_exact_values: int
    n_quantiles: int

    @classmethod
    def from_frame(
        cls,
        reference: pd.DataFrame,
        *,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        max_exact_values: int = 2_000,
        n_quantiles: int = 1_000,
    ) -> ReferenceProfile:
        """Profile ``numeric`` and ``categorical`` columns of ``reference``.

        ``max_exact_values`` must be at least 1,000 so that every reference small enough
        for Evidently's KS/chi-square branch is stored exactly (its p-values need the
        whole sample).
        """
        if max_exact_values < SMALL_REFERENCE_ROWS:
            raise ValueError(f"max_exact_values must be >= {SMALL_REFERENCE_ROWS}")
        if n_quantiles < 1:
            raise ValueError("n_quantiles must be positive")
        _check_features(reference, numeric, categorical)
        numeric_refs = {}
        for name in numeric:
            raw = numeric_array(reference[name], name, "reference")
            try:
                numeric_refs[name] = NumericReference.from_values(
                    raw, max_exact_values=max_exact_values, n_quantiles=n_quantiles
                )
            except ValueError as error:
                raise ValueError(f"reference column {name!r}: {error}") from error
        categorical_refs = {}
        for name in categorical:
            try:
                categorical_refs[name] = CategoricalReference.from_series(reference[name])
            except ValueError as error:
                raise ValueError(f"reference column {name!r}: {error}") from error
        return cls(
            n_rows=len(reference),
            numeric=numeric_refs,
            categorical=categorical_refs,
            max_exact_values=max_exact_values,
            n_quantiles=n_quantiles,
        )

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "n_rows": self.n_rows,
            "max_exact_values": self.max_exact_values,
            "n_quantiles": self.n_quantiles,
            "numeric": {name: ref.to_dict() for name, ref in self.numeric.items()},
            "categorical": {name: ref.to_dict() for name, ref in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"not a {PROFILE_FORMAT} profile: format={data.get('format')!r}")
        return cls(
            n_rows=int(data["n_rows"]),
            numeric={k: NumericReference.from_dict(v) for k, v in data["numeric"].items()},
            categorical={
                k: CategoricalReference.from_dict(v) for k, v in data["categorical"].items()
            },
            max_exact_values=int(data["max_exact_values"]),
            n_quantiles=int(data["n_quantiles"]),
        )


def table_distances(
    ref: NumericReference, cur_unique: np.ndarray, cur_cum: np.ndarray
) -> tuple[float, float]:
    """KS statistic and (unnormalised) Wasserstein-1 distance of a sample to ``ref``.

    ``cur_unique``/``cur_cum`` are the sample's distinct sorted values and the count of
    sample values ``<=`` each.  The KS statistic is evaluated, like scipy's, at every
    reference and sample point; the Wasserstein distance integrates |F_ref - F_cur| over
    the merged breakpoints, where F_ref is linear and F_cur constant on each segment (the
    integral of |linear| is exact, two triangles when it changes sign).  With an exact
    table this is scipy's ``_cdf_distance(p=1)``.
    """
    n, m = ref.n, int(cur_cum[-1])
    base, origin, slope = ref._gaps
    values = ref.values

    gap_of_cur = np.searchsorted(values, cur_unique, side="right")
    ref_at_cur = base[gap_of_cur] + slope[gap_of_cur] * (cur_unique - origin[gap_of_cur])
    cur_rank_at_ref = np.searchsorted(cur_unique, values, side="right")
    cur_at_ref = np.where(cur_rank_at_ref > 0, cur_cum[cur_rank_at_ref - 1], 0)
    ks_stat = max(
        float(np.max(np.abs(ref_at_cur / n - cur_cum / m))),
        float(np.max(np.abs(ref.cum_counts / n - cur_at_ref / m))),
    )

    insert_at = np.searchsorted(cur_unique, values, side="left")
    points = np.insert(cur_unique, insert_at, values)
    cur_counts = np.insert(cur_cum, insert_at, cur_at_ref)[:-1]
    gaps = np.insert(gap_of_cur, insert_at, np.arange(1, values.size + 1))[:-1]
    lengths = np.diff(points)
    starts = points[:-1]
    gap_slope = slope[gaps]
    start_gap = (base[gaps] + gap_slope * (starts - origin[gaps])) / n - cur_counts / m
    end_gap = start_gap + gap_slope * lengths / n
    magnitude = np.abs(start_gap) + np.abs(end_gap)
    crossing = start_gap * end_gap < 0
    area = 0.5 * lengths * magnitude
    if crossing.any():
        cross = np.flatnonzero(crossing)
        area[cross] = (
            lengths[cross]
            * (start_gap[cross] ** 2 + end_gap[cross] ** 2)
            / (2.0 * magnitude[cross])
        )
    return ks_stat, float(np.sum(area))


def bin_counts(unique: np.ndarray, cum: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in bins (-inf, e1), [e1, e2), ..., [ek, inf) from a sorted (value, <=count) table."""
    rank = np.searchsorted(unique, edges, side="left")
    below = np.where(rank > 0, cum[rank - 1], 0)
    return np.diff(np.concatenate(([0], below, [cum[-1]]))).astype(np.int64)


def sorted_runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how many elements are <= each."""
    ends = np.append(np.flatnonzero(sorted_values[1:] != sorted_values[:-1]), sorted_values.size - 1)
    return sorted_values[ends], (ends + 1).astype(np.int64)


def numeric_array(series: pd.Series, name: str, side: str) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(series.dtype):
        raise TypeError(f"{side} column {name!r} must be numeric, got dtype {series.dtype}")
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def category_counts(series: pd.Series) -> tuple[pd.Index, np.ndarray, int]:
    """Observed categories, their counts and the null count (NaN, None, and +-inf as Evidently)."""
    if pd.api.types.is_float_dtype(series.dtype):
        series = series.replace([np.inf, -np.inf], np.nan)
    counts = series.value_counts(dropna=True, sort=False)
    counts = counts[counts.to_numpy() > 0]  # a categorical dtype lists unobserved categories
    values = counts.to_numpy(dtype=np.int64)
    return pd.Index(counts.index, dtype=object), values, int(len(series) - values.sum())


def _plain_category(value: Any) -> _Category:
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"category {value!r} of type {type(value).__name__} is not JSON-safe")
    return value


def _check_features(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> None:
    names = [*numeric, *categorical]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"features listed twice: {duplicated}")
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise KeyError(f"reference data lacks columns: {missing}")
