"""The jobs Keel's sensors and ``keel run`` launch."""

import dagster as dg

from assets.evaluation import champion, evaluation_report
from assets.features import daily_feature_models, feature_models, feature_skew
from assets.scoring import predictions
from assets.training import baseline_model, fallback_model, primary_model, training_set
from assets.ingestion import raw_key
from assets.monitoring import feature_drift_asset, performance_asset, prediction_drift_asset
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
    selection=dg.AssetSelection.assets(feature_models),
    description="Build the unpartitioned dbt models: seeds, staging and intermediate views, reference lookups.",
)
build_daily_features_job = dg.define_asset_job(
    "build_daily_features",
    selection=dg.AssetSelection.assets(daily_feature_models) | dg.AssetSelection.checks(feature_skew),
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
    description="Score one or more days of scheduled flights with the champion and its fallback tiers.",
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
