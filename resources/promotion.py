"""The promotion policy and the thresholds of the promotion gates, as a Dagster resource."""

from __future__ import annotations

import os

import dagster as dg

from keel.promotion import POLICIES, PromotionGates

POLICY_ENV = "KEEL_PROMOTION_POLICY"
_DEFAULTS = PromotionGates()


class PromotionPolicy(dg.ConfigurableResource):
    """How a challenger becomes the champion. ``auto``: as soon as every gate passes;
    ``manual``: a person approves it (``keel approve`` or the ``champion`` asset's
    ``approve_version``), and only a version whose gates passed can be approved. The default
    policy comes from ``KEEL_PROMOTION_POLICY`` (else ``auto``)."""

    policy: str = ""
    min_auc_gain: float = _DEFAULTS.min_auc_gain
    slice_auc_tolerance: float = _DEFAULTS.slice_auc_tolerance
    slice_min_rows: int = _DEFAULTS.slice_min_rows
    single_row_p95_us: float = _DEFAULTS.single_row_p95_us
    batch_p95_ms: float = _DEFAULTS.batch_p95_ms
    max_ece: float = _DEFAULTS.max_ece
    min_auc_gain_over_baseline: float = _DEFAULTS.min_auc_gain_over_baseline

    @property
    def resolved_policy(self) -> str:
        policy = self.policy or os.environ.get(POLICY_ENV) or "auto"
        if policy not in POLICIES:
            raise ValueError(f"promotion policy must be one of {POLICIES}, got {policy!r}")
        return policy

    @property
    def gates(self) -> PromotionGates:
        return PromotionGates(
            min_auc_gain=self.min_auc_gain,
            slice_auc_tolerance=self.slice_auc_tolerance,
            slice_min_rows=self.slice_min_rows,
            single_row_p95_us=self.single_row_p95_us,
            batch_p95_ms=self.batch_p95_ms,
            max_ece=self.max_ece,
            min_auc_gain_over_baseline=self.min_auc_gain_over_baseline,
        )
