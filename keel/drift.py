"""Drift statistics of a current sample against a stored reference profile.

The reference (training) data is summarised once into a :class:`ReferenceProfile` that
round-trips through plain JSON; :func:`compare` then scores a new sample against it without
re-reading the reference.  Only numpy, pandas and scipy are used, so the monitoring asset
can score a day of data in milliseconds instead of re-running Evidently over the whole
training set.

Decisions follow Evidently 0.7.23's ``DataDriftPreset`` defaults (read from
``evidently/legacy/calculations/stattests``), so a column drifts here exactly when it drifts
there, up to the approximations listed below:

==============  ================================  ============================  ==========
reference rows  column                            test (``drift_score``)        drifted
==============  ================================  ============================  ==========
<= 1,000        numeric with > 5 values           KS p-value (scipy "auto")     p <= 0.05
<= 1,000        numeric with 3-5 values,          chi-square p-value            p < 0.05
                categorical with > 2 values
<= 1,000        any column with <= 2 values       two-proportion z-test p       p < 0.05
> 1,000         numeric with > 5 values           Wasserstein / max(std, 1e-3)  d >= 0.1
> 1,000         numeric with <= 5 values,         Jensen-Shannon distance       d >= 0.1
                any categorical                   (natural log)
==============  ================================  ============================  ==========

"reference rows" and "values" count the non-null, finite values of the column (Evidently
drops NaN and +-inf before choosing the test); "values" is the number of distinct values in
reference and current together.  The dataset drifts when the share of drifted columns is
``>= drift_share`` (0.5), as in Evidently's ``get_dataset_drift``.

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

PSI uses ten bins whose edges are the reference deciles (duplicate edges from ties are
merged; the outer bins are open so current values outside the reference range still
count), ``PSI = sum((cur - ref) * ln(cur / ref))`` with empty bins set to ``1e-4``.
PSI is reported for every column; it decides only with ``method="psi"`` (threshold 0.2).

Where decisions can still differ from Evidently: quantile mode near a threshold (within the
stored bounds above), scores within a few ulps of a threshold (Evidently's std comes from
pandas, ours from numpy), and columns typed differently (pass Evidently an explicit
``DataDefinition``: its inference makes int columns with <= 10 values categorical).  Where
Evidently raises (a column with no current values) this module reports the column with
``flag="no_current_values"``, no score and ``drifted=False``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

PROFILE_FORMAT = "keel.drift.profile/1"

# Evidently 0.7.23 defaults (stattests/registry.py `_get_default_stattest` and the tests).
SMALL_REFERENCE_ROWS = 1_000
DISCRETE_MAX_VALUES = 5
BINARY_MAX_VALUES = 2
PVALUE_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
WASSERSTEIN_MIN_NORM = 0.001
DEFAULT_DRIFT_SHARE = 0.5

PSI_BINS = 10
PSI_EMPTY_BIN_SHARE = 1e-4
PSI_THRESHOLD = 0.2

NO_CURRENT_VALUES = "no_current_values"
UNSEEN_CATEGORIES_LISTED = 10
METHODS = ("evidently", "psi")

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
        unique, cum = _sorted_runs(valid)
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
            psi_counts=_bin_counts(unique, cum, edges),
            ks_stat_error_bound=0.0,
            wasserstein_error_bound=0.0,
        )
        if not reference.exact:
            below = reference.cum_counts - reference.point_counts
            reference.ks_stat_error_bound = float(np.max(below[1:] - reference.cum_counts[:-1]) / n)
            reference.wasserstein_error_bound = _table_distances(reference, unique, cum)[1]
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
        keys, counts, n_null = _category_counts(series)
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
            raw = _numeric_array(reference[name], name, "reference")
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


@dataclass
class FeatureDrift:
    """Drift statistics of one column; statistics that do not apply to it are None.

    ``n_ref``/``n_cur`` count the values the statistics use (non-null, finite); null
    shares are of all rows.  ``ks_pvalue`` is always scipy's asymptotic p-value, while a
    KS ``drift_score`` is computed as Evidently does (``method="auto"``: exact up to 10,000
    values).  ``wasserstein_norm`` divides by the reference's population std (floored at
    0.001).  Numeric columns with at most five values also get ``chi2_*`` and
    ``js_distance``, since Evidently treats them as categories.
    """

    feature: str
    kind: str
    stattest: str | None
    n_ref: int
    n_cur: int
    null_share_ref: float
    null_share_cur: float | None
    drift_score: float | None = None
    threshold: float | None = None
    drifted: bool = False
    flag: str | None = None
    ks_stat: float | None = None
    ks_pvalue: float | None = None
    ks_stat_error_bound: float | None = None
    wasserstein_norm: float | None = None
    wasserstein_norm_error_bound: float | None = None
    chi2_stat: float | None = None
    chi2_pvalue: float | None = None
    js_distance: float | None = None
    psi: float | None = None
    unseen_share: float | None = None
    unseen_categories: dict[str, int] = field(default_factory=dict)


@dataclass
class DriftReport:
    """Per-column drift and the dataset-level decision."""

    features: list[FeatureDrift]
    method: str
    drift_share: float
    rows_ref: int
    rows_cur: int

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_drifted(self) -> int:
        return sum(feature.drifted for feature in self.features)

    @property
    def share_drifted(self) -> float:
        return self.n_drifted / self.n_features if self.features else 0.0

    @property
    def dataset_drifted(self) -> bool:
        return bool(self.features) and self.share_drifted >= self.drift_share

    @property
    def flagged(self) -> list[str]:
        return [feature.feature for feature in self.features if feature.flag]

    def __getitem__(self, name: str) -> FeatureDrift:
        for feature in self.features:
            if feature.feature == name:
                return feature
        raise KeyError(name)

    def to_frame(self) -> pd.DataFrame:
        columns = [f.name for f in fields(FeatureDrift)]
        rows = [asdict(feature) for feature in self.features]
        return pd.DataFrame(rows, columns=columns).set_index("feature")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain Python types, NaN and infinities as None."""
        return _json_ready(
            {
                "method": self.method,
                "drift_share": self.drift_share,
                "rows_ref": self.rows_ref,
                "rows_cur": self.rows_cur,
                "n_features": self.n_features,
                "n_drifted": self.n_drifted,
                "share_drifted": self.share_drifted,
                "dataset_drifted": self.dataset_drifted,
                "flagged": self.flagged,
                "features": [asdict(feature) for feature in self.features],
            }
        )


def compare(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    *,
    method: str = "evidently",
    drift_share: float = DEFAULT_DRIFT_SHARE,
) -> DriftReport:
    """Score ``current`` against ``profile``.

    ``method="evidently"`` decides each column with the test Evidently's DataDriftPreset
    would pick (module docstring); ``method="psi"`` decides every column by PSI >= 0.2.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    missing = [name for name in profile.features if name not in current.columns]
    if missing:
        raise KeyError(f"current data lacks profiled columns: {missing}")
    rows = len(current)
    features = [
        _compare_numeric(name, ref, _numeric_array(current[name], name, "current"), method)
        for name, ref in profile.numeric.items()
    ]
    features += [
        _compare_categorical(name, ref, current[name], rows, method)
        for name, ref in profile.categorical.items()
    ]
    return DriftReport(
        features=features,
        method=method,
        drift_share=drift_share,
        rows_ref=profile.n_rows,
        rows_cur=rows,
    )


def _compare_numeric(name: str, ref: NumericReference, raw: np.ndarray, method: str) -> FeatureDrift:
    cur = np.sort(raw[np.isfinite(raw)])
    m = int(cur.size)
    result = FeatureDrift(
        feature=name,
        kind="numeric",
        stattest=None,
        n_ref=ref.n,
        n_cur=m,
        null_share_ref=ref.n_null / (ref.n + ref.n_null),
        null_share_cur=(raw.size - m) / raw.size if raw.size else None,
    )
    if m == 0:
        result.flag = NO_CURRENT_VALUES
        return result

    cur_unique, cur_cum = _sorted_runs(cur)
    ks_stat, wasserstein = _table_distances(ref, cur_unique, cur_cum)
    norm = max(ref.std, WASSERSTEIN_MIN_NORM)
    result.ks_stat = ks_stat
    result.ks_pvalue = _ks_asymp_pvalue(ks_stat, ref.n, m)
    result.ks_stat_error_bound = ref.ks_stat_error_bound
    result.wasserstein_norm = wasserstein / norm
    result.wasserstein_norm_error_bound = ref.wasserstein_error_bound / norm
    result.psi = _psi(ref.psi_counts, _bin_counts(cur_unique, cur_cum, ref.psi_edges))

    if ref.exact:
        pos = np.minimum(np.searchsorted(ref.values, cur_unique), ref.values.size - 1)
        n_values = ref.values.size + int(np.count_nonzero(ref.values[pos] != cur_unique))
    else:
        n_values = ref.n_unique  # > max_exact_values >= 1,000: never the discrete branch
    discrete = n_values <= DISCRETE_MAX_VALUES
    if discrete:
        categorical = _categorical_stats(
            pd.Index(ref.values),
            ref.point_counts,
            pd.Index(cur_unique),
            np.diff(cur_cum, prepend=0),
        )
        result.chi2_stat, result.chi2_pvalue = categorical["chi2_stat"], categorical["chi2_pvalue"]
        result.js_distance = categorical["js_distance"]

    if method == "psi":
        result.stattest = "psi"
    elif ref.n <= SMALL_REFERENCE_ROWS:
        if discrete:
            result.stattest = "chisquare" if n_values > BINARY_MAX_VALUES else "z"
        else:
            result.stattest = "ks"
    else:
        result.stattest = "jensenshannon" if discrete else "wasserstein"

    if result.stattest == "ks":
        # Evidently calls ks_2samp with method="auto": exact p-values up to 10,000 rows.
        score = float(stats.ks_2samp(ref.sample(), cur, method="auto").pvalue)
    elif result.stattest == "z":
        score = categorical["z_pvalue"]
    elif result.stattest == "chisquare":
        score = result.chi2_pvalue
    elif result.stattest == "jensenshannon":
        score = result.js_distance
    elif result.stattest == "wasserstein":
        score = result.wasserstein_norm
    else:
        score = result.psi
    return _decide(result, score)


def _compare_categorical(
    name: str, ref: CategoricalReference, series: pd.Series, rows: int, method: str
) -> FeatureDrift:
    keys, counts, n_null = _category_counts(series)
    m = int(counts.sum())
    result = FeatureDrift(
        feature=name,
        kind="categorical",
        stattest=None,
        n_ref=ref.n,
        n_cur=m,
        null_share_ref=ref.n_null / (ref.n + ref.n_null),
        null_share_cur=n_null / rows if rows else None,
    )
    if m == 0:
        result.flag = NO_CURRENT_VALUES
        return result
    categorical = _categorical_stats(ref._index, ref.counts, keys, counts)
    result.chi2_stat, result.chi2_pvalue = categorical["chi2_stat"], categorical["chi2_pvalue"]
    result.js_distance = categorical["js_distance"]
    result.psi = categorical["psi"]
    result.unseen_share = categorical["unseen_share"]
    result.unseen_categories = categorical["unseen_categories"]
    n_values = categorical["n_values"]
    if method == "psi":
        result.stattest, score = "psi", result.psi
    elif ref.n <= SMALL_REFERENCE_ROWS:
        if n_values > BINARY_MAX_VALUES:
            result.stattest, score = "chisquare", result.chi2_pvalue
        else:
            result.stattest, score = "z", categorical["z_pvalue"]
    else:
        result.stattest, score = "jensenshannon", result.js_distance
    return _decide(result, score)


def _decide(result: FeatureDrift, score: float) -> FeatureDrift:
    """Apply the test's threshold with Evidently's comparison (KS uses <=, other p-values <)."""
    test = result.stattest
    if test in ("ks", "chisquare", "z"):
        threshold = PVALUE_THRESHOLD
        drifted = score <= threshold if test == "ks" else score < threshold
    elif test == "psi":
        threshold = PSI_THRESHOLD
        drifted = score >= threshold
    else:
        threshold = DISTANCE_THRESHOLD
        drifted = score >= threshold
    result.drift_score = float(score)
    result.threshold = threshold
    result.drifted = bool(drifted)
    return result


def _table_distances(
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


def _ks_asymp_pvalue(ks_stat: float, n1: int, n2: int) -> float:
    """Two-sided p-value exactly as ``scipy.stats.ks_2samp(method="asymp")`` computes it."""
    larger, smaller = sorted([float(n1), float(n2)], reverse=True)
    effective_n = larger * smaller / (larger + smaller)
    return float(np.clip(stats.kstwo.sf(ks_stat, np.round(effective_n)), 0, 1))


def _categorical_stats(
    ref_keys: pd.Index, ref_counts: np.ndarray, cur_keys: pd.Index, cur_counts: np.ndarray
) -> dict[str, Any]:
    """Chi-square, Jensen-Shannon, z-test and PSI over the union of categories.

    Matches Evidently: chi-square is ``scipy.stats.chisquare(f_obs=current counts,
    f_exp=reference counts * n_cur / n_ref)`` (goodness of fit, df = categories - 1; an
    unseen category has f_exp = 0, so the statistic is inf and p = 0); Jensen-Shannon is
    ``scipy.spatial.distance.jensenshannon(ref shares, cur shares)`` with the natural log.
    """
    position = ref_keys.get_indexer(cur_keys)
    seen = position >= 0
    unseen_counts = cur_counts[~seen]
    ref_union = np.concatenate((ref_counts, np.zeros(unseen_counts.size, dtype=np.int64)))
    cur_union = np.zeros(ref_counts.size, dtype=np.int64)
    cur_union[position[seen]] = cur_counts[seen]
    cur_union = np.concatenate((cur_union, unseen_counts))
    n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())

    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = stats.chisquare(cur_union, ref_union * (n_cur / n_ref))
    ref_share, cur_share = ref_union / n_ref, cur_union / n_cur
    unseen_keys = cur_keys[~seen]
    order = np.argsort(-unseen_counts, kind="stable")[:UNSEEN_CATEGORIES_LISTED]
    return {
        "n_values": int(ref_union.size),
        "chi2_stat": float(chi2.statistic),
        "chi2_pvalue": float(chi2.pvalue),
        "js_distance": float(distance.jensenshannon(ref_share, cur_share)),
        "z_pvalue": _z_pvalue(ref_union, cur_union) if ref_union.size <= BINARY_MAX_VALUES else None,
        "psi": _psi(ref_union, cur_union),
        "unseen_share": float(unseen_counts.sum() / n_cur),
        "unseen_categories": {str(unseen_keys[i]): int(unseen_counts[i]) for i in order},
    }


def _z_pvalue(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Evidently's two-sided two-proportion z-test over (at most) two values.

    Evidently counts the values other than the smallest one; |z| is the same whichever
    value is counted, so the first is used.
    """
    if ref_counts.size == 1:
        return 1.0  # one value on both sides: Evidently returns p = 1
    n1, n2 = int(ref_counts.sum()), int(cur_counts.sum())
    p1 = float(n1 - ref_counts[0]) / n1
    p2 = float(n2 - cur_counts[0]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    ref_share = ref_counts / ref_counts.sum()
    cur_share = cur_counts / cur_counts.sum()
    ref_share = np.where(ref_share == 0, PSI_EMPTY_BIN_SHARE, ref_share)
    cur_share = np.where(cur_share == 0, PSI_EMPTY_BIN_SHARE, cur_share)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def _bin_counts(unique: np.ndarray, cum: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in bins (-inf, e1), [e1, e2), ..., [ek, inf) from a sorted (value, <=count) table."""
    rank = np.searchsorted(unique, edges, side="left")
    below = np.where(rank > 0, cum[rank - 1], 0)
    return np.diff(np.concatenate(([0], below, [cum[-1]]))).astype(np.int64)


def _sorted_runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how many elements are <= each."""
    ends = np.append(np.flatnonzero(sorted_values[1:] != sorted_values[:-1]), sorted_values.size - 1)
    return sorted_values[ends], (ends + 1).astype(np.int64)


def _numeric_array(series: pd.Series, name: str, side: str) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(series.dtype):
        raise TypeError(f"{side} column {name!r} must be numeric, got dtype {series.dtype}")
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def _category_counts(series: pd.Series) -> tuple[pd.Index, np.ndarray, int]:
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


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
