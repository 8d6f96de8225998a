"""The rollout's always-valid tests, checked against references on simulated data.

The closed-form mixture likelihood ratio against numerical integration (scipy.integrate.quad);
the false-positive rate under the null over 30 daily looks against alpha, beside a naive
fixed-horizon z-test read at every look (computed here from scratch, with scipy's normal
tail), which is what issue 14 forbids; power and time to a breach under a canary three times
as bad as the champion; confidence-sequence coverage at every look at once; and quality() on
simulated labels. Every simulation is seeded and vectorised (experiments x looks in one array).
"""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import brier_score_loss, log_loss

from keel.rollout.sequential import (
    always_valid_p,
    breach_statistic,
    compare_means,
    error_rate_breach,
    mixture_log_lr,
    per_row_loss,
    quality,
)

ALPHA = 0.05
EXPERIMENTS = 2000
LOOKS = 30
# Three Monte-Carlo standard errors of a rate of alpha over EXPERIMENTS runs (about 0.015).
MC_TOL = 3 * math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)


def _mixture_lr_by_quadrature(estimate, variance, tau, theta0, one_sided):
    """Lambda as the integral of the normal likelihood ratio against the mixing density."""
    sd = math.sqrt(variance)

    def integrand(theta):
        ratio = math.exp(stats.norm.logpdf(estimate, theta, sd) - stats.norm.logpdf(estimate, theta0, sd))
        weight = stats.norm.pdf(theta, theta0, tau) * (2.0 if one_sided else 1.0)
        return ratio * weight

    lower = theta0 if one_sided else theta0 - 40 * tau
    peak = (estimate * tau**2 + theta0 * variance) / (tau**2 + variance)  # the integrand's mode
    points = [p for p in (peak,) if lower < p < theta0 + 40 * tau]
    value, _ = integrate.quad(integrand, lower, theta0 + 40 * tau, points=points or None,
                              epsabs=0, epsrel=1e-10, limit=200)
    return value


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("estimate, variance, tau, theta0", [
    (0.0, 1.0, 1.0, 0.0),
    (0.03, 1e-4, 0.02, 0.0),
    (-0.02, 4e-4, 0.05, 0.01),
    (1.5, 0.25, 0.3, 0.2),
    (0.004, 2e-6, 0.001, 0.0),
])
def test_the_closed_form_mixture_likelihood_ratio_equals_integration_over_the_mixing_normal(
        estimate, variance, tau, theta0, one_sided):
    closed = math.exp(float(mixture_log_lr(estimate, variance, tau, theta0, one_sided)))
    numeric = _mixture_lr_by_quadrature(estimate, variance, tau, theta0, one_sided)
    assert closed == pytest.approx(numeric, rel=1e-7)


def test_the_always_valid_p_value_is_the_running_minimum_of_one_over_lambda():
    log_lr = np.array([[-1.0, 0.5, 3.2, 1.0, 4.0]])
    expected = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lr[0])))
    assert np.allclose(always_valid_p(log_lr)[0], expected)
    assert always_valid_p(log_lr)[0, 0] == 1.0 and always_valid_p(log_lr)[0, 3] == pytest.approx(math.exp(-3.2))


def _naive_z_p(x_a, n_a, x_b, n_b, one_sided=False, factor=1.0):
    """The fixed-horizon two-sample z-test of rates a - factor * b (unpooled variance)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p_a, p_b = x_a / n_a, x_b / n_b
        se = np.sqrt(p_a * (1 - p_a) / n_a + factor**2 * p_b * (1 - p_b) / n_b)
        z = np.where(se > 0, (p_a - factor * p_b) / np.where(se > 0, se, 1), 0.0)
    return stats.norm.sf(z) if one_sided else 2 * stats.norm.sf(np.abs(z))


def _arms(rng, per_look, share, rate_a, rate_b, experiments=EXPERIMENTS, looks=LOOKS):
    """Cumulative (errors_a, n_a, errors_b, n_b) at each look: per_look requests a look, each
    sent to arm a with probability ``share``."""
    n_a_look = rng.binomial(per_look, share, size=(experiments, looks))
    n_b_look = per_look - n_a_look
    x_a = np.cumsum(rng.binomial(n_a_look, rate_a), axis=1)
    x_b = np.cumsum(rng.binomial(n_b_look, rate_b), axis=1)
    return x_a, np.cumsum(n_a_look, axis=1), x_b, np.cumsum(n_b_look, axis=1)


def test_under_the_null_the_msprt_read_daily_stays_within_alpha_where_a_naive_daily_p_value_does_not():
    rng = np.random.default_rng(14)
    x_a, n_a, x_b, n_b = _arms(rng, per_look=400, share=0.5, rate_a=0.1, rate_b=0.1)
    mean_a, mean_b = x_a / n_a, x_b / n_b
    result = compare_means(n_a, mean_a, mean_a * (1 - mean_a), n_b, mean_b, mean_b * (1 - mean_b),
                           tau=0.02, alpha=ALPHA)
    msprt_rate = (always_valid_p(result["log_lr"])[:, -1] <= ALPHA).mean()
    naive = _naive_z_p(x_a, n_a, x_b, n_b)
    naive_daily_rate = (naive <= ALPHA).any(axis=1).mean()
    naive_once_rate = (naive[:, -1] <= ALPHA).mean()

    assert msprt_rate <= ALPHA + MC_TOL
    assert naive_daily_rate > 2 * ALPHA          # peeking at a fixed-horizon p-value
    assert abs(naive_once_rate - ALPHA) <= MC_TOL  # ... which is right when read once
    # The stateless look (min(1, 1/Lambda) now) rejects at the first crossing: the same decision.
    assert ((result["p_value"] <= ALPHA).any(axis=1) == (always_valid_p(result["log_lr"])[:, -1] <= ALPHA)).all()


@pytest.mark.parametrize("rate, share, per_look", [(0.01, 0.05, 2000), (0.02, 0.25, 1000), (0.002, 0.05, 5000)])
def test_at_its_null_boundary_the_error_rate_breach_stays_within_alpha_over_daily_looks(rate, share, per_look):
    rng = np.random.default_rng(int(rate * 1e4) + per_look)
    x_c, n_c, x_h, n_h = _arms(rng, per_look, share, rate_a=2.0 * rate, rate_b=rate)
    stat = breach_statistic(x_c, n_c, x_h, n_h, factor=2.0, alpha=ALPHA)
    breached = (stat["p_value"] <= ALPHA) & (x_c >= 5)
    naive = _naive_z_p(x_c, n_c, x_h, n_h, one_sided=True, factor=2.0)

    assert breached.any(axis=1).mean() <= ALPHA + MC_TOL
    assert ((naive <= ALPHA) & (x_c >= 5)).any(axis=1).mean() > 2 * ALPHA


def test_error_rate_breach_decides_as_the_vectorised_statistic_at_every_look():
    rng = np.random.default_rng(7)
    x_c, n_c, x_h, n_h = _arms(rng, per_look=1000, share=0.25, rate_a=0.04, rate_b=0.02, experiments=60)
    stat = breach_statistic(x_c, n_c, x_h, n_h, factor=2.0, alpha=ALPHA)
    expected = (stat["p_value"] <= ALPHA) & (x_c >= 5)
    for run, look in np.ndindex(x_c.shape):
        verdict = error_rate_breach(int(x_c[run, look]), int(n_c[run, look]), int(x_h[run, look]),
                                    int(n_h[run, look]), factor=2.0, min_errors=5, alpha=ALPHA)
        assert verdict.breached == expected[run, look]
        assert verdict.p_value == pytest.approx(stat["p_value"][run, look], rel=1e-12)


def test_a_canary_three_times_as_bad_breaches_with_high_power_within_a_bounded_number_of_requests():
    rng = np.random.default_rng(3)
    per_look = 1000
    x_c, n_c, x_h, n_h = _arms(rng, per_look, share=0.25, rate_a=0.06, rate_b=0.02)
    stat = breach_statistic(x_c, n_c, x_h, n_h, factor=2.0, alpha=ALPHA)
    breached = (stat["p_value"] <= ALPHA) & (x_c >= 5)
    assert breached.any(axis=1).mean() >= 0.99
    first = np.where(breached.any(axis=1), breached.argmax(axis=1) + 1, LOOKS + 1) * per_look
    # Half of the bad canaries are caught within 8,000 requests (2,000 on the canary), 95%
    # within 20,000; in one run in twenty, 16 days at 1,000 requests a day.
    assert np.quantile(first, 0.5) <= 8_000
    assert np.quantile(first, 0.95) <= 20_000

    # One stream read look by look through the public function: it flips, and stays flipped.
    stream = [error_rate_breach(int(x_c[0, k]), int(n_c[0, k]), int(x_h[0, k]), int(n_h[0, k]))
              for k in range(LOOKS)]
    flags = [v.breached for v in stream]
    assert True in flags and flags.index(True) * per_look < 20_000
    assert all(flags[flags.index(True):])
    assert "above 2x the champion's" in stream[-1].reason


@pytest.mark.parametrize("min_errors", [1, 5])
def test_a_single_canary_error_never_breaches(min_errors):
    for canary_n in (1, 2, 3, 5, 10, 50, 200, 1000, 10_000):
        for champion_errors, champion_n in ((0, 100), (0, 1_000_000), (3, 1000), (200, 100_000)):
            verdict = error_rate_breach(1, canary_n, champion_errors, champion_n, min_errors=min_errors)
            assert not verdict.breached, (canary_n, champion_errors, champion_n, verdict.reason)


def test_the_minimum_count_holds_back_a_rejection_on_too_few_errors():
    rejected = error_rate_breach(8, 100, 10, 10_000, min_errors=1)
    held = error_rate_breach(8, 100, 10, 10_000, min_errors=10)
    assert rejected.breached and rejected.p_value <= ALPHA
    assert not held.breached and held.p_value == rejected.p_value
    assert "fewer than the minimum 10" in held.reason


def test_a_canary_no_worse_than_the_champion_does_not_breach_and_no_traffic_is_no_evidence():
    assert not error_rate_breach(20, 1000, 400, 20_000).breached   # same rate, 2%
    empty = error_rate_breach(0, 0, 5, 1000)
    assert not empty.breached and empty.p_value == 1.0 and "no evidence yet" in empty.reason


def test_the_verdict_is_frozen_and_json_ready_with_its_evidence():
    verdict = error_rate_breach(30, 1000, 100, 19_000)
    as_json = json.loads(json.dumps(verdict.to_dict()))
    evidence = as_json["evidence"]
    assert as_json["breached"] is True
    assert (evidence["canary_errors"], evidence["canary_n"], evidence["champion_errors"]) == (30, 1000, 100)
    assert evidence["rate_canary"] == pytest.approx(0.03)
    assert evidence["rate_champion"] == pytest.approx(100 / 19_000)
    assert evidence["statistic"] == pytest.approx(0.03 - 2 * 100 / 19_000)
    lower, upper = evidence["interval"]
    assert lower < evidence["statistic"] < upper
    assert evidence["p_value"] == verdict.p_value
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.breached = False
    with pytest.raises(ValueError):
        error_rate_breach(5, 4, 0, 10)


def test_the_confidence_sequence_covers_the_true_difference_at_every_look_at_once():
    rng = np.random.default_rng(11)
    theta, sd_a, sd_b = 0.3, 1.0, 2.0
    n_a_look = rng.binomial(300, 0.3, size=(EXPERIMENTS, LOOKS))
    n_b_look = 300 - n_a_look
    # Sums of n normal rows are normal with n times the variance; the sums of squares follow
    # from a chi-square, so each arm's running sample variance is exact without drawing rows.
    sum_a = np.cumsum(rng.normal(theta * n_a_look, sd_a * np.sqrt(n_a_look)), axis=1)
    sum_b = np.cumsum(rng.normal(0.0, sd_b * np.sqrt(n_b_look)), axis=1)
    n_a, n_b = np.cumsum(n_a_look, axis=1), np.cumsum(n_b_look, axis=1)
    var_a = sd_a**2 * rng.chisquare(n_a - 1) / (n_a - 1)
    var_b = sd_b**2 * rng.chisquare(n_b - 1) / (n_b - 1)
    result = compare_means(n_a, sum_a / n_a, var_a, n_b, sum_b / n_b, var_b, tau=0.2, alpha=ALPHA)
    covered = ((result["lower"] <= theta) & (theta <= result["upper"])).all(axis=1)
    assert covered.mean() >= 1 - ALPHA - MC_TOL
    # ... where a fixed-horizon 95% interval read at every look misses far more often.
    half = stats.norm.ppf(1 - ALPHA / 2) * np.sqrt(result["variance"])
    naive = ((result["estimate"] - half <= theta) & (theta <= result["estimate"] + half)).all(axis=1)
    assert naive.mean() < 1 - 2 * ALPHA


@pytest.mark.parametrize("rate, share, per_look, ratio", [
    (0.01, 0.05, 2000, 1.0), (0.01, 0.05, 2000, 3.0), (0.002, 0.05, 5000, 2.0), (0.05, 0.5, 500, 3.0),
])
def test_the_error_rate_interval_covers_the_true_excess_at_every_look_at_once(rate, share, per_look, ratio):
    # Regression: with the free plug-in variance alone, canaries with no error yet in their
    # first hundred requests got a near-zero width and the sequence covered 93% of runs.
    rng = np.random.default_rng(5)
    x_c, n_c, x_h, n_h = _arms(rng, per_look, share, rate_a=ratio * rate, rate_b=rate)
    stat = breach_statistic(x_c, n_c, x_h, n_h, factor=2.0, alpha=ALPHA)
    theta = (ratio - 2.0) * rate
    covered = ((stat["lower"] <= theta) & (theta <= stat["upper"])).all(axis=1)
    assert covered.mean() >= 1 - ALPHA - MC_TOL


def test_per_row_losses_average_to_sklearn_log_loss_and_brier_score():
    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.uniform(0, 1, 500), [0.0, 1.0]])
    labels = np.concatenate([rng.binomial(1, scores[:500]), [1, 0]])
    assert per_row_loss(scores, labels, "log_loss").mean() == pytest.approx(log_loss(labels, np.clip(scores, 1e-15, 1 - 1e-15)))
    assert per_row_loss(scores, labels, "brier").mean() == pytest.approx(brier_score_loss(labels, scores))
    with pytest.raises(ValueError):
        per_row_loss(scores, labels, "accuracy")


def _labelled_arm(rng, n, shift=0.0):
    """Matured labels for n rows and a model's scores: the champion is calibrated; ``shift``
    moves the canary's logits (a miscalibrated or shifted model)."""
    logit = rng.normal(-1.0, 1.2, n)
    labels = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return 1 / (1 + np.exp(-(logit + shift))), labels


@pytest.mark.parametrize("loss", ["log_loss", "brier"])
def test_quality_finds_a_shifted_canary_worse_and_the_champion_better_than_it(loss):
    rng = np.random.default_rng(21)
    canary = _labelled_arm(rng, 3000, shift=0.8)
    champion = _labelled_arm(rng, 3000)
    worse = quality(*canary, *champion, loss=loss)
    better = quality(*champion, *canary, loss=loss)
    assert worse.decision == "worse" and worse.worse and worse.p_value <= ALPHA
    assert better.decision == "better"
    evidence = json.loads(json.dumps(worse.to_dict()))["evidence"]
    assert evidence["canary_mean_loss"] == pytest.approx(per_row_loss(*canary, loss).mean())
    assert evidence["interval"][0] > 0 and evidence["canary_n"] == 3000


def test_quality_waits_for_the_minimum_number_of_labels():
    rng = np.random.default_rng(22)
    verdict = quality(*_labelled_arm(rng, 50, shift=3.0), *_labelled_arm(rng, 50), min_labels=100)
    assert verdict.decision == "undecided" and "too few matured labels" in verdict.reason


def test_equal_models_stay_undecided_over_daily_looks_at_the_stated_rate():
    rng = np.random.default_rng(23)
    per_look = 100
    rows = per_look * LOOKS
    scores, labels = _labelled_arm(rng, EXPERIMENTS * 2 * rows)
    losses = per_row_loss(scores, labels).reshape(EXPERIMENTS, 2, LOOKS, per_look)
    n = per_look * np.arange(1, LOOKS + 1)
    sums = np.cumsum(losses.sum(axis=3), axis=2)
    squares = np.cumsum((losses**2).sum(axis=3), axis=2)
    means = sums / n
    variances = (squares - n * means**2) / (n - 1)
    tau = 0.1 * np.sqrt((variances[:, 0] + variances[:, 1]) / 2)   # quality()'s default tau_sd
    result = compare_means(n, means[:, 0], variances[:, 0], n, means[:, 1], variances[:, 1],
                           tau=tau, alpha=ALPHA)
    decided = (result["p_value"] <= ALPHA) & (n >= 100)
    assert decided.any(axis=1).mean() <= ALPHA + MC_TOL

    # quality() itself decides as the vectorised statistic on the same rows, for a few runs.
    flat = losses  # (experiment, arm, look, row)
    flat_scores = scores.reshape(EXPERIMENTS, 2, rows)
    flat_labels = labels.reshape(EXPERIMENTS, 2, rows)
    for run in range(40):
        for look in (0, 9, LOOKS - 1):
            upto = per_look * (look + 1)
            verdict = quality(flat_scores[run, 0, :upto], flat_labels[run, 0, :upto],
                              flat_scores[run, 1, :upto], flat_labels[run, 1, :upto])
            assert (verdict.decision != "undecided") == decided[run, look]
            assert verdict.evidence["statistic"] == pytest.approx(
                flat[run, 0, :look + 1].mean() - flat[run, 1, :look + 1].mean())
