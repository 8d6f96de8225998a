"""Feature assets: the dbt project, one asset per model and one asset check per dbt test.

Incremental models (the feature mart, the labels and the online lookup tables) are daily
partitioned and build only their partition window, passed to dbt as ``min_date`` /
``max_date``; views, tables and seeds are unpartitioned, except a view tagged ``daily``: it
reads an incremental model (the labels with their provenance read the labels), so it is
built with the days, after them. ``feature_skew`` recomputes a sample
of each day's feature rows through the deployment's online path and fails on any difference.
"""

import json
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from assets.automation import checked_with_its_asset, daily_refresh, on_upstream_change, with_its_asset
from assets.checks import record as record_checks
from assets.checks import recorded
from assets.partitions import USECASE, daily_partitions, partition_dates
from keel.ml.skew import skew_verdict
from keel.render.tables import frame_table
from resources.dbt import dbt_project, ensure_manifest
from resources.keel_state import KeelState

ensure_manifest()

# Built with the days: incremental models, and views over them (tag daily).
DAILY = "config.materialized:incremental tag:daily"
# The model's feature mart and labels, as dbt names their assets (schema/table).
FEATURES_KEY = dg.AssetKey(USECASE.model.features_relation.split(".")) if USECASE.model else None
LABELS_KEY = dg.AssetKey(USECASE.model.labels_relation.split(".")) if USECASE.model else None


class KeelDbtTranslator(DagsterDbtTranslator):
    """Models keep their schema in the key (``marts/<name>``); sources map to the
    ingestion assets (``validated/<table>``); everything lands in the ``features`` group."""

    def get_asset_spec(self, manifest: dict[str, Any], unique_id: str, project) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest.get("nodes", {}).get(unique_id) or manifest.get("sources", {}).get(unique_id, {})
        if node.get("resource_type") in ("model", "seed", "snapshot"):
            incremental = node.get("config", {}).get("materialized") == "incremental"
            spec = spec.replace_attributes(
                group_name="features",
                automation_condition=(
                    daily_refresh(ignore=self._unpartitioned(manifest, project)) if _daily(node)
                    else on_upstream_change(_DAILY_UPSTREAM)
                ),
            )
            if incremental:
                # An incremental model reads its day of every daily table through the staging
                # views; saying so lets a newly gated day refresh that day's models, and only
                # once the day's blocking gates passed.
                spec = spec.merge_attributes(deps=_DAILY_VALIDATED)
        elif node.get("resource_type") == "source":
            # Sources are the validation layer's tables; audit.gate_status, which only dbt
            # declares, is written by the gates.
            spec = spec.replace_attributes(
                group_name="validation", description=spec.description or node.get("description")
            )
        return spec

    def get_asset_check_spec(self, asset_spec: dg.AssetSpec, manifest: dict[str, Any], unique_id: str,
                             project) -> dg.AssetCheckSpec | None:
        """A dbt test runs whenever automation builds its model (see ``with_its_asset``)."""
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        return None if spec is None else checked_with_its_asset(spec)

    def _unpartitioned(self, manifest: dict[str, Any], project) -> dg.AssetSelection:
        """The project's views, tables and seeds: a day's incremental models read them, but
        their rebuild must not rebuild every day of history (see daily_refresh)."""
        keys = [
            super(KeelDbtTranslator, self).get_asset_spec(manifest, unique_id, project).key
            for unique_id, node in manifest.get("nodes", {}).items()
            if node.get("resource_type") in ("model", "seed", "snapshot") and not _daily(node)
        ]
        return dg.AssetSelection.assets(*keys)


def _daily(node: dict[str, Any]) -> bool:
    """Whether a dbt node is built with the days (selected by ``DAILY``)."""
    return node.get("config", {}).get("materialized") == "incremental" or "daily" in (node.get("tags") or [])


# A new day of a daily table refreshes that day's incremental models, never the views and
# reference tables above them (they read every day lazily); the gate verdicts are written by
# the gates, not materialized.
_DAILY_VALIDATED = [dg.AssetKey(["validated", t.name]) for t in USECASE.partitioned_tables]
_DAILY_UPSTREAM = dg.AssetSelection.assets(
    *[dg.AssetKey(["validated", t.name]) for t in USECASE.partitioned_tables],
    *[dg.AssetKey(["raw", t.name]) for t in USECASE.partitioned_tables],
    dg.AssetKey(["audit", "gate_status"]),
)
translator = KeelDbtTranslator()
_BUILD_ARGS = ["--exclude-resource-type", "unit_test"]


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    select=DAILY,
    name="daily_feature_models",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    dagster_dbt_translator=translator,
)
def daily_feature_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, keel: KeelState) -> Iterator[Any]:
    """Incremental dbt models, built for the run's days only."""
    # ``keel`` holds the home's writer lock for the run: dbt writes the warehouse too.
    days = partition_dates(context)
    window = {"min_date": days[0].isoformat(), "max_date": days[-1].isoformat()}
    build = dbt.cli(["build", "--vars", json.dumps(window), *_BUILD_ARGS], context=context).stream()
    yield from recorded(keel, context, "dbt_test", build)


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    exclude=DAILY,
    name="feature_models",
    dagster_dbt_translator=translator,
)
def feature_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, keel: KeelState) -> Iterator[Any]:
    """Views, tables and seeds of the dbt project (staging, intermediate, reference lookups)."""
    # ``keel`` holds the home's writer lock for the run: dbt writes the warehouse too.
    yield from recorded(keel, context, "dbt_test", dbt.cli(["build", *_BUILD_ARGS], context=context).stream())


# A multi-asset check with one spec: in a range run it yields one evaluation per day, which
# a plain @asset_check (one required output) does not allow.
@dg.multi_asset_check(
    name="feature_skew",
    specs=[
        dg.AssetCheckSpec(
            "feature_skew",
            asset=FEATURES_KEY,
            blocking=True,
            partitions_def=daily_partitions,
            automation_condition=with_its_asset(),
            description=(
                "Recomputes a sample of each day's feature rows through the online feature path "
                "and fails if any value differs from the mart (training-serving skew)."
            ),
        )
    ],
    can_subset=True,
)
def feature_skew(context: dg.AssetCheckExecutionContext, keel: KeelState) -> Iterator[Any]:
    op_context = context.op_execution_context
    days = partition_dates(op_context)
    check = keel.usecase.feature_skew
    per_day = check(keel.paths.warehouse, days, 25)
    results = [(day, *per_day[day]) for day in days]
    evaluations = []
    for day, compared, mismatches in results:
        passed, message = skew_verdict(day, compared, mismatches)
        metadata = {
            "rows_compared": compared,
            "mismatches": len(mismatches),
            "examples": dg.MetadataValue.md(frame_table(mismatches.head(10)) if len(mismatches) else "none"),
        }
        if len(results) == 1:
            evaluations.append(dg.AssetCheckResult(
                asset_key=FEATURES_KEY, check_name="feature_skew", passed=passed,
                description=message, metadata=metadata,
            ))
        else:
            evaluations.append(dg.AssetCheckEvaluation(
                asset_key=FEATURES_KEY, check_name="feature_skew", passed=passed, description=message,
                blocking=True, metadata=metadata, partition=day.isoformat(),
            ))
    record_checks(keel, context, "feature_skew", evaluations, blocking=True)
    yield from evaluations


feature_assets = [daily_feature_models, feature_models]
feature_checks = [feature_skew] if USECASE.feature_skew and FEATURES_KEY else []
