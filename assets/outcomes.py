"""Served outcomes: what Keel served, batch and online, against how it turned out.

``monitoring/served_outcomes`` joins each day's served predictions (``serving.predictions``
and, where the use case serves online, ``serving.online_predictions``) to their labels as they
resolve, corrections applied, and measures them per day and over the trailing 7 days, per
source x tier x model version and per slice, with the use case's business metric
(``keel.monitoring.outcomes``). It writes ``monitoring.served_outcomes`` and
``monitoring.served_performance``, a day replaced whole; re-running a day later reads the
labels that resolved since. Each version is held to its own operating threshold: the one its
monitoring reference recorded, else the one its training run logged in MLflow.
"""

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from assets.automation import daily_refresh
from assets.features import LABELS_KEY
from assets.monitoring import GROUP, monitoring_dir
from assets.partitions import daily_partitions, partition_dates
from assets.scoring import PREDICTIONS_KEY
from assets.serving import serving_assets
from assets.training import model_spec
from keel.core.dates import utc_now
from keel.monitoring import outcomes, store
from keel.monitoring.reference import operating_threshold
from keel.render.plots import plot_served_performance
from keel.render.tables import markdown_table
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

SERVED_OUTCOMES_KEY = dg.AssetKey([GROUP, "served_outcomes"])
_ONLINE = [a.key for a in serving_assets if a.key.path[-1] == "online_predictions"]


def _thresholds(context, con, registry, served: list[tuple[str, int]]) -> tuple[dict, dict]:
    """Each served version's operating threshold, and where it was read."""
    thresholds, sources = {}, {}
    for name, version in served:
        record = store.reference_record(con, name, version)
        if record is not None and record.get("threshold") is not None:
            thresholds[(name, version)] = float(record["threshold"])
            sources[f"{name} v{version}"] = "monitoring.reference"
            continue
        try:
            thresholds[(name, version)], sources[f"{name} v{version}"] = operating_threshold(registry, name, version)
        except Exception as exc:  # noqa: BLE001 - a version without a threshold is measured at the default
            context.log.warning(f"{name} v{version}: no operating threshold ({exc}); "
                                f"measured at {outcomes.DEFAULT_THRESHOLD}")
            sources[f"{name} v{version}"] = f"default {outcomes.DEFAULT_THRESHOLD} ({type(exc).__name__})"
    return thresholds, sources


@dg.asset(
    key=SERVED_OUTCOMES_KEY,
    group_name=GROUP,
    kinds={"duckdb", "matplotlib"},
    deps=[PREDICTIONS_KEY, LABELS_KEY, *_ONLINE],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=daily_refresh(),
)
def served_outcomes(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """Every served prediction (batch and online) joined to its label as it resolves, and
    served performance per day, version, tier and slice, trailing 7 days, with the business
    value (monitoring.served_outcomes, monitoring.served_performance)."""
    spec = model_spec(keel)
    days = partition_dates(context)
    now = utc_now()
    with keel.warehouse() as con:
        served = outcomes.served_models(con, spec, days)
        thresholds, threshold_sources = _thresholds(context, con, mlflow.open() if served else None, served)
        frame = outcomes.joined_outcomes(con, spec, days, thresholds, computed_at=now)
        written, rows = outcomes.replace_days(con, days, frame, lambda window: outcomes.performance(
            window, days, slices=spec.slices, business=spec.business, computed_at=now))
        history = outcomes.performance_history(con)
        trailing_rows = con.execute(
            "select * from monitoring.served_outcomes where day between ? and ?",
            [days[-1] - dt.timedelta(days=outcomes.TRAILING_DAYS - 1), days[-1]]).df()
    labelled = int(frame["label"].notna().sum()) if len(frame) else 0
    metadata: dict[str, Any] = {
        "dagster/row_count": written,
        "days": len(days),
        "labelled": labelled,
        "unresolved": written - labelled,
        "rows_per_source": dg.MetadataValue.json(frame.groupby("source").size().astype(int).to_dict() if written else {}),
        "thresholds": dg.MetadataValue.json(threshold_sources),
        "business_metric": (f"{spec.business.name} ({spec.business.unit}): TP +{spec.business.true_positive:g}, "
                            f"FP -{spec.business.false_positive:g}, FN -{spec.business.false_negative:g}, "
                            f"TN +{spec.business.true_negative:g}") if spec.business else "none configured",
    }
    if written:
        metadata.update(_tables(rows, days, spec))
        metadata["label_maturity"] = dg.MetadataValue.md(markdown_table(
            ["read at (after the day began)", "labelled", "share of final", "positive rate", "mean score", "AUC"],
            [(m["read_at"], m["labelled"], m["share_of_final"], m["positive_rate"], m["mean_predicted"], m["roc_auc"])
             for m in outcomes.maturity(frame)]))
        pooled = history[history["source"] == outcomes.ALL]
        if not pooled.empty:
            plot = plot_served_performance(
                pooled, outcomes.reliability(trailing_rows),
                monitoring_dir(keel) / "plots" / "served_performance" / "served_performance.png",
                value_label=f"{spec.business.name} ({spec.business.unit})" if spec.business else None,
                min_auc=keel.deployment.trigger.min_auc)
            metadata["served_performance_plot"] = dg.MetadataValue.path(str(plot))
    else:
        context.log.info(f"{days[0]}..{days[-1]}: nothing served on these days")
    return dg.MaterializeResult(metadata=metadata)


def _tables(rows: pd.DataFrame, days, spec) -> dict[str, Any]:
    """The Markdown tables a person reads in the UI: per day, per version of the last day's
    trailing window, per class, per slice."""
    pooled = rows[(rows["source"] == outcomes.ALL) & (rows["slice"] == outcomes.ALL)]
    per_day = pooled[pooled["window"] == "day"]
    last = days[-1]
    trailing = rows[(rows["window"] == "trailing") & (rows["day"] == last) & (rows["slice"] == outcomes.ALL)]
    sliced = rows[(rows["window"] == "trailing") & (rows["day"] == last) & (rows["slice"] != outcomes.ALL)]
    value = "business value" if spec.business else "business value (none)"
    (latest,) = pooled[(pooled["window"] == "trailing") & (pooled["day"] == last)].to_dict("records")
    return {
        "trailing_roc_auc": latest["roc_auc"] if latest["roc_auc"] is not None else "undefined",
        "trailing_business_value": latest["business_value"] if latest["business_value"] is not None else "undefined",
        "per_day": dg.MetadataValue.md(markdown_table(
            ["day", "served", "labelled", "AUC", "PR AUC", "log loss", "Brier", "ECE", value],
            [(r["day"], r["rows"], r["labelled"], r["roc_auc"], r["pr_auc"], r["log_loss"], r["brier"], r["ece"],
              r["business_value"]) for r in per_day.to_dict("records")[-31:]])),
        "per_version_trailing": dg.MetadataValue.md(markdown_table(
            ["source", "tier", "model", "version", "served", "labelled", "AUC", "PR AUC", "log loss", "Brier",
             "ECE", "threshold", value, "per prediction"],
            [(r["source"], r["tier"], r["model_name"], r["model_version"], r["rows"], r["labelled"], r["roc_auc"],
              r["pr_auc"], r["log_loss"], r["brier"], r["ece"], r["threshold"], r["business_value"],
              r["business_value_per_prediction"]) for r in trailing.to_dict("records")])),
        "per_class_trailing": dg.MetadataValue.md(markdown_table(
            ["source", "tier", "version", "precision 1", "recall 1", "precision 0", "recall 0", "TP", "FP", "FN", "TN"],
            [(r["source"], r["tier"], r["model_version"], r["precision_1"], r["recall_1"], r["precision_0"],
              r["recall_0"], r["tp"], r["fp"], r["fn"], r["tn"]) for r in trailing.to_dict("records")])),
        "per_slice_trailing": dg.MetadataValue.md(markdown_table(
            ["slice", "value", "served", "labelled", "AUC", "log loss", "recall 1", value],
            [(r["slice"], r["slice_value"], r["rows"], r["labelled"], r["roc_auc"], r["log_loss"], r["recall_1"],
              r["business_value"]) for r in sliced.to_dict("records")]) if len(sliced) else "no slices"),
    }


outcome_assets = [served_outcomes] if LABELS_KEY else []
