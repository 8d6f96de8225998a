"""Monitoring assets: the champion's reference, and each day's drift and performance.

``monitoring/reference`` summarises the serving champion's training rows once per version
(``keel.monitoring.reference``, with the model's threshold and feature importance),
and keeps a sample of those rows for Evidently's report. The three daily assets measure each
day against it and write the ``monitoring`` tables (``keel.monitoring.store``), which the
retraining trigger reads:

* ``monitoring/feature_drift``: every model input's drift, weighted by importance, with the
  non-blocking check ``important_feature_drift`` per day and, per day, Evidently's HTML report;
* ``monitoring/prediction_drift``: the served primary-tier scores against the training scores;
* ``monitoring/performance``: the served scores against the labels, per day and over the
  trailing week.

Files live under ``KEEL_HOME/monitoring/``: ``reference/`` (JSON + Parquet sample per
version), ``reports/feature_drift/<day>.html`` and ``plots/``.
"""

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from assets.automation import daily_refresh, while_missing_or_upstream_change, with_its_asset
from assets.checks import recorded as recorded_checks
from assets.evaluation import champion
from assets.features import FEATURES_KEY, LABELS_KEY
from assets.partitions import daily_partitions, partition_dates
from assets.scoring import predictions
from assets.training import model_spec
from keel.core.dates import days_of, utc_now
from keel.core.warehouse import relation
from keel.ml.datasets import feature_rows
from keel.ml.predictions import labelled_predictions, served_predictions
from keel.core.policies import TriggerPolicy
from keel.monitoring import store
from keel.monitoring.daily import (
    TRAILING_DAYS,
    prediction_drift,
)
from keel.monitoring.evidently import MODES as EVIDENTLY_MODES
from keel.monitoring.evidently import evidently_report
from keel.monitoring.reference import (
    build_champion_reference,
    load_reference,
    model_inputs,
    reference_paths,
)
from keel.monitoring.reports import (
    daily_feature_drift,
    drift_check_message,
    drift_tables,
    evidently_days,
    most_important_only,
    performance_rows,
    prediction_drift_fields,
    served_day,
    serving_model,
)
from keel.registry import model_set
from keel.registry.promotion import registered_names
from keel.render.plots import plot_drift_timeline, plot_feature_drift, plot_performance, plot_score_distribution
from keel.render.tables import markdown_table
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

GROUP = "monitoring"
REFERENCE_KEY = dg.AssetKey([GROUP, "reference"])
FEATURE_DRIFT_KEY = dg.AssetKey([GROUP, "feature_drift"])
PREDICTION_DRIFT_KEY = dg.AssetKey([GROUP, "prediction_drift"])
PERFORMANCE_KEY = dg.AssetKey([GROUP, "performance"])
IMPORTANT_FEATURE_DRIFT = "important_feature_drift"

TOP_FEATURES = 15
TIMELINE_FEATURES = 20


def monitoring_dir(keel: KeelState) -> Path:
    return keel.paths.home / "monitoring"


# --------------------------------------------------------------------------------------------
# Reference


def _champion(keel: KeelState, mlflow: MlflowRegistry):
    registry = mlflow.open()
    names = registered_names(keel.usecase.name)
    name = names["primary"]
    version = model_set.champion_version(registry, names)
    if version is None:
        raise dg.Failure(f"{name} has no champion: train and promote a model first (models/champion)")
    return registry, name, version


@dg.asset(
    key=REFERENCE_KEY,
    group_name=GROUP,
    kinds={"duckdb", "json", "parquet"},
    deps=[champion],
    automation_condition=while_missing_or_upstream_change(),
)
def reference(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """The serving champion's monitoring reference: a profile of its training (train and
    validation) rows and scores, its operating threshold and feature importance (gain);
    built once per champion version, with a sample of the rows for Evidently's report."""
    spec = model_spec(keel)
    registry, name, version = _champion(keel, mlflow)
    path, sample_path = reference_paths(monitoring_dir(keel), name, version)
    with keel.warehouse() as con:
        record = store.reference_record(con, name, version)
    plot = monitoring_dir(keel) / "plots" / "reference" / f"{name}-v{version}-scores.png"
    built = not (record and Path(record["path"]).exists() and Path(record["sample_path"]).exists())
    if built:
        record, data, valid_scores = build_champion_reference(
            keel.warehouse, registry, spec, name, version, path, sample_path, context.log
        )
        # The validation weeks' scores beside the whole reference: where the threshold was chosen.
        plot_score_distribution(prediction_drift(data, valid_scores), plot)
        with keel.warehouse() as con:
            store.write_reference(con, record)
    else:
        context.log.info(f"{name} v{version}: reference already built at {record['built_at']}; kept")
    top = sorted(record["importance"].items(), key=lambda item: -item[1])[:TOP_FEATURES]
    return dg.MaterializeResult(
        metadata={
            "model_name": name,
            "model_version": version,
            "built": built,
            "built_at": str(record["built_at"]),
            "rows": int(record["rows"]),
            "sample_rows": int(record["sample_rows"]),
            "window": f"{record['window_start']}..{record['window_end']}",
            "threshold": float(record["threshold"]),
            "drift_baseline": dg.MetadataValue.json(record["drift_baseline"] or {}),
            "top_features": dg.MetadataValue.md(markdown_table(
                rows=[(i + 1, f, round(w, 4), "categorical" if f in spec.categorical else "numeric")
                 for i, (f, w) in enumerate(top)],
                header=["rank", "feature", "importance (gain share)", "kind"],
            )),
            "path": dg.MetadataValue.path(str(record["path"])),
            "sample_path": dg.MetadataValue.path(str(record["sample_path"])),
            **({"score_distribution_plot": dg.MetadataValue.path(str(plot))} if plot.exists() else {}),
            "dagster/row_count": int(record["rows"]),
        },
        data_version=dg.DataVersion(f"{name}-v{version}"),
    )


def champion_reference(keel: KeelState, mlflow: MlflowRegistry) -> tuple[dict[str, Any], dict[str, Any]]:
    """The current champion's reference record and JSON; fails if it was not built yet."""
    _, name, version = _champion(keel, mlflow)
    with keel.warehouse() as con:
        record = store.reference_record(con, name, version)
    if record is None or not Path(record["path"]).exists():
        raise dg.Failure(
            f"no monitoring reference for the champion {name} v{version}: materialize monitoring/reference"
        )
    return record, load_reference(Path(record["path"]))


# --------------------------------------------------------------------------------------------
# Feature drift


class FeatureDriftConfig(dg.Config):
    # Evidently's HTML report per day: "always", "drifted" (days whose important-feature
    # drift share reaches the threshold) or "never". Measured here: about 3 s and 6.5 MB per
    # day (5,000 reference rows x 48 features), plus 5 s to import Evidently once per run.
    evidently_html: str = "always"


@dg.multi_asset(
    name="monitoring__feature_drift",
    specs=[dg.AssetSpec(
        FEATURE_DRIFT_KEY,
        group_name=GROUP,
        kinds={"duckdb", "evidently"},
        deps=[FEATURES_KEY, REFERENCE_KEY],
        description=(
            "Each day's model inputs against the champion's training rows: per-feature drift "
            "(Evidently's tests and thresholds), the drifted share weighted by feature importance "
            "(monitoring.feature_drift, monitoring.drift_daily) and Evidently's HTML report."
        ),
        automation_condition=daily_refresh(ignore=dg.AssetSelection.assets(REFERENCE_KEY)),
    )],
    check_specs=[dg.AssetCheckSpec(
        IMPORTANT_FEATURE_DRIFT,
        asset=FEATURE_DRIFT_KEY,
        blocking=False,
        partitions_def=daily_partitions,
        automation_condition=with_its_asset(),
        description=(
            "Warns on a day whose features beyond their own ordinary-day bar (mean + 3 sd of their "
            "drift on the champion's validation days) carry at least the deployment's "
            "calibrated_drift_share ([retraining] in keel.toml) of the model's importance; names them. "
            "Retraining is decided by the retraining trigger on sustained drift, not by one day."
        ),
    )],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # Subsettable so that a range run yields one check evaluation per day, not one result.
    can_subset=True,
)
def feature_drift_asset(
    context: dg.AssetExecutionContext, config: FeatureDriftConfig, keel: KeelState, mlflow: MlflowRegistry
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult | dg.AssetCheckEvaluation]:
    if config.evidently_html not in EVIDENTLY_MODES:
        raise dg.Failure(f"evidently_html must be one of {EVIDENTLY_MODES}, got {config.evidently_html!r}")
    spec = model_spec(keel)
    days = partition_dates(context)
    record, data = champion_reference(keel, mlflow)
    features = list(spec.features)
    with keel.warehouse() as con:
        frame = feature_rows(con, spec, days[0], days[-1])
    frame_days = days_of(frame, spec.date_column)
    results = daily_feature_drift(data, record["importance"], frame[features], frame_days, days)
    for day in days:
        if day not in results:
            context.log.warning(f"{day}: no feature rows; no drift measured")
    if not results:
        raise dg.Failure(f"no feature rows in {relation(spec.features_relation)} for {days[0]}..{days[-1]}")
    # One policy for the check, the plots and the retraining trigger: the deployment's.
    trigger = keel.deployment.trigger
    checks = {day: drift_check_message(day, result, trigger.calibrated_drift_share) for day, result in results.items()}
    if FEATURE_DRIFT_KEY in context.selected_asset_keys:
        yield _materialize_feature_drift(context, config, trigger, keel, record, frame, frame_days, results, checks)
    if dg.AssetCheckKey(FEATURE_DRIFT_KEY, IMPORTANT_FEATURE_DRIFT) in context.selected_asset_check_keys:
        drift_checks = _drift_checks(context, trigger, results, checks, single=len(days) == 1)
        yield from recorded_checks(keel, context, "monitoring", drift_checks, blocking=False)


def _materialize_feature_drift(
    context: dg.AssetExecutionContext, config: FeatureDriftConfig, trigger: TriggerPolicy, keel: KeelState,
    record: Mapping[str, Any],
    frame: pd.DataFrame, frame_days: pd.Series, results: Mapping[dt.date, Mapping[str, Any]],
    checks: Mapping[dt.date, tuple[bool, str]],
) -> dg.MaterializeResult:
    """Evidently's reports, the tables and the plots of a feature drift run."""
    spec = model_spec(keel)
    days = partition_dates(context)
    name, version = record["model_name"], int(record["model_version"])
    numeric, categorical = model_inputs(spec)
    computed_at = utc_now()
    reports: dict[dt.date, Path] = {}
    seconds: list[float] = []
    sample = None
    for day in evidently_days(results, config.evidently_html, trigger.calibrated_drift_share):
        if sample is None:
            sample = pd.read_parquet(record["sample_path"])
        path = monitoring_dir(keel) / "reports" / "feature_drift" / f"{day.isoformat()}.html"
        seconds.append(evidently_report(sample, frame.loc[frame_days == day], numeric, categorical, path))
        reports[day] = path
        context.log.info(f"{day}: Evidently report in {seconds[-1]:.1f} s: {path}")

    with keel.warehouse() as con:
        written = store.replace_days(con, drift_tables(results, name, version, computed_at, reports), days)
        timeline = store.drift_timeline(con)

    last_day = max(results)
    last = results[last_day]
    plots = monitoring_dir(keel) / "plots" / "feature_drift"
    bars = plot_feature_drift(last, plots / f"{last_day.isoformat()}.png")
    # The grid below the shares shows the most important features only; fifty rows are unreadable.
    timeline = most_important_only(timeline, last, TIMELINE_FEATURES)
    timeline_plot = plot_drift_timeline(timeline, plots / "timeline.png", policy=trigger)
    warned = sorted(str(day) for day, (passed, _) in checks.items() if not passed)
    top = last["important_features"][:TOP_FEATURES]
    return dg.MaterializeResult(
        asset_key=FEATURE_DRIFT_KEY,
        metadata={
            "model_version": version,
            "days": len(days),
            "days_measured": len(results),
            "days_over_threshold": dg.MetadataValue.json(warned),
            "last_day": last_day.isoformat(),
            "share_drifted": last["share_drifted"],
            "important_drift_share": last["important_drift_share"],
            "calibrated_drift_share": last["calibrated_drift_share"],
            "important_drift_score": last["important_drift_score"],
            "n_drifted": last["n_drifted"],
            "drifted_features": dg.MetadataValue.json(last["drifted_features"]),
            "top_features": dg.MetadataValue.md(markdown_table(
                rows=[(f["feature"], f["importance"], f["stattest"], f["drift_score"], f["drifted"]) for f in top],
                header=["feature", "importance", "test", "score", "drifted"],
            )),
            "drift_plot": dg.MetadataValue.path(str(bars)),
            "timeline_plot": dg.MetadataValue.path(str(timeline_plot)),
            "timeline_thresholds": dg.MetadataValue.json({
                "calibrated_drift_share": trigger.calibrated_drift_share,
                "important_drift_share": trigger.important_drift_share,
            }),
            "evidently_reports": dg.MetadataValue.json({str(d): str(p) for d, p in reports.items()}),
            **({"evidently_report": dg.MetadataValue.path(str(reports[last_day]))} if last_day in reports else {}),
            **({"evidently_seconds_per_day": float(np.mean(seconds))} if seconds else {}),
            "dagster/row_count": written["feature_drift"],
        },
    )


def _drift_checks(
    context: dg.AssetExecutionContext, trigger: TriggerPolicy, results: Mapping[dt.date, Mapping[str, Any]],
    checks: Mapping[dt.date, tuple[bool, str]], *, single: bool,
) -> Iterator[dg.AssetCheckResult | dg.AssetCheckEvaluation]:
    """One important_feature_drift result per day: a plain result when the run is one day
    (Dagster ties it to the run's partition), else an evaluation naming its partition."""
    for day, (passed, message) in checks.items():
        result = results[day]
        metadata = {
            "important_drift_share": result["important_drift_share"],
            "calibrated_drift_share": result["calibrated_drift_share"],
            "important_drift_score": result["important_drift_score"],
            "threshold": trigger.calibrated_drift_share,
            "beyond_their_bar": dg.MetadataValue.json(result["calibrated_drifted_features"]),
            "share_drifted": result["share_drifted"],
            "drifted_features": dg.MetadataValue.json(
                {f["feature"]: {"importance": f["importance"], "stattest": f["stattest"], "score": f["drift_score"]}
                 for f in result["important_features"] if f["drifted"]}
            ),
        }
        if not passed:
            context.log.warning(message)
        if single:
            yield dg.AssetCheckResult(
                asset_key=FEATURE_DRIFT_KEY, check_name=IMPORTANT_FEATURE_DRIFT, passed=passed,
                severity=dg.AssetCheckSeverity.WARN, description=message, metadata=metadata,
            )
        else:
            yield dg.AssetCheckEvaluation(
                asset_key=FEATURE_DRIFT_KEY, check_name=IMPORTANT_FEATURE_DRIFT, passed=passed,
                severity=dg.AssetCheckSeverity.WARN, blocking=False, description=message,
                metadata=metadata, partition=day.isoformat(),
            )


# --------------------------------------------------------------------------------------------
# Prediction drift


@dg.asset(
    key=PREDICTION_DRIFT_KEY,
    group_name=GROUP,
    kinds={"duckdb", "matplotlib"},
    deps=[predictions, REFERENCE_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=daily_refresh(ignore=dg.AssetSelection.assets(REFERENCE_KEY)),
)
def prediction_drift_asset(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """Each day's served primary-tier scores against the training scores of the version that
    served them: distribution drift, positive rate at the operating threshold, mean score and
    confidence (monitoring.prediction_drift), with the tiers' row counts."""
    days = partition_dates(context)
    _, champion_name, champion_version = _champion(keel, mlflow)
    references: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}

    def reference_for(con, model_name: str, version: int) -> tuple[int, dict[str, Any]]:
        """The reference of the version that served; the champion's if it has none."""
        if (model_name, version) not in references:
            used, record = version, store.reference_record(con, model_name, version)
            if record is None or not Path(record["path"]).exists():
                used, record = champion_version, store.reference_record(con, champion_name, champion_version)
                if record is None or not Path(record["path"]).exists():
                    raise dg.Failure(f"no monitoring reference for {model_name} v{version} nor for the champion "
                                     f"{champion_name} v{champion_version}: materialize monitoring/reference")
                context.log.warning(f"{model_name} v{version} has no reference; its scores are compared with "
                                    f"the champion's (v{champion_version})")
            references[(model_name, version)] = (used, load_reference(Path(record["path"])))
        return references[(model_name, version)]

    computed_at = utc_now()
    rows, last_scores = [], None
    with keel.warehouse() as con:
        served = served_predictions(con, model_spec(keel), days[0], days[-1])
        served_days = days_of(served, "day")
        for day in days:
            today = served.loc[served_days == day]
            if today.empty:
                context.log.warning(f"{day}: no predictions served; nothing compared")
                continue
            row, primary = served_day(day, today, computed_at)
            if primary.empty:
                context.log.warning(f"{day}: no primary-tier predictions ({json.loads(row['tier_counts'])}); "
                                    "no score drift measured")
                row.update(model_name=champion_name, model_version=None)
                rows.append(row)
                continue
            model_name, version, scores = serving_model(primary)
            reference_version, data = reference_for(con, model_name, version)
            result = prediction_drift(data, scores.to_numpy(dtype=float))
            row.update(model_name=model_name, model_version=version, reference_version=reference_version,
                       **prediction_drift_fields(result))
            rows.append(row)
            last_scores = (day, data, scores.to_numpy(dtype=float))
        if not rows:
            raise dg.Failure(f"no predictions in serving.predictions for {days[0]}..{days[-1]}")
        table = pd.DataFrame(rows)
        store.replace_days(con, {"prediction_drift": table}, days)

    metadata: dict[str, Any] = {
        "days": len(days),
        "days_measured": int(table["drifted"].notna().sum()) if "drifted" in table else 0,
        "days_drifted": dg.MetadataValue.json(
            sorted(str(r["day"]) for r in rows if r.get("drifted"))),
        "per_day": dg.MetadataValue.md(markdown_table(
            rows=[(r["day"], r["rows"], r["primary_rows"], r.get("model_version"), r.get("stattest"),
              r.get("drift_score"), r.get("drifted"), r.get("positive_rate"), r.get("reference_positive_rate"))
             for r in rows[-31:]],
            header=["day", "rows", "primary rows", "version", "test", "score", "drifted", "positive rate", "reference"],
        )),
        "dagster/row_count": len(table),
    }
    if last_scores is not None:
        day, data, scores = last_scores
        last = next(r for r in rows if r["day"] == day)
        plot = plot_score_distribution(
            prediction_drift(data, scores), monitoring_dir(keel) / "plots" / "prediction_drift" / f"{day.isoformat()}.png"
        )
        metadata.update({
            "last_day": day.isoformat(),
            "drifted": bool(last["drifted"]),
            "drift_score": float(last["drift_score"]),
            "ks_stat": float(last["ks_stat"]),
            "psi": float(last["psi"]),
            "positive_rate": float(last["positive_rate"]),
            "reference_positive_rate": float(last["reference_positive_rate"]),
            "score_distribution_plot": dg.MetadataValue.path(str(plot)),
        })
    return dg.MaterializeResult(metadata=metadata)


# --------------------------------------------------------------------------------------------
# Performance


@dg.asset(
    key=PERFORMANCE_KEY,
    group_name=GROUP,
    kinds={"duckdb", "matplotlib"},
    deps=[predictions, LABELS_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=daily_refresh(),
)
def performance_asset(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
    """The served scores against the labels: ROC AUC, PR AUC, log loss, Brier, observed and
    predicted positive rate per day, and pooled over the trailing 7 days
    (monitoring.performance). Days whose labels are not in yet are skipped."""
    spec = model_spec(keel)
    days = partition_dates(context)
    with keel.warehouse() as con:
        frame = labelled_predictions(con, spec, days[0] - dt.timedelta(days=TRAILING_DAYS - 1), days[-1])
        rows = performance_rows(frame, days, utc_now())
        measured = {row["day"] for row in rows}
        for day in days:
            if day not in measured:
                context.log.info(f"{day}: no labelled predictions yet; performance not measured")
        store.replace_days(con, {"performance": pd.DataFrame(rows, columns=list(store.COLUMNS["performance"]))}, days)
        history = store.performance_history(con)
    metadata: dict[str, Any] = {
        "days": len(days),
        "days_measured": len(rows),
        "days_without_labels": dg.MetadataValue.json(sorted(str(d) for d in set(days) - measured)),
        "dagster/row_count": len(rows),
    }
    if rows:
        last = rows[-1]
        trigger = keel.deployment.trigger
        plot = plot_performance(history, monitoring_dir(keel) / "plots" / "performance" / "performance.png",
                                policy=trigger)
        metadata.update({
            "last_day": last["day"].isoformat(),
            "rows": last["rows"],
            "roc_auc": last["roc_auc"] if last["roc_auc"] is not None else "undefined",
            "log_loss": last["log_loss"],
            "brier": last["brier"],
            "trailing_window": f"{last['trailing_start']}..{last['trailing_end']}",
            "trailing_rows": last["trailing_rows"],
            "trailing_roc_auc": last["trailing_roc_auc"] if last["trailing_roc_auc"] is not None else "undefined",
            "trailing_log_loss": last["trailing_log_loss"],
            "trailing_brier": last["trailing_brier"],
            "per_day": dg.MetadataValue.md(markdown_table(
                rows=[(r["day"], r["rows"], r["positives"], r["roc_auc"], r["log_loss"], r["brier"],
                  r["trailing_roc_auc"]) for r in rows[-31:]],
                header=["day", "rows", "positives", "AUC", "log loss", "Brier", "trailing AUC"],
            )),
            "performance_plot": dg.MetadataValue.path(str(plot)),
            "performance_plot_min_auc": trigger.min_auc,
        })
    return dg.MaterializeResult(metadata=metadata)


monitoring_assets = [reference, feature_drift_asset, prediction_drift_asset, performance_asset]
monitoring_checks: list[dg.AssetChecksDefinition] = []  # important_feature_drift is in feature_drift's check_specs
