"""Batch scoring: each day's scheduled flights scored by the champion, with fallback tiers.

``models/predictions`` is daily partitioned like the feature mart; a range of days is one
run. Each day is scored by the champion primary model, else the champion fallback, else the
rule baseline (``keel.scoring``), and ``serving.predictions`` records for every row the tier
and the model version that produced it.
"""


import datetime as dt

import dagster as dg

from assets.automation import daily_refresh
from assets.evaluation import champion
from assets.partitions import daily_partitions, partition_dates
from assets.training import FEATURES_KEY, GROUP, model_spec
from keel.datasets import feature_rows
from keel.promotion import registered_names
from keel.scoring import TIERS, load_tiers, score_days, write_predictions
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry


@dg.asset(
    key=["models", "predictions"],
    group_name=GROUP,
    kinds={"duckdb", "lightgbm"},
    deps=[champion, FEATURES_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # A day is scored once its features passed their checks; a new champion scores the days
    # to come, it does not rewrite what was served before it.
    automation_condition=daily_refresh(ignore=dg.AssetSelection.assets(champion)),
)
def predictions(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """Disruption scores of each day's scheduled flights (serving.predictions): champion,
    else fallback, else rule baseline, each row with its tier and model version."""
    spec = model_spec(keel)
    days = partition_dates(context)
    registry = mlflow.open(keel.paths)

    def load(name: str):
        version = registry.resolve_version(name, registry.CHAMPION)
        return version, registry.load(name, version)

    tiers = load_tiers(registered_names(keel.usecase.name), load)
    for tier in tiers:
        if tier.error:
            context.log.warning(f"tier {tier.name} ({tier.model_name}) did not load: {tier.error}")
    with keel.warehouse() as con:
        frame = feature_rows(con, spec, days[0], days[-1])
    result = score_days(
        frame, spec.key, spec.date_column, days, tiers,
        scored_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0),
    )
    for failure in result.failures[:20]:
        context.log.warning(f"tier failed, next tier used: {failure}")
    with keel.warehouse() as con:
        write_predictions(con, result.predictions, days)
    per_tier = result.rows_per_tier()
    degraded = sorted(str(d) for d, counts in result.rows_per_day.items() if sum(counts.values()) != counts.get("primary", 0))
    return dg.MaterializeResult(
        metadata={
            **{f"rows_{tier}": per_tier[tier] for tier in TIERS},
            "rows_per_tier": dg.MetadataValue.json(per_tier),
            "model_versions": dg.MetadataValue.json({t.name: t.version for t in tiers}),
            "tier_load_errors": dg.MetadataValue.json({t.name: t.error for t in tiers if t.error}),
            "days_not_on_primary": dg.MetadataValue.json(degraded[:50]),
            "days": len(days),
            "dagster/row_count": len(result.predictions),
        }
    )


scoring_assets = [predictions]
