"""The jobs Keel's sensors and ``keel run`` launch."""

import dagster as dg

from assets.evaluation import champion, evaluation_report
from assets.feedback import label_corrections
from assets.features import daily_feature_models, feature_checks, feature_models
from assets.scoring import predictions
from assets.serving import online_predictions, serving_skew
from assets.training import baseline_model, fallback_model, primary_model, training_set
from assets.ingestion import raw_key
from assets.monitoring import feature_drift_asset, performance_asset, prediction_drift_asset
from assets.outcomes import outcome_assets
from assets.rollout import rollout_decisions
from assets.partitions import USECASE
from assets.validation import quarantine_key, validated_key


def _keys(tables) -> list[dg.AssetKey]:
    return [k for t in tables for k in (raw_key(t.name), validated_key(t.name), quarantine_key(t.name))]


ingest_daily_job = dg.define_asset_job(
    "ingest_daily",
    selection=dg.AssetSelection.assets(*_keys(USECASE.partitioned_tables)),
    description="Load, validate and gate one or more days of every daily table.",
)
ingest_snapshots_job = dg.define_asset_job(
    "ingest_snapshots",
    selection=dg.AssetSelection.assets(*_keys(USECASE.snapshot_tables)),
    description="Load, validate and gate the reference (snapshot) tables.",
)
build_feature_views_job = dg.define_asset_job(
    "build_feature_views",
    selection=dg.AssetSelection.assets(feature_models, label_corrections),
    description=("Load the label corrections, then build the unpartitioned dbt models: seeds, staging and "
                 "intermediate views, reference lookups, the corrections in effect."),
)
build_daily_features_job = dg.define_asset_job(
    "build_daily_features",
    # The skew check only where the use case has one (UseCase.feature_skew).
    selection=dg.AssetSelection.assets(daily_feature_models) | dg.AssetSelection.checks(*feature_checks),
    description="Build the feature mart, labels and online lookups for days whose gates passed.",
)
train_models_job = dg.define_asset_job(
    "train_models",
    selection=dg.AssetSelection.assets(
        training_set, primary_model, fallback_model, baseline_model, evaluation_report, champion
    ),
    description=(
        "Train the primary, fallback and baseline models on a window of labelled days, evaluate "
        "the challenger against the champion through the promotion gates, apply the policy."
    ),
)
score_daily_job = dg.define_asset_job(
    "score_daily",
    selection=dg.AssetSelection.assets(predictions),
    description="Score one or more days of prediction targets with the champion and its fallback tiers.",
)
promote_champion_job = dg.define_asset_job(
    "promote_champion",
    selection=dg.AssetSelection.assets(champion),
    description="Apply the promotion policy, approve a version (approve_version) or roll back.",
)
monitor_daily_job = dg.define_asset_job(
    "monitor_daily",
    selection=dg.AssetSelection.assets(feature_drift_asset, prediction_drift_asset, performance_asset),
    description=(
        "Measure one or more days against the champion's reference: feature drift (with the "
        "important_feature_drift check and Evidently's report), prediction drift and performance."
    ),
)
load_served_daily_job = dg.define_asset_job(
    "load_served_daily",
    selection=dg.AssetSelection.assets(online_predictions) | dg.AssetSelection.checks(serving_skew),
    description=(
        "Load one or more days of the real-time API's prediction log into serving.online_predictions "
        "and hold every served feature vector to the mart (serving_skew)."
    ),
)
measure_served_daily_job = dg.define_asset_job(
    "measure_served_daily",
    selection=dg.AssetSelection.assets(*outcome_assets),
    description=(
        "Join one or more days of served predictions (batch and online) to their labels as they "
        "resolved and measure served performance and the business value (monitoring/served_outcomes)."
    ),
)
record_rollout_decisions_job = dg.define_asset_job(
    "record_rollout_decisions",
    selection=dg.AssetSelection.assets(rollout_decisions),
    description="Copy the staged rollouts' new decisions into audit.rollout_decisions and list them.",
)
