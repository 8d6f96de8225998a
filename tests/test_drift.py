"""Drift statistics: agreement with scipy, with Evidently's DataDriftPreset, and JSON profiles."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from keel.monitoring.drift import (
    NO_CURRENT_VALUES,
    PSI_EMPTY_BIN_SHARE,
    ReferenceProfile,
    compare,
)

os.environ.setdefault("DO_NOT_TRACK", "true")  # Evidently reads it when it reports usage

from evidently import DataDefinition, Dataset, Report  # noqa: E402
from evidently.presets import DataDriftPreset  # noqa: E402

# Evidently's per-column rule for each default method (stattests/*.py in evidently 0.7.23).
EVIDENTLY_DRIFTED = {
    "K-S p_value": lambda score, threshold: score <= threshold,
    "chi-square p_value": lambda score, threshold: score < threshold,
    "Z-test p_value": lambda score, threshold: score < threshold,
    "Wasserstein distance (normed)": lambda score, threshold: score >= threshold,
    "Jensen-Shannon distance": lambda score, threshold: score >= threshold,
}


def evidently_columns(reference, current, numeric, categorical):
    """Per-column (method, score, drifted) and the drifted-column count from Evidently."""
    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    columns, drifted_count = {}, None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"] == "evidently:metric_v2:ValueDrift":
            rule = EVIDENTLY_DRIFTED[config["method"]]
            score = metric["value"]
            columns[config["column"]] = (config["method"], score, rule(score, config["threshold"]))
        elif config["type"] == "evidently:metric_v2:DriftedColumnsCount":
            drifted_count = int(metric["value"]["count"])
    return columns, drifted_count


def one_column(values, name="x"):
    return pd.DataFrame({name: values})


# --- agreement with scipy -------------------------------------------------------------


@pytest.mark.parametrize(
    "reference_values, current_values",
    [
        pytest.param(
            np.random.default_rng(1).normal(size=1_500),
            np.random.default_rng(2).normal(0.1, 1.0, size=700),
            id="continuous-small",
        ),
        pytest.param(
            np.round(np.random.default_rng(3).gamma(2.0, 15.0, size=120_000)),
            np.round(np.random.default_rng(4).gamma(2.1, 15.0, size=30_000)),
            id="integer-minutes-with-ties",
        ),
    ],
)
def test_ks_equals_scipy_asymp_when_the_reference_is_stored_exactly(reference_values, current_values):
    profile = ReferenceProfile.from_frame(one_column(reference_values), numeric=["x"])
    assert profile.numeric["x"].exact

    result = compare(profile, one_column(current_values))["x"]

    expected = stats.ks_2samp(reference_values, current_values, method="asymp")
    assert result.ks_stat == pytest.approx(expected.statistic, abs=1e-9)
    assert result.ks_pvalue == pytest.approx(expected.pvalue, abs=1e-9, rel=1e-9)
    assert result.ks_stat_error_bound == 0.0


@pytest.mark.parametrize("family", ["normal", "lognormal"])
def test_ks_and_wasserstein_stay_within_the_stored_bounds_when_quantile_compressed(family):
    rng = np.random.default_rng(5)
    draw = {"normal": lambda n, shift: rng.normal(shift, 1.0, n),
            "lognormal": lambda n, shift: rng.lognormal(shift, 1.0, n)}[family]
    reference_values, current_values = draw(200_000, 0.0), draw(20_000, 0.02)
    profile = ReferenceProfile.from_frame(one_column(reference_values), numeric=["x"], n_quantiles=1_000)
    stored = profile.numeric["x"]
    assert not stored.exact
    assert stored.values.size <= 2 * 1_000 + 1

    result = compare(profile, one_column(current_values))["x"]

    expected = stats.ks_2samp(reference_values, current_values, method="asymp")
    bound = result.ks_stat_error_bound
    assert 0 < bound < 1 / 1_000
    assert abs(result.ks_stat - expected.statistic) <= bound
    en = round(200_000 * 20_000 / 220_000)
    assert stats.kstwo.sf(result.ks_stat + bound, en) <= expected.pvalue
    assert expected.pvalue <= stats.kstwo.sf(max(result.ks_stat - bound, 0.0), en)
    exact_norm = stats.wasserstein_distance(reference_values, current_values) / np.std(reference_values)
    assert abs(result.wasserstein_norm - exact_norm) <= result.wasserstein_norm_error_bound
    assert result.wasserstein_norm_error_bound < 1e-3


def test_normalized_wasserstein_equals_scipy_over_the_population_std_of_the_reference():
    rng = np.random.default_rng(6)
    reference_values, current_values = rng.exponential(2.0, 1_800), rng.exponential(2.3, 900)
    profile = ReferenceProfile.from_frame(one_column(reference_values), numeric=["x"])

    result = compare(profile, one_column(current_values))["x"]

    expected = stats.wasserstein_distance(reference_values, current_values) / np.std(reference_values, ddof=0)
    assert result.wasserstein_norm == pytest.approx(expected, rel=1e-9)


def test_wasserstein_over_a_constant_reference_is_divided_by_evidentlys_floor_of_0_001():
    reference_values = np.full(2_000, 7.0)
    current_values = np.random.default_rng(7).normal(7.0, 0.01, 500)
    profile = ReferenceProfile.from_frame(one_column(reference_values), numeric=["x"])

    result = compare(profile, one_column(current_values))["x"]

    expected = stats.wasserstein_distance(reference_values, current_values) / 0.001
    assert result.wasserstein_norm == pytest.approx(expected, rel=1e-9)
    assert result.drifted


def test_chisquare_and_jensen_shannon_equal_scipy_on_the_aligned_category_counts():
    rng = np.random.default_rng(8)
    categories = ["AA", "B6", "DL", "EV", "UA", "WN"]
    reference = pd.Series(rng.choice(categories, 5_000, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]))
    current = pd.Series(rng.choice(categories + ["OO"], 1_200, p=[0.25, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05]))
    profile = ReferenceProfile.from_frame(pd.DataFrame({"carrier": reference}), categorical=["carrier"])

    result = compare(profile, pd.DataFrame({"carrier": current}))["carrier"]

    union = categories + ["OO"]
    ref_counts = reference.value_counts().reindex(union, fill_value=0).to_numpy()
    cur_counts = current.value_counts().reindex(union, fill_value=0).to_numpy()
    expected_js = distance.jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    assert result.js_distance == pytest.approx(expected_js, rel=1e-12)
    # An unseen category has an expected count of 0: scipy gives an infinite statistic.
    assert math.isinf(result.chi2_stat) and result.chi2_pvalue == 0.0
    assert result.unseen_share == pytest.approx(cur_counts[-1] / cur_counts.sum())

    seen = current[current != "OO"]
    seen_result = compare(profile, pd.DataFrame({"carrier": seen}))["carrier"]
    seen_counts = seen.value_counts().reindex(categories, fill_value=0).to_numpy()
    expected = stats.chisquare(seen_counts, ref_counts[:-1] * (seen_counts.sum() / ref_counts.sum()))
    assert seen_result.chi2_stat == pytest.approx(expected.statistic, rel=1e-12)
    assert seen_result.chi2_pvalue == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_numeric_psi_equals_a_hand_computation_over_reference_deciles():
    reference = one_column(np.arange(100.0))  # deciles 9.9, 19.8, ...: ten values per bin
    current = one_column(np.array([0.5] * 20 + [95.0] * 30))  # 40 % in the first bin, 60 % in the last
    profile = ReferenceProfile.from_frame(reference, numeric=["x"])

    result = compare(profile, current, method="psi")["x"]

    empty = PSI_EMPTY_BIN_SHARE
    by_hand = (0.4 - 0.1) * math.log(0.4 / 0.1) + (0.6 - 0.1) * math.log(0.6 / 0.1) + 8 * (
        (empty - 0.1) * math.log(empty / 0.1)
    )
    assert result.psi == pytest.approx(by_hand, rel=1e-12)
    assert result.stattest == "psi" and result.drifted


def test_categorical_psi_equals_a_hand_computation_with_an_unseen_category():
    reference = pd.DataFrame({"origin": ["EWR"] * 50 + ["JFK"] * 30 + ["LGA"] * 20})
    current = pd.DataFrame({"origin": ["EWR"] * 40 + ["JFK"] * 30 + ["LGA"] * 20 + ["BOS"] * 10})
    profile = ReferenceProfile.from_frame(reference, categorical=["origin"])

    result = compare(profile, current)["origin"]

    empty = PSI_EMPTY_BIN_SHARE
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - empty) * math.log(0.1 / empty)
    assert result.psi == pytest.approx(by_hand, rel=1e-12)


# --- decisions --------------------------------------------------------------------------


def flights_like(rng, rows, *, delay_shift=0.0, carrier_p=(0.4, 0.3, 0.2, 0.1), extra_carrier=None):
    carriers = ["UA", "B6", "EV", "DL"]
    p = list(carrier_p)
    if extra_carrier:
        carriers, p = carriers + [extra_carrier], [share * 0.9 for share in p] + [0.1]
    return pd.DataFrame(
        {
            "dep_delay": rng.gamma(2.0, 10.0, rows) + delay_shift,
            "distance": rng.lognormal(6.5, 0.6, rows),
            "carrier": rng.choice(carriers, rows, p=p),
        }
    )


@pytest.mark.parametrize("reference_rows", [800, 20_000])
def test_two_samples_of_the_same_distribution_do_not_drift(reference_rows):
    rng = np.random.default_rng(9)
    profile = ReferenceProfile.from_frame(
        flights_like(rng, reference_rows), numeric=["dep_delay", "distance"], categorical=["carrier"]
    )

    report = compare(profile, flights_like(rng, 3_000))

    assert [f.drifted for f in report.features] == [False, False, False]
    assert not report.dataset_drifted


@pytest.mark.parametrize("reference_rows, stattest", [(800, "ks"), (20_000, "wasserstein")])
def test_a_shifted_mean_drifts(reference_rows, stattest):
    rng = np.random.default_rng(10)
    reference = flights_like(rng, reference_rows)
    profile = ReferenceProfile.from_frame(reference, numeric=["dep_delay", "distance"])

    report = compare(profile, flights_like(rng, 3_000, delay_shift=8.0))

    assert report["dep_delay"].stattest == stattest
    assert report["dep_delay"].drifted
    assert not report["distance"].drifted


@pytest.mark.parametrize("reference_rows", [800, 20_000])
def test_a_broken_sensor_repeating_one_value_drifts(reference_rows):
    rng = np.random.default_rng(11)
    reference = flights_like(rng, reference_rows)
    profile = ReferenceProfile.from_frame(reference, numeric=["dep_delay"])
    stuck = one_column(np.full(2_000, reference["dep_delay"].median()), "dep_delay")

    result = compare(profile, stuck)["dep_delay"]

    assert result.drifted
    assert result.ks_stat > 0.45  # the whole current mass sits at the reference median


def test_a_never_seen_category_drifts_and_reports_its_share():
    rng = np.random.default_rng(12)
    profile = ReferenceProfile.from_frame(flights_like(rng, 20_000), categorical=["carrier"])

    result = compare(profile, flights_like(rng, 3_000, extra_carrier="OO"))["carrier"]

    assert result.stattest == "jensenshannon" and result.drifted
    assert result.unseen_share == pytest.approx(0.1, abs=0.02)
    assert list(result.unseen_categories) == ["OO"]


def test_the_dataset_drifts_when_half_of_the_columns_drift():
    rng = np.random.default_rng(13)
    profile = ReferenceProfile.from_frame(flights_like(rng, 5_000), numeric=["dep_delay", "distance"])

    report = compare(profile, flights_like(rng, 2_000, delay_shift=8.0))

    assert (report.n_drifted, report.share_drifted, report.dataset_drifted) == (1, 0.5, True)


def mixed_frame(rng, rows, *, drifted):
    """Continuous, 5-valued, binary, constant and categorical columns; `drifted` shifts some."""
    shift = 1.0 if drifted else 0.0
    carriers = ["UA", "B6", "EV", "DL"] + (["OO"] if drifted else [])
    frame = pd.DataFrame(
        {
            "dep_delay": rng.gamma(2.0, 10.0, rows) + 6.0 * shift,
            "distance": rng.lognormal(6.5, 0.6, rows),
            "air_time": np.round(rng.normal(150, 40, rows)),
            "seats_class": rng.choice(
                [1.0, 2.0, 3.0, 4.0], rows, p=[0.4 - 0.15 * shift, 0.3, 0.2, 0.1 + 0.15 * shift]
            ),
            "is_weekend": rng.choice([0.0, 1.0], rows, p=[0.7, 0.3]),
            "stops": rng.choice([0.0, 1.0, 2.0, 3.0, 4.0], rows, p=[0.3, 0.3, 0.2, 0.1, 0.1]),
            "carrier": rng.choice(carriers, rows),
            "origin": rng.choice(["EWR", "JFK", "LGA"], rows, p=[0.4, 0.35, 0.25]),
            "cancelled": rng.choice(["no", "yes"], rows, p=[0.95 - 0.05 * shift, 0.05 + 0.05 * shift]),
            "diverted": "no",
        }
    )
    frame.loc[frame.index[:11], "dep_delay"] = np.nan
    frame.loc[frame.index[5:9], "origin"] = None
    return frame


NUMERIC = ["dep_delay", "distance", "air_time", "seats_class", "is_weekend", "stops"]
CATEGORICAL = ["carrier", "origin", "cancelled", "diverted"]


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(
    "reference_rows, current_rows",
    [(700, 600), (1_001, 3_000), (30_000, 1_000)],
    ids=["ks-chisquare-z", "just-above-1000", "wasserstein-jensenshannon"],
)
def test_decisions_agree_with_evidentlys_data_drift_preset(reference_rows, current_rows):
    rng = np.random.default_rng(14)
    reference = mixed_frame(rng, reference_rows, drifted=False)
    current = mixed_frame(rng, current_rows, drifted=True)
    profile = ReferenceProfile.from_frame(reference, numeric=NUMERIC, categorical=CATEGORICAL)

    report = compare(profile, current)
    evidently, evidently_drifted = evidently_columns(reference, current, NUMERIC, CATEGORICAL)

    ours = {f.feature: f.drifted for f in report.features}
    assert ours == {column: decision for column, (_, _, decision) in evidently.items()}
    assert 0 < report.n_drifted < len(ours)  # both outcomes occur, so the check can fail
    assert report.n_drifted == evidently_drifted
    for feature in report.features:
        _, score, _ = evidently[feature.feature]
        tolerance = 1e-9 * max(1.0, abs(score)) + (feature.wasserstein_norm_error_bound or 0.0)
        assert abs(feature.drift_score - score) <= tolerance, feature.feature


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # Evidently, on inf
@pytest.mark.parametrize(
    "reference_values, stattest",
    [
        (np.arange(1_000.0), "ks"),
        (np.arange(1_001.0), "wasserstein"),
        (np.append(np.arange(1_000.0), [np.nan, np.inf]), "ks"),  # Evidently counts finite values
    ],
    ids=["1000", "1001", "1000-plus-nan-and-inf"],
)
def test_the_test_switches_when_the_reference_has_more_than_1000_finite_values(reference_values, stattest):
    current_values = np.random.default_rng(15).uniform(0, 1_000, 400)
    profile = ReferenceProfile.from_frame(one_column(reference_values), numeric=["x"])

    result = compare(profile, one_column(current_values))["x"]

    evidently, _ = evidently_columns(one_column(reference_values), one_column(current_values), ["x"], [])
    assert result.stattest == stattest
    assert result.drift_score == pytest.approx(evidently["x"][1], rel=1e-9)


# --- profiles and missing values --------------------------------------------------------


def test_a_profile_round_trips_through_json_and_gives_identical_results():
    rng = np.random.default_rng(16)
    reference = mixed_frame(rng, 50_000, drifted=False)
    reference["gate"] = rng.integers(1, 40, len(reference))
    current = mixed_frame(rng, 2_000, drifted=True)
    current["gate"] = rng.integers(1, 45, len(current))
    profile = ReferenceProfile.from_frame(reference, numeric=NUMERIC, categorical=CATEGORICAL + ["gate"])
    assert not profile.numeric["distance"].exact and profile.numeric["air_time"].exact

    text = json.dumps(profile.to_dict(), allow_nan=False)
    restored = ReferenceProfile.from_dict(json.loads(text))

    assert restored.to_dict() == profile.to_dict()
    assert restored.categorical["gate"].categories == profile.categorical["gate"].categories
    assert compare(restored, current).to_dict() == compare(profile, current).to_dict()


def test_nulls_are_left_out_of_the_statistics_and_reported_as_shares():
    rng = np.random.default_rng(17)
    reference_values = rng.normal(size=1_500)
    current_values = rng.normal(0.2, 1.0, 800)
    reference = pd.DataFrame({"x": reference_values, "c": rng.choice(["a", "b", "c"], 1_500),
                              "terminal": rng.choice([1.0, 4.0, 8.0], 1_500)})
    current = pd.DataFrame({"x": current_values, "c": rng.choice(["a", "b", "c"], 800),
                            "terminal": rng.choice([1.0, 4.0, 8.0], 800)})
    reference.loc[:149, "x"] = np.nan
    current.loc[:199, "x"] = np.nan
    current.loc[200:209, "x"] = np.inf  # Evidently drops infinities with the NaNs
    current.loc[:79, "c"] = None
    current.loc[:39, "terminal"] = np.inf  # a float-coded category: Evidently drops inf here too
    profile = ReferenceProfile.from_frame(reference, numeric=["x"], categorical=["c", "terminal"])

    report = compare(profile, current)

    numeric, categorical = report["x"], report["c"]
    assert (numeric.null_share_ref, numeric.null_share_cur) == (0.1, 0.2625)
    assert (numeric.n_ref, numeric.n_cur) == (1_350, 590)
    expected = stats.ks_2samp(reference_values[150:], current_values[210:], method="asymp")
    assert numeric.ks_stat == pytest.approx(expected.statistic, abs=1e-12)
    assert categorical.null_share_cur == 0.1 and categorical.n_cur == 720
    assert categorical.unseen_share == 0.0
    assert report["terminal"].null_share_cur == 0.05 and report["terminal"].unseen_share == 0.0


def test_an_all_null_current_column_is_flagged_and_not_drifted():
    rng = np.random.default_rng(18)
    reference = pd.DataFrame({"x": rng.normal(size=2_000), "y": rng.normal(size=2_000),
                              "c": rng.choice(["a", "b"], 2_000)})
    current = pd.DataFrame({"x": np.full(500, np.nan), "y": rng.normal(3.0, 1.0, 500), "c": [None] * 500})
    profile = ReferenceProfile.from_frame(reference, numeric=["x", "y"], categorical=["c"])

    report = compare(profile, current)

    for name in ("x", "c"):
        feature = report[name]
        assert feature.flag == NO_CURRENT_VALUES
        assert feature.null_share_cur == 1.0 and feature.n_cur == 0
        assert feature.drift_score is None and not feature.drifted
    assert report["y"].drifted and report.flagged == ["x", "c"]
    json.dumps(report.to_dict(), allow_nan=False)
    assert report.to_frame().loc["x", "flag"] == NO_CURRENT_VALUES
