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

The reference is a :class:`keel.monitoring.profile.ReferenceProfile`: how it stores a numeric
column, and the bounds that storage puts on the KS statistic and the Wasserstein distance, are
described there.

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

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from keel.core.plain import json_ready
from keel.monitoring.profile import (
    SMALL_REFERENCE_ROWS,
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
    bin_counts,
    category_counts,
    numeric_array,
    sorted_runs,
    table_distances,
)

# Evidently 0.7.23 defaults (stattests/registry.py `_get_default_stattest` and the tests).
DISCRETE_MAX_VALUES = 5
BINARY_MAX_VALUES = 2
PVALUE_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
WASSERSTEIN_MIN_NORM = 0.001
DEFAULT_DRIFT_SHARE = 0.5

PSI_EMPTY_BIN_SHARE = 1e-4
PSI_THRESHOLD = 0.2

NO_CURRENT_VALUES = "no_current_values"
UNSEEN_CATEGORIES_LISTED = 10
METHODS = ("evidently", "psi")


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
        return json_ready(
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
        _compare_numeric(name, ref, numeric_array(current[name], name, "current"), method)
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

    cur_unique, cur_cum = sorted_runs(cur)
    ks_stat, wasserstein = table_distances(ref, cur_unique, cur_cum)
    norm = max(ref.std, WASSERSTEIN_MIN_NORM)
    result.ks_stat = ks_stat
    result.ks_pvalue = _ks_asymp_pvalue(ks_stat, ref.n, m)
    result.ks_stat_error_bound = ref.ks_stat_error_bound
    result.wasserstein_norm = wasserstein / norm
    result.wasserstein_norm_error_bound = ref.wasserstein_error_bound / norm
    result.psi = _psi(ref.psi_counts, bin_counts(cur_unique, cur_cum, ref.psi_edges))

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
    keys, counts, n_null = category_counts(series)
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


