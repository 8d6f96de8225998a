"""When the champion is retrained and on what, as a Dagster resource."""

from __future__ import annotations

import os

import dagster as dg

from keel.monitoring import TriggerPolicy
from keel.retraining import RetrainSettings

_TRIGGER = TriggerPolicy()


class RetrainPolicy(dg.ConfigurableResource):
    """The retraining trigger's thresholds (see ``keel.monitoring.TriggerPolicy``) and the
    window a retrain trains on. The promotion policy, not this one, decides whether the
    retrained model serves."""

    important_drift_share: float = _TRIGGER.important_drift_share
    calibrated_drift_share: float = _TRIGGER.calibrated_drift_share
    drift_days_required: int = _TRIGGER.drift_days_required
    drift_window_days: int = _TRIGGER.drift_window_days
    min_auc: float = _TRIGGER.min_auc
    min_auc_rows: int = _TRIGGER.min_auc_rows
    max_model_age_days: int = _TRIGGER.max_model_age_days
    cooldown_days: int = _TRIGGER.cooldown_days
    training_days: int = 84  # the days up to the trigger day a retrain learns from
    valid_weeks: int = 2
    test_weeks: int = 2  # the holdout the gates compare challenger and champion on
    decide_every_days: int = 1
    search_trials: int = 4
    num_threads: int = 0  # LightGBM threads; 0: KEEL_TRAIN_THREADS, else 1

    @property
    def settings(self) -> RetrainSettings:
        return RetrainSettings(
            trigger=TriggerPolicy(
                important_drift_share=self.important_drift_share,
                calibrated_drift_share=self.calibrated_drift_share,
                drift_days_required=self.drift_days_required,
                drift_window_days=self.drift_window_days,
                min_auc=self.min_auc,
                min_auc_rows=self.min_auc_rows,
                max_model_age_days=self.max_model_age_days,
                cooldown_days=self.cooldown_days,
            ),
            training_days=self.training_days,
            valid_weeks=self.valid_weeks,
            test_weeks=self.test_weeks,
            decide_every_days=self.decide_every_days,
        )

    @property
    def threads(self) -> int:
        return self.num_threads or int(os.environ.get("KEEL_TRAIN_THREADS") or 1)
