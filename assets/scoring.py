"""Batch scoring: each day's prediction targets scored by the champion, with fallback tiers.

``models/predictions`` is daily partitioned like the feature mart; a range of days is one
run. Each day is scored by the champion primary model, else the champion fallback, else the
rule baseline (``keel.ml.scoring``), and ``serving.predictions`` records for every row the tier
and the model version that produced it. During a rollout (stage ``shadow`` or ``canary``) the
candidate set scores the same rows into ``serving.shadow_predictions``, each with its arm.
"""


import datetime as dt

import dagster as dg

from assets.automation import daily_refresh, with_its_asset
from assets.evaluation import champion
from assets.partitions import daily_partitions, partition_dates
from assets.features import FEATURES_KEY
from assets.training import GROUP, model_spec
from keel.ml.datasets import feature_rows
from keel.registry.model_set import champion_loader
from keel.registry.rollout import active_rollout, candidate_loader
from keel.registry.promotion import registered_names
from keel.ml.predictions import write_predictions, write_shadow_predictions
from keel.ml.scoring import TIERS, load_tiers, score_days, shadow_scores, write_degraded_days
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry


PREDICTIONS_KEY = dg.AssetKey(["models", "predictions"])


@dg.asset(
    key=PREDICTIONS_KEY,
    group_name=GROUP,
    kinds={"duckdb", "lightgbm"},
    deps=[champion, FEATURES_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # A day is scored once its features passed their checks; a new champion scores the days
    # to come, it does not rewrite what was served before it.
    automation_condition=daily_refresh(ignore=dg.AssetSelection.assets(champion)),
    check_specs=[dg.AssetCheckSpec(
        "scored_by_primary", asset=PREDICTIONS_KEY, automation_condition=with_its_asset(),
        description=("At most [scoring] max_share_below_primary of the run's rows (1% by default) "
                     "scored below the primary tier."),
    )],
)
def predictions(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """Scores of each day's prediction targets (serving.predictions): champion,
    else fallback, else rule baseline, each row with its tier and model version."""
    spec = model_spec(keel)
    days = partition_dates(context)
    registry = mlflow.open()
    names = registered_names(keel.usecase.name)
    # The committed champion set, never the aliases one by one (keel.registry.model_set).
    tiers = load_tiers(names, champion_loader(registry, names))
    for tier in tiers:
        if tier.error:
            context.log.warning(f"tier {tier.name} ({tier.model_name}) did not load: {tier.error}")
    with keel.warehouse() as con:
        frame = feature_rows(con, spec, days[0], days[-1])
    scored_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    result = score_days(frame, spec.key, spec.date_column, days, tiers, scored_at=scored_at)
    for failure in result.failures[:20]:
        context.log.warning(f"tier failed, next tier used: {failure}")
    degraded_days = result.degraded_days(tiers)
    rollout = active_rollout(registry, names)
    shadow_metadata = {}
    if rollout is not None:
        candidate = load_tiers(names, candidate_loader(registry, names, rollout))
        shadow, shadow_failures = shadow_scores(
            frame, spec.key, spec.date_column, days, candidate, result.predictions,
            rollout_id=rollout.id, stage=rollout.stage, share=rollout.share, scored_at=scored_at)
        for failure in shadow_failures[:20]:
            context.log.warning(f"rollout {rollout.id}: the candidate set failed: {failure}")
        shadow_metadata = {
            "rollout": dg.MetadataValue.json(rollout.to_dict()),
            "rows_shadow": len(shadow),
            "rows_per_arm": dg.MetadataValue.json({str(k): int(v) for k, v in shadow["arm"].value_counts().items()}),
            "shadow_failures": dg.MetadataValue.json(shadow_failures[:50]),
        }
    with keel.warehouse() as con:
        write_predictions(con, spec, result.predictions, days)
        write_degraded_days(con, days, degraded_days)
        if rollout is not None:
            write_shadow_predictions(con, spec, shadow, days, rollout.id)
    per_tier = result.rows_per_tier()
    degraded = [d["day"] for d in degraded_days]
    share = result.share_below_primary()
    bound = keel.deployment.scoring.max_share_below_primary
    if degraded_days:
        context.log.warning(f"{len(degraded_days)} day(s) scored below the primary tier "
                            f"({share:.1%} of rows): {degraded_days[0]['reason']}")
    return dg.MaterializeResult(
        metadata={
            **{f"rows_{tier}": per_tier[tier] for tier in TIERS},
            "rows_per_tier": dg.MetadataValue.json(per_tier),
            "model_versions": dg.MetadataValue.json({t.name: t.version for t in tiers}),
            "tier_load_errors": dg.MetadataValue.json({t.name: t.error for t in tiers if t.error}),
            "days_not_on_primary": dg.MetadataValue.json(result.days_not_on_primary()[:50]),
            "days": len(days),
            "dagster/row_count": len(result.predictions),
            **shadow_metadata,
        },
        # A warning, not a gate: a degraded day is still served, by the best tier that works.
        check_results=[dg.AssetCheckResult(
            check_name="scored_by_primary",
            passed=share <= bound,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{share:.1%} of {len(result.predictions):,} rows scored below the primary tier "
                f"(bound {bound:.0%})"
                + (f"; {len(degraded_days)} day(s) degraded from {degraded[0]}: {degraded_days[0]['reason']}"
                   if degraded_days else "")
            )[:1000],
            metadata={"share_below_primary": share, "bound": bound,
                      "degraded_days": dg.MetadataValue.json(degraded_days[:50])},
        )],
    )


scoring_assets = [predictions]
