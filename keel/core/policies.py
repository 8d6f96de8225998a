"""The thresholds and policies a deployment decides with, as plain frozen values.

Each type here is held once by the deployment (``keel.core.config.Deployment``) and handed
down to the code that decides: the data gates read a table's :class:`GateThresholds`, the
promotion gates a :class:`PromotionPolicy`, the retraining trigger a :class:`RetrainPolicy`
(with its :class:`TriggerPolicy`). Their defaults are the deployment's defaults; a use case
or ``keel.toml`` changes them (the README's Configuration section lists every key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

POLICIES = ("auto", "manual", "staged")


@dataclass(frozen=True)
class GateThresholds:
    """Thresholds of the blocking data gates of one table. Each evaluation reports the
    values it used."""

    max_quarantine_rate: float = 0.02
    # Volume against the median of the same weekday over the previous weeks.
    volume_min_ratio: float = 0.5
    volume_max_ratio: float = 2.0
    volume_weeks: int = 8
    volume_min_history: int = 3
    # Unexplained null rate of a column against its median over the previous days.
    null_rate_max_increase: float = 0.2
    null_rate_window_days: int = 28
    null_rate_min_history: int = 3
    # Columns whose null rate is not gated (value None) or gated with their own tolerance.
    null_rate_overrides: Mapping[str, float | None] = field(default_factory=dict)
    # Share of non-empty values that fail to cast before a column counts as changed type.
    type_change_share: float = 0.5
    # A snapshot (unpartitioned) table may not shrink below this share of its previous load.
    snapshot_min_ratio: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "null_rate_overrides": dict(self.null_rate_overrides)}


@dataclass(frozen=True)
class PromotionGates:
    """Thresholds of the promotion gates (see ``keel.registry.promotion``)."""

    min_auc_gain: float = 0.0
    slice_auc_tolerance: float = 0.05
    slice_min_rows: int = 500
    single_row_p95_us: float = 1_000.0
    batch_p95_ms: float = 100.0
    max_ece: float = 0.08
    min_auc_gain_over_baseline: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromotionPolicy:
    """How a challenger becomes the champion. ``auto``: as soon as every gate passes;
    ``manual``: a person approves it (``keel approve`` or the ``champion`` asset's
    ``approve_version``), and only a version whose gates passed can be approved; ``staged``:
    a challenger whose gates passed starts a rollout (shadow, canary steps, champion; see
    :class:`RolloutPolicy`) instead of serving at once."""

    policy: str = "auto"
    gates: PromotionGates = field(default_factory=PromotionGates)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"promotion policy must be one of {POLICIES}, got {self.policy!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, **self.gates.to_dict()}


@dataclass(frozen=True)
class RolloutPolicy:
    """The path of a staged rollout (``keel.registry.rollout``) and the guardrails that let it
    move on. A rollout bakes ``shadow_hours`` in shadow (the candidate scores beside the
    champion, off the response path), then ``canary_hours`` at each share of ``canary_steps``
    (the share of keys the candidate answers), then becomes the champion. Every stage is
    judged against the champion on the same traffic, once each arm has ``min_requests``
    requests: the error rate may not exceed ``error_rate_factor`` times the champion's (once
    the candidate has ``min_errors`` errors, so one error does not decide; ``alpha`` is the
    sequential test's), the latency p99 not ``latency_p99_factor`` times the champion's, and
    the share of positive decisions at the threshold may not differ from the champion's by
    more than ``positive_rate_tolerance``. A breach aborts the rollout at once; passing
    guardrails advance it only once its stage has baked."""

    canary_steps: tuple[float, ...] = (0.05, 0.25, 0.5)
    shadow_hours: float = 48.0
    canary_hours: float = 24.0
    error_rate_factor: float = 2.0
    min_errors: int = 5
    latency_p99_factor: float = 1.5
    positive_rate_tolerance: float = 0.05
    alpha: float = 0.05
    min_requests: int = 200

    def __post_init__(self) -> None:
        steps = tuple(float(step) for step in self.canary_steps)
        object.__setattr__(self, "canary_steps", steps)
        if any(not 0.0 < step < 1.0 for step in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"[rollout] canary_steps must be increasing shares within (0, 1), got {list(steps)}")
        if self.shadow_hours < 0 or self.canary_hours < 0:
            raise ValueError("[rollout] shadow_hours and canary_hours must be >= 0")
        if self.error_rate_factor < 1.0 or self.latency_p99_factor < 1.0:
            raise ValueError("[rollout] error_rate_factor and latency_p99_factor must be >= 1")
        if not 0.0 <= self.positive_rate_tolerance <= 1.0:
            raise ValueError("[rollout] positive_rate_tolerance must be within 0..1")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("[rollout] alpha must be within (0, 1)")
        if self.min_errors < 1 or self.min_requests < 1:
            raise ValueError("[rollout] min_errors and min_requests must be >= 1")

    def baking_hours(self, stage: str) -> float:
        return self.shadow_hours if stage == "shadow" else self.canary_hours

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "canary_steps": list(self.canary_steps)}


PERFORMANCE_SOURCES = ("performance", "served_outcomes")


@dataclass(frozen=True)
class TriggerPolicy:
    """When the champion is retrained. Each decision reports the values it used.

    * Drift: ``important_drift_share`` (importance-weighted share of drifted features) at
      or above its threshold on at least ``drift_days_required`` of the last
      ``drift_window_days`` calendar days (today included). Days without a drift record
      count as not drifted, so a stale history cannot fire; records from before the
      champion was trained are ignored, since they were measured against its predecessor's
      reference.
    * Performance: trailing AUC below ``min_auc``, once the window holds at least
      ``min_auc_rows`` labelled rows (an AUC on a few rows is noise) and starts on or after
      the day the champion was trained (before it, the window scores its predecessor).
    * Age: more than ``max_model_age_days`` since the champion's training window ended, or
      since it was last challenged by a retrain it survived (a later request).
    * Cooldown: no request within ``cooldown_days`` of the previous one, whatever fires.
    * ``performance_source`` says which table the trailing window is read from.

    There is no limit on how often the check runs: ``keel.monitoring.daily.decide_retrain``
    is a pure function of its inputs, and the cooldown already bounds how often it can request.
    """

    important_drift_share: float = 0.3
    # A day whose record carries ``calibrated_drift_share`` (the importance of the features
    # beyond their own ordinary-day bar) counts as drifted at or above this;
    # ``important_drift_share`` decides for records without it. The important_feature_drift
    # check warns on a day at or above it too.
    calibrated_drift_share: float = 0.2
    drift_days_required: int = 3
    drift_window_days: int = 5
    min_auc: float = 0.65
    min_auc_rows: int = 1_000
    max_model_age_days: int = 35
    cooldown_days: int = 7
    # Where the performance signal is read: "performance" (monitoring.performance, the batch
    # scores against the upstream labels) or "served_outcomes" (monitoring.served_performance:
    # every served prediction, batch and online, against the corrected labels).
    performance_source: str = "performance"

    def __post_init__(self) -> None:
        if self.performance_source not in PERFORMANCE_SOURCES:
            raise ValueError(f"performance_source must be one of {PERFORMANCE_SOURCES}, got {self.performance_source!r}")
        if not 0.0 < self.important_drift_share <= 1.0:
            raise ValueError("important_drift_share must be in (0, 1]")
        if not 0.0 < self.calibrated_drift_share <= 1.0:
            raise ValueError("calibrated_drift_share must be in (0, 1]")
        if not 1 <= self.drift_days_required <= self.drift_window_days:
            raise ValueError("need 1 <= drift_days_required <= drift_window_days")
        if not 0.0 <= self.min_auc <= 1.0:
            raise ValueError("min_auc must be in [0, 1]")
        if self.min_auc_rows < 1 or self.max_model_age_days < 0 or self.cooldown_days < 0:
            raise ValueError("min_auc_rows must be >= 1, ages and cooldown >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RetrainPolicy:
    """The trigger's policy and what a retrain trains on: the ``training_days`` up to the
    day that fired, cut into train, ``valid_weeks`` and ``test_weeks`` (the holdout the
    promotion gates compare the challenger and the champion on). The trigger decides every
    ``decide_every_days``-th monitored day; a retrain searches ``search_trials``
    hyperparameter sets. The promotion policy, not this one, decides whether the retrained
    model serves."""

    trigger: TriggerPolicy = field(default_factory=TriggerPolicy)
    training_days: int = 84
    valid_weeks: int = 2
    test_weeks: int = 2
    decide_every_days: int = 1
    search_trials: int = 4

    def __post_init__(self) -> None:
        if self.training_days < 7 * (self.valid_weeks + self.test_weeks + 1):
            raise ValueError(
                f"training_days ({self.training_days}) must leave at least a week to train on beside "
                f"{self.valid_weeks} validation and {self.test_weeks} test weeks"
            )
        if self.decide_every_days < 1:
            raise ValueError("decide_every_days must be >= 1")
        if self.search_trials < 1:
            raise ValueError("search_trials must be >= 1")

    def window(self, day: dt.date, calendar_start: dt.date) -> tuple[dt.date, dt.date]:
        return max(calendar_start, day - dt.timedelta(days=self.training_days - 1)), day

    def to_dict(self) -> dict[str, Any]:
        own = {k: v for k, v in asdict(self).items() if k != "trigger"}
        return {**self.trigger.to_dict(), **own}


@dataclass(frozen=True)
class ScoringPolicy:
    """Batch scoring's warning bound: the share of a run's rows that may be scored below the
    primary tier (by the fallback or the baseline) before the warning check
    ``scored_by_primary`` on the predictions fails."""

    max_share_below_primary: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share_below_primary <= 1.0:
            raise ValueError(f"[scoring] max_share_below_primary must be within 0..1, "
                             f"got {self.max_share_below_primary}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServingPolicy:
    """How the real-time API treats its tiers: the time one request may take in each tier's
    model call, in milliseconds (0: no budget). A tier over its budget is skipped for that
    request, and the next tier answers. The baseline, the last resort, has none by default.
    The defaults guard against a stuck model, not against scheduling noise: a 30 us model
    call was seen to take up to 50 ms on a 2-core machine at a load average of 9."""

    primary_budget_ms: float = 100.0
    fallback_budget_ms: float = 100.0
    baseline_budget_ms: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"[serving] {name} must be >= 0 (0: no budget), got {value}")

    def budgets(self) -> dict[str, float]:
        """Seconds per request, by tier, for the tiers that have a budget."""
        return {name.removesuffix("_budget_ms"): value / 1000.0
                for name, value in asdict(self).items() if value > 0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
