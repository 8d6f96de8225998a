"""Always-valid sequential tests for a staged rollout: the canary's error rate and its quality.

Which test: the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis
and Walsh (2017, "Peeking at A/B tests: why it matters, and what to do about it", KDD; the
"always valid inference" of their 2022 Operations Research paper), in its normal-mixture form
for the difference of two means with a plug-in variance.

Why: a guardrail sensor looks at the canary every evaluation interval, and the quality decision
is re-read every day as labels mature. A fixed-horizon p-value is valid only when read once, at a
sample size fixed in advance; read at every look and acted on the first time it dips below alpha,
its false-positive rate grows with the number of looks (about 0.2 to 0.3 after 30 daily looks at
alpha = 0.05, and to 1 in the limit). The mSPRT's statistic is a (super)martingale under the null,
so by Ville's inequality the chance that it EVER crosses 1/alpha is at most alpha: its p-value
``min(1, 1/Lambda_n)`` may be read after every request and acted on at once.

The construction. With ``theta_hat`` the difference of the two arms' means and
``V = s_a^2/n_a + s_b^2/n_b`` its plug-in variance, the likelihood ratio of ``theta`` against
``theta0`` is that of a normal ``theta_hat ~ N(theta, V)``; mixing ``theta ~ N(theta0, tau^2)``
gives in closed form::

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))),   d = theta_hat - theta0

and the one-sided form (H0: theta <= theta0), mixing over the half-normal on theta > theta0::

    Lambda_+ = 2 * Phi(d tau / sqrt(V (V + tau^2))) * Lambda

which is a supermartingale for every theta <= theta0, so it keeps the bound on the whole
composite null. Inverting the two-sided test gives the confidence sequence
``theta_hat +/- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``, which
covers the true difference at every look at once with probability at least 1 - alpha.

Assumptions: observations are independent (an entity is one row; the assignment hash makes the
arms random samples of the traffic); each arm's share of traffic is constant over the looks
being combined (so evidence is counted since the current stage began; the share changes between
stages); the arms' means are close enough to normal at the sample sizes where a decision is
possible (hence the minimum counts), and the plug-in variance is close to the true one. tau is
the scale of differences the test is tuned to find quickly; any tau gives a valid test.

Uses: :func:`error_rate_breach` (the guardrail "error rate above twice the champion's, with a
minimum count") and :func:`quality` (canary worse, better or undecided on per-row log loss or
Brier score of matured labels). The vectorised cores (:func:`mixture_log_lr`,
:func:`compare_means`, :func:`breach_statistic`) take arrays, so a simulation of thousands of
experiments at many looks costs one call.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from keel.core.plain import json_ready

TEST_NAME = "mSPRT (normal mixture, Johari et al. 2017)"
LOSSES = ("log_loss", "brier")
# A log loss at a score of exactly 0 or 1 is infinite; clip as sklearn's log_loss does.
_EPS = 1e-15


# ------------------------------------------------------------------------------------------
# The vectorised core


def mixture_log_lr(estimate, variance, tau, theta0=0.0, one_sided: bool = False) -> np.ndarray:
    """``log Lambda`` of the normal-mixture SPRT for ``theta_hat ~ N(theta, variance)``.

    Two-sided: mixing ``theta ~ N(theta0, tau^2)``; one-sided (H0: theta <= theta0): mixing the
    half-normal on ``theta > theta0``. Arrays broadcast; where the variance is not positive
    (no data yet) there is no evidence, ``log Lambda = 0``.
    """
    d = np.asarray(estimate, dtype=float) - theta0
    v = np.asarray(variance, dtype=float)
    t2 = np.broadcast_to(np.asarray(tau, dtype=float) ** 2, np.broadcast(d, v).shape)
    ok = (v > 0) & np.isfinite(v) & np.isfinite(d) & (t2 > 0)
    v_safe = np.where(ok, v, 1.0)
    t2_safe = np.where(ok, t2, 1.0)
    d_safe = np.where(ok, d, 0.0)
    out = 0.5 * np.log(v_safe / (v_safe + t2_safe)) + d_safe**2 * t2_safe / (2 * v_safe * (v_safe + t2_safe))
    if one_sided:
        out = out + math.log(2.0) + log_ndtr(d_safe * np.sqrt(t2_safe / (v_safe * (v_safe + t2_safe))))
    return np.where(ok, out, 0.0)


def always_valid_p(log_lr, axis: int = -1) -> np.ndarray:
    """The always-valid p-value along a sequence of looks: ``min(1, min over looks so far of
    1/Lambda)``. At a single look (no history kept), ``min(1, 1/Lambda)`` is valid on its own:
    rejecting at the first look where it is at most alpha is the same decision."""
    p = np.minimum(1.0, np.exp(-np.asarray(log_lr, dtype=float)))
    return np.minimum.accumulate(p, axis=axis)


def confidence_radius(variance, tau, alpha: float) -> np.ndarray:
    """Half-width of the (1 - alpha) confidence sequence for the difference (the set of theta
    the two-sided mSPRT does not reject); infinite where there is no data."""
    v = np.asarray(variance, dtype=float)
    t2 = np.asarray(tau, dtype=float) ** 2
    ok = (v > 0) & np.isfinite(v) & (t2 > 0)
    v_safe = np.where(ok, v, 1.0)
    t2_safe = np.where(ok, t2, 1.0)
    radius = np.sqrt(v_safe * (v_safe + t2_safe) / t2_safe
                     * (2 * math.log(1 / alpha) + np.log((v_safe + t2_safe) / v_safe)))
    return np.where(ok, radius, np.inf)


def compare_means(n_a, mean_a, var_a, n_b, mean_b, var_b, *, tau, alpha: float = 0.05,
                  theta0=0.0, one_sided: bool = False) -> dict[str, np.ndarray]:
    """The mSPRT of ``theta = mean_a - mean_b`` from each arm's count, mean and variance.

    Returns arrays ``estimate``, ``variance`` (the plug-in ``var_a/n_a + var_b/n_b``), ``z``,
    ``log_lr``, ``p_value`` (``min(1, 1/Lambda)`` at this look), ``lower`` and ``upper`` (the
    two-sided confidence sequence). ``tau`` is the mixing scale in the units of the means.
    """
    n_a = np.asarray(n_a, dtype=float)
    n_b = np.asarray(n_b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where((n_a > 0) & (n_b > 0),
                            np.asarray(var_a) / np.maximum(n_a, 1) + np.asarray(var_b) / np.maximum(n_b, 1), 0.0)
        estimate = np.asarray(mean_a, dtype=float) - np.asarray(mean_b, dtype=float)
        z = np.where(variance > 0, (estimate - theta0) / np.sqrt(np.where(variance > 0, variance, 1.0)), 0.0)
    log_lr = mixture_log_lr(estimate, variance, tau, theta0, one_sided)
    radius = confidence_radius(variance, tau, alpha)
    return {"estimate": estimate, "variance": variance, "z": z, "log_lr": log_lr,
            "p_value": np.minimum(1.0, np.exp(-log_lr)),
            "lower": estimate - radius, "upper": estimate + radius}


# ------------------------------------------------------------------------------------------
# The error-rate guardrail


def breach_statistic(canary_errors, canary_n, champion_errors, champion_n, *, factor: float = 2.0,
                     tau_scale: float = 1.0, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """The one-sided mSPRT of H0: ``p_canary <= factor * p_champion`` from error counts.

    The difference tested is ``theta = p_canary - factor * p_champion`` (a difference of two
    means: the canary's error indicators and ``factor`` times the champion's), H0: theta <= 0.
    Its variance is plugged in at the null boundary (``p_canary = factor * p_champion``, the two
    rates estimated jointly from the pooled counts, as a score test does): estimated there, a
    canary that is truly bad does not inflate its own variance and hide, and with rare errors
    the test stays within alpha (checked by simulation in tests/test_rollout_sequential.py).
    The mixing scale is ``tau_scale`` times the champion's error rate estimated at that
    boundary: the test is tuned to find a canary about ``factor + tau_scale`` times as bad as
    the champion (and a champion with no errors yet still leaves a positive scale).

    Arrays broadcast. Returns the smoothed rates, ``estimate``, ``variance``, ``z``,
    ``log_lr``, ``p_value`` and the two-sided confidence sequence ``lower``/``upper`` for
    theta. The sequence uses the larger of the free plug-in variance (smoothed rates) and the
    null-boundary one: with the free one alone, a canary with no error yet in its first hundred
    requests has a near-zero variance and the sequence covered only 93% of runs at alpha 0.05.
    """
    xc = np.asarray(canary_errors, dtype=float)
    nc = np.asarray(canary_n, dtype=float)
    xh = np.asarray(champion_errors, dtype=float)
    nh = np.asarray(champion_n, dtype=float)
    have = (nc > 0) & (nh > 0)
    nc1, nh1 = np.maximum(nc, 1), np.maximum(nh, 1)
    rate_c, rate_h = xc / nc1, xh / nh1
    estimate = rate_c - factor * rate_h
    # Smoothed rates (add half an error) so that a zero count never gives a zero variance.
    smooth_c, smooth_h = (xc + 0.5) / (nc + 1), (xh + 0.5) / (nh + 1)
    # The null boundary: p_c = factor * p_h, with p_h the joint estimate from all errors.
    p0 = np.clip((xc + xh + 0.5) / (factor * nc + nh + 1), 1e-12, (1 - 1e-12) / max(factor, 1.0))
    var_null = factor * p0 * (1 - factor * p0) / nc1 + factor**2 * p0 * (1 - p0) / nh1
    var_free = smooth_c * (1 - smooth_c) / nc1 + factor**2 * smooth_h * (1 - smooth_h) / nh1
    variance = np.where(have, var_null, 0.0)
    tau = tau_scale * p0
    log_lr = mixture_log_lr(estimate, variance, tau, 0.0, one_sided=True)
    z = np.where(have, estimate / np.sqrt(np.where(have, var_null, 1.0)), 0.0)
    radius = confidence_radius(np.where(have, np.maximum(var_free, var_null), 0.0), tau, alpha)
    # theta lies in [-factor, 1] whatever the data; the sequence is clipped to that range.
    lower, upper = np.maximum(estimate - radius, -factor), np.minimum(estimate + radius, 1.0)
    return {"rate_canary": rate_c, "rate_champion": rate_h, "estimate": estimate,
            "variance": variance, "z": z, "tau": tau, "log_lr": log_lr,
            "p_value": np.minimum(1.0, np.exp(-log_lr)),
            "lower": lower, "upper": upper}


@dataclass(frozen=True)
class Verdict:
    """Whether the canary breached the error-rate guardrail, and the evidence for it."""

    breached: bool
    p_value: float
    reason: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))


def error_rate_breach(canary_errors: int, canary_n: int, champion_errors: int, champion_n: int,
                      factor: float = 2.0, min_errors: int = 5, alpha: float = 0.05,
                      tau_scale: float = 1.0) -> Verdict:
    """Is the canary's error rate above ``factor`` times the champion's, on the same traffic?

    Breached when the one-sided mSPRT of H0 ``p_canary <= factor * p_champion``
    (:func:`breach_statistic`) rejects at ``alpha`` AND the canary has at least ``min_errors``
    errors: the always-valid p-value may be read at every evaluation interval, and the minimum
    count keeps one error (or two in a handful of requests, where the normal approximation does
    not yet hold) from rolling a canary back. Counts are those since the canary's current stage
    began (a constant share of traffic).
    """
    if factor <= 0 or not 0 < alpha < 1:
        raise ValueError(f"factor must be positive and alpha in (0, 1), got {factor}, {alpha}")
    counts = {"canary_errors": canary_errors, "canary_n": canary_n,
              "champion_errors": champion_errors, "champion_n": champion_n}
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    if canary_errors > canary_n or champion_errors > champion_n:
        raise ValueError(f"more errors than requests: {counts}")
    stat = {key: float(value) for key, value in breach_statistic(
        canary_errors, canary_n, champion_errors, champion_n,
        factor=factor, tau_scale=tau_scale, alpha=alpha).items()}
    rejected = stat["p_value"] <= alpha
    enough = canary_errors >= min_errors
    breached = bool(rejected and enough)
    rates = f"canary {canary_errors}/{canary_n}, champion {champion_errors}/{champion_n}"
    if canary_n == 0 or champion_n == 0:
        reason = f"no evidence yet ({rates})"
    elif breached:
        reason = (f"canary error rate {stat['rate_canary']:.4g} is above {factor:g}x the champion's "
                  f"{stat['rate_champion']:.4g} ({rates}; always-valid p = {stat['p_value']:.3g} <= {alpha:g})")
    elif rejected:
        reason = (f"the test rejects (p = {stat['p_value']:.3g}) but the canary has only {canary_errors} "
                  f"error(s), fewer than the minimum {min_errors} ({rates})")
    else:
        reason = (f"no evidence that the canary's error rate is above {factor:g}x the champion's "
                  f"({rates}; always-valid p = {stat['p_value']:.3g} > {alpha:g})")
    evidence = {
        "test": TEST_NAME + ", one-sided", "null": f"p_canary <= {factor:g} * p_champion",
        **counts, "rate_canary": stat["rate_canary"], "rate_champion": stat["rate_champion"],
        "factor": factor, "min_errors": min_errors, "alpha": alpha, "tau": stat["tau"],
        "statistic": stat["estimate"], "z": stat["z"], "log_likelihood_ratio": stat["log_lr"],
        "p_value": stat["p_value"], "interval": [stat["lower"], stat["upper"]],
        "interval_of": f"p_canary - {factor:g} * p_champion",
    }
    return Verdict(breached=breached, p_value=stat["p_value"], reason=reason, evidence=evidence)


# ------------------------------------------------------------------------------------------
# Quality on matured labels


def per_row_loss(scores, labels, loss: str = "log_loss") -> np.ndarray:
    """Each row's loss, so that a model's loss is a mean and two models' a difference of means:
    ``log_loss`` (clipped at 1e-15 as sklearn does) or ``brier`` (squared error)."""
    p = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=float)
    if p.shape != y.shape:
        raise ValueError(f"scores and labels differ in shape: {p.shape} and {y.shape}")
    if loss == "log_loss":
        p = np.clip(p, _EPS, 1 - _EPS)
        return -(y * np.log(p) + (1 - y) * np.log1p(-p))
    if loss == "brier":
        return (p - y) ** 2
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


@dataclass(frozen=True)
class QualityVerdict:
    """Whether the canary's predictions are worse, better or no different (yet) on matured labels."""

    decision: str          # "worse" | "better" | "undecided"
    p_value: float
    reason: str
    evidence: dict[str, Any]

    @property
    def worse(self) -> bool:
        return self.decision == "worse"

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))


def quality(canary_scores, canary_labels, champion_scores, champion_labels, *,
            loss: str = "log_loss", alpha: float = 0.05, tau_sd: float = 0.1,
            min_labels: int = 100) -> QualityVerdict:
    """Compare the two arms on matured labels: canary worse, better, or undecided.

    Each arm's per-row loss (:func:`per_row_loss`) on the rows it served whose labels have
    matured; the two-sided mSPRT of ``theta = mean loss(canary) - mean loss(champion)``, H0
    theta = 0, with the plug-in (sample) variances. "worse" when the always-valid p-value is at
    most alpha and the canary's loss is the higher (the confidence sequence lies above 0),
    "better" when it lies below 0, otherwise "undecided"; under equal models the chance of ever
    deciding either way, over any number of daily looks, is at most alpha. Nothing is decided
    before each arm has ``min_labels`` labels (the means must be near normal). ``tau_sd`` is the
    mixing scale in units of the per-row loss's pooled standard deviation (0.1: tuned to
    differences of about a tenth of it; typical log-loss differences between a good and a
    shifted model).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    loss_c = per_row_loss(canary_scores, canary_labels, loss)
    loss_h = per_row_loss(champion_scores, champion_labels, loss)
    n_c, n_h = int(loss_c.size), int(loss_h.size)
    mean_c = float(loss_c.mean()) if n_c else float("nan")
    mean_h = float(loss_h.mean()) if n_h else float("nan")
    var_c = float(loss_c.var(ddof=1)) if n_c > 1 else 0.0
    var_h = float(loss_h.var(ddof=1)) if n_h > 1 else 0.0
    tau = tau_sd * math.sqrt((var_c + var_h) / 2)
    stat = {key: float(value) for key, value in compare_means(
        n_c, mean_c, var_c, n_h, mean_h, var_h, tau=tau, alpha=alpha).items()}
    enough = n_c >= min_labels and n_h >= min_labels
    labels = f"{n_c} canary and {n_h} champion labels"
    if not enough:
        decision = "undecided"
        reason = f"too few matured labels to decide ({labels}; at least {min_labels} per arm)"
    elif stat["p_value"] <= alpha:
        decision = "worse" if stat["estimate"] > 0 else "better"
        reason = (f"canary {decision}: mean {loss} {mean_c:.4g} against the champion's {mean_h:.4g} "
                  f"({labels}; always-valid p = {stat['p_value']:.3g} <= {alpha:g})")
    else:
        decision = "undecided"
        reason = (f"no difference found yet: mean {loss} {mean_c:.4g} against {mean_h:.4g} "
                  f"({labels}; always-valid p = {stat['p_value']:.3g} > {alpha:g})")
    evidence = {
        "test": TEST_NAME + ", two-sided", "null": f"mean {loss}(canary) = mean {loss}(champion)",
        "loss": loss, "canary_n": n_c, "champion_n": n_h,
        "canary_mean_loss": mean_c, "champion_mean_loss": mean_h,
        "canary_positive_rate": float(np.mean(canary_labels)) if n_c else None,
        "champion_positive_rate": float(np.mean(champion_labels)) if n_h else None,
        "alpha": alpha, "tau": tau, "min_labels": min_labels,
        "statistic": stat["estimate"], "z": stat["z"], "log_likelihood_ratio": stat["log_lr"],
        "p_value": stat["p_value"], "interval": [stat["lower"], stat["upper"]],
        "interval_of": f"mean {loss}(canary) - mean {loss}(champion)",
    }
    return QualityVerdict(decision=decision, p_value=stat["p_value"], reason=reason, evidence=evidence)
