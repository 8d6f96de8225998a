"""Keel's one Definitions object: the whole asset graph, its checks, jobs and sensors.

Runs execute in process: every step writes the same DuckDB file, which takes one writer at
a time. To scale out, point dbt at another adapter and hand assets a Dask client instead.
The use case, thresholds and policies are the deployment's (``keel.core.config.current``,
configured by ``$KEEL_HOME/keel.toml`` and the environment); the resources hand it down.
"""

import warnings

import dagster as dg

# Per-partition asset checks and single-run backfills are the features Keel's gates and
# year-long backfills stand on; Dagster marks them preview/beta.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from keel.app.progress import keel_progress  # noqa: E402
from resources.dbt import dbt_resource  # noqa: E402
from assets.evaluation import evaluation_assets  # noqa: E402
from assets.features import feature_assets, feature_checks  # noqa: E402
from assets.feedback import feedback_assets  # noqa: E402
from assets.ingestion import raw_assets  # noqa: E402
from assets.monitoring import monitoring_assets, monitoring_checks  # noqa: E402
from assets.outcomes import outcome_assets  # noqa: E402
from assets.rollout import rollout_assets  # noqa: E402
from assets.scoring import scoring_assets  # noqa: E402
from assets.serving import serving_assets, serving_checks  # noqa: E402
from assets.training import training_assets  # noqa: E402
from assets.validation import gate_checks, gate_status, validation_assets  # noqa: E402
from resources.keel_state import KeelState  # noqa: E402
from resources.mlflow import MlflowRegistry  # noqa: E402
from sensors.jobs import (  # noqa: E402
    build_daily_features_job,
    build_feature_views_job,
    ingest_daily_job,
    ingest_snapshots_job,
    load_served_daily_job,
    measure_served_daily_job,
    monitor_daily_job,
    promote_champion_job,
    record_rollout_decisions_job,
    score_daily_job,
    train_models_job,
)
from sensors.feedback import feedback_sensor, load_feedback_job  # noqa: E402
from sensors.landing import landing_zone_sensor  # noqa: E402
from sensors.retrain import retraining_trigger  # noqa: E402
from sensors.rollout import rollout_sensor  # noqa: E402

# Declarative automation: evaluates every asset's AutomationCondition (assets/automation.py).
automation_sensor = dg.AutomationConditionSensorDefinition(
    "keel_automation",
    # Checks too: a check outside the target is never requested, and a one-day run that
    # automation launches then builds the day without its dbt tests and skew checks.
    target=dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Refreshes every day downstream of the gates as soon as its upstream day passed.",
)

defs = dg.Definitions(
    assets=[
        *raw_assets, *validation_assets, gate_status, *feature_assets,
        *training_assets, *evaluation_assets, *scoring_assets, *monitoring_assets,
        *outcome_assets, *serving_assets, *feedback_assets, *rollout_assets,
    ],
    asset_checks=[*gate_checks, *feature_checks, *monitoring_checks, *serving_checks],
    jobs=[
        ingest_daily_job, ingest_snapshots_job, build_feature_views_job, build_daily_features_job,
        train_models_job, score_daily_job, promote_champion_job, monitor_daily_job, load_feedback_job,
        load_served_daily_job, measure_served_daily_job, record_rollout_decisions_job,
    ],
    sensors=[landing_zone_sensor, retraining_trigger, feedback_sensor, rollout_sensor, automation_sensor],
    resources={
        "keel": KeelState(),
        "dbt": dbt_resource(),
        "mlflow": MlflowRegistry(),
    },
    executor=dg.in_process_executor,
    # Dagster's console logger for every run; Keel's own runs also count their steps for the
    # stage lines of `keel run` (enabled in their run config, see keel/app/progress.py).
    loggers={"console": dg.colored_console_logger, "keel_progress": keel_progress},
)
