"""Monitoring assets: the champion's reference, and each day's drift and performance.

``monitoring/reference`` summarises the serving champion's training rows once per version
(``keel.monitoring.build_reference``, with the model's threshold and feature importance),
and keeps a sample of those rows for Evidently's report. The three daily assets measure each
day against it and write the ``monitoring`` tables (``keel.monitoring_store``), which the
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
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from assets.automation import daily_refresh, while_missing_or_upstream_change
from assets.evaluation import champion
from assets.partitions import daily_partitions, partition_dates
from assets.scoring import predictions
from assets.training import FEATURES_KEY, LABELS_KEY, model_spec
from keel import evaluation as ev
from keel import monitoring_store as store
from keel.datasets import build_training_set, feature_rows, relation
from keel.landing import write_atomically
from keel.monitoring import (
    TRAILING_DAYS,
    TriggerPolicy,
    build_reference,
    calibrated_drift,
    drift_baseline,
    feature_drift,
    performance,
    plot_drift_timeline,
    plot_performance,
    plot_score_distribution,
    prediction_drift,
)
from keel.promotion import alias_or_none, registered_names
from keel.scoring import ensure_serving
from keel.settings import offline_environment
from keel.spec import ModelSpec
from keel.warehouse import ident
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

GROUP = "monitoring"
REFERENCE_KEY = dg.AssetKey([GROUP, "reference"])
FEATURE_DRIFT_KEY = dg.AssetKey([GROUP, "feature_drift"])
PREDICTION_DRIFT_KEY = dg.AssetKey([GROUP, "prediction_drift"])
PERFORMANCE_KEY = dg.AssetKey([GROUP, "performance"])
IMPORTANT_FEATURE_DRIFT = "important_feature_drift"

# Evidently's cost grows with rows x columns; a few thousand reference rows show the same
# distributions at a fraction of the time of the full training window.
SAMPLE_ROWS = 5_000
SAMPLE_SEED = 13
EVIDENTLY_MODES = ("always", "drifted", "never")
TOP_FEATURES = 15
TIMELINE_FEATURES = 20
THRESHOLD_METRIC = "valid.threshold"  # the operating threshold, chosen on validation (max F1)


def monitoring_dir(keel: KeelState) -> Path:
    return keel.paths.home / "monitoring"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _features(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """The model's inputs, split as the reference profiles them: (numeric, categorical)."""
    categorical = [f for f in spec.features if f in spec.categorical]
    return [f for f in spec.features if f not in spec.categorical], categorical


def _day_of(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_datetime(frame[column]).dt.date


def _markdown(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# --------------------------------------------------------------------------------------------
# Reference


def reference_paths(keel: KeelState, model_name: str, version: int) -> tuple[Path, Path]:
    """Where one version's reference JSON and its Parquet sample of training rows live."""
    folder = monitoring_dir(keel) / "reference"
    return folder / f"{model_name}-v{version}.json", folder / f"{model_name}-v{version}.sample.parquet"


def _champion(keel: KeelState, mlflow: MlflowRegistry):
    registry = mlflow.open(keel.paths)
    name = registered_names(keel.usecase.name)["primary"]
    version = alias_or_none(registry, name, registry.CHAMPION)
    if version is None:
        raise dg.Failure(f"{name} has no champion: train and promote a model first (models/champion)")
    return registry, name, version


def normalised_importance(booster, features: Sequence[str]) -> dict[str, float]:
    """LightGBM gain per feature, summing to 1 over ``features``."""
    gain = dict(zip(booster.feature_name(), booster.feature_importance(importance_type="gain")))
    unknown = sorted(set(features) - set(gain))
    if unknown:
        raise ValueError(f"the booster has no feature {unknown}")
    total = float(sum(gain[f] for f in features))
    if total <= 0:
        raise ValueError("the booster's gain sums to zero")
    return {f: float(gain[f]) / total for f in features}


def operating_threshold(registry, model_name: str, version: int) -> tuple[float, str]:
    """The threshold the version was evaluated at (chosen on validation, logged with its run)."""
    client = registry.client()
    run_id = client.get_model_version(model_name, str(version)).run_id
    metrics = client.get_run(run_id).data.metrics
    if THRESHOLD_METRIC not in metrics:
        raise dg.Failure(f"{model_name} v{version}: its run logged no {THRESHOLD_METRIC}")
    return float(metrics[THRESHOLD_METRIC]), f"mlflow run {run_id} metric {THRESHOLD_METRIC}"


def load_reference(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


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
    path, sample_path = reference_paths(keel, name, version)
    with keel.warehouse() as con:
        record = store.reference_record(con, name, version)
    plot = monitoring_dir(keel) / "plots" / "reference" / f"{name}-v{version}-scores.png"
    built = not (record and Path(record["path"]).exists() and Path(record["sample_path"]).exists())
    if built:
        record, data, valid_scores = _build_reference(context, keel, registry, spec, name, version, path, sample_path)
        # The validation weeks' scores beside the whole reference: where the threshold was chosen.
        plot_score_distribution(data, valid_scores, plot)
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
            "top_features": dg.MetadataValue.md(_markdown(
                [(i + 1, f, round(w, 4), "categorical" if f in spec.categorical else "numeric")
                 for i, (f, w) in enumerate(top)],
                ["rank", "feature", "importance (gain share)", "kind"],
            )),
            "path": dg.MetadataValue.path(str(record["path"])),
            "sample_path": dg.MetadataValue.path(str(record["sample_path"])),
            **({"score_distribution_plot": dg.MetadataValue.path(str(plot))} if plot.exists() else {}),
            "dagster/row_count": int(record["rows"]),
        },
        data_version=dg.DataVersion(f"{name}-v{version}"),
    )


def _build_reference(
    context: dg.AssetExecutionContext, keel: KeelState, registry, spec: ModelSpec, name: str, version: int,
    path: Path, sample_path: Path,
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """Rebuild the version's train and validation rows from its lineage, score them and
    write its reference JSON and row sample; returns its monitoring.reference row, the
    reference and the validation rows' scores."""
    lineage = registry.lineage(name, version)
    config = lineage["training_config"]
    window = (dt.date.fromisoformat(lineage["window"]["start"]), dt.date.fromisoformat(lineage["window"]["end"]))
    corruption = config.get("label_corruption", "none")
    # True labels even for a drill model (its gates keep it from serving): the reference's
    # label rate describes the data, not the drill.
    with keel.warehouse() as con:
        training = build_training_set(
            con, spec, *window, valid_weeks=config["valid_weeks"], test_weeks=config["test_weeks"],
        )
    split = training.split(spec)
    if corruption == "none" and training.meta["training_set_hash"] != lineage["training_set_hash"]:
        context.log.warning(
            f"{name} v{version}: the warehouse's rows of {window[0]}..{window[1]} no longer hash to the "
            f"training set the model learned from; the reference describes the rows as they are now"
        )
    # The test weeks stay out: they are the promotion holdout, not what the model learned from.
    frame = pd.concat([split.train, split.valid], ignore_index=True)
    model = registry.load(name, version)
    if model.booster is None:
        raise dg.Failure(f"{name} v{version} is a {model.kind} model without a booster: no importance")
    features = list(spec.features)
    numeric, categorical = _features(spec)
    scores = model.predict(frame)
    threshold, threshold_source = operating_threshold(registry, name, version)
    importance = normalised_importance(model.booster, features)
    data = build_reference(
        frame[features], numeric, categorical, scores=scores, threshold=threshold,
        labels=frame[spec.label].to_numpy(dtype=float),
    )
    first = min(split.windows["train"][0], split.windows["valid"][0])
    last = max(split.windows["train"][1], split.windows["valid"][1])
    built_at = _now()
    data["model"] = {
        "name": name,
        "version": version,
        "window": {"start": first.isoformat(), "end": last.isoformat()},
        "training_window": lineage["window"],
        "parts": {part: split.summary()[part] for part in ("train", "valid")},
        "threshold": threshold,
        "threshold_source": threshold_source,
        "training_set_hash": lineage["training_set_hash"],
        "built_at": built_at.isoformat(),
    }
    data["importance"] = {"source": "lightgbm gain, normalised", "values": importance}
    # How far each feature moves on an ordinary unseen day: each validation day against a
    # profile of the training weeks alone. Serving days are held to these per-feature bars
    # (keel.monitoring.drift_baseline and calibrated_drift).
    train_only = build_reference(split.train[features], numeric, categorical, scores=None)
    data["drift_baseline"] = drift_baseline(
        train_only, split.valid[[*features, spec.date_column]], spec.date_column, importance=importance
    )
    sample = frame[features].sample(n=min(SAMPLE_ROWS, len(frame)), random_state=SAMPLE_SEED)
    write_atomically(sample_path, sample.reset_index(drop=True).to_parquet(index=False))
    write_atomically(path, (json.dumps(data, sort_keys=True) + "\n").encode())
    context.log.info(
        f"{name} v{version}: reference of {len(frame):,} rows ({first}..{last}), threshold {threshold:.4f}"
    )
    row = {
        "model_name": name,
        "model_version": version,
        "path": str(path),
        "sample_path": str(sample_path),
        "built_at": built_at,
        "rows": len(frame),
        "sample_rows": len(sample),
        "window_start": first,
        "window_end": last,
        "threshold": threshold,
        "importance": importance,
        "drift_baseline": data["drift_baseline"],
    }
    return row, data, scores[len(split.train):]


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
    # The share of the model's importance in features beyond their own ordinary-day bar at
    # which a day fails important_feature_drift.
    calibrated_drift_share: float = store.CALIBRATED_DRIFT_SHARE


def evidently_report(
    reference_sample: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str],
    path: Path,
) -> float:
    """Evidently's DataDriftPreset of ``current`` against ``reference_sample`` as HTML at
    ``path``; returns the seconds it took.

    Evidently raises on a column without a single current (or reference) value, such as wind
    gusts on a calm day; such columns are left out of its report. Keel's own figures list
    them as ``flagged_features`` (no_current_values)."""
    offline_environment()  # before Evidently is imported: no usage reports
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    present = [c for c in [*numeric, *categorical]
               if current[c].notna().any() and reference_sample[c].notna().any()]
    numeric = [c for c in numeric if c in present]
    categorical = [c for c in categorical if c in present]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    columns = [*numeric, *categorical]
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(reference_sample[columns], data_definition=definition),
    )
    write_atomically(path, snapshot.get_html_str(as_iframe=False).encode("utf-8"))
    return time.perf_counter() - started


def drift_rows(day: dt.date, model_name: str, version: int, result: Mapping[str, Any],
               computed_at: dt.datetime, report_path: Path | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A ``feature_drift`` result as its ``monitoring.feature_drift`` rows and its
    ``monitoring.drift_daily`` row."""
    features = pd.DataFrame([
        {
            "day": day, "model_name": model_name, "model_version": version, "feature": feature,
            **{column: values.get(column) for column in (
                "kind", "stattest", "drift_score", "threshold", "drifted", "importance", "ks_stat",
                "ks_pvalue", "chi2_pvalue", "js_distance", "psi", "wasserstein_norm", "unseen_share",
                "n_ref", "n_cur", "flag",
            )},
            "computed_at": computed_at,
        }
        for feature, values in result["features"].items()
    ])
    daily = {
        "day": day, "model_name": model_name, "model_version": version, "rows": result["rows_cur"],
        "n_features": result["n_features"], "n_drifted": result["n_drifted"],
        "share_drifted": result["share_drifted"], "important_drift_share": result["important_drift_share"],
        "important_drift_score": result["important_drift_score"],
        "calibrated_drift_share": result["calibrated_drift_share"],
        "calibrated_drifted_features": json.dumps(result["calibrated_drifted_features"]),
        "dataset_drifted": result["dataset_drifted"],
        "drifted_features": json.dumps(result["drifted_features"]),
        "flagged_features": json.dumps(result["flagged_features"], sort_keys=True),
        "report_path": None if report_path is None else str(report_path),
        "computed_at": computed_at,
    }
    return features, daily


def drift_check_message(day: dt.date, result: Mapping[str, Any], threshold: float) -> tuple[bool, str]:
    """Whether the day passes ``important_feature_drift`` (the importance of its features
    beyond their own ordinary-day bar stays under ``threshold``), and why, naming those
    features with their importance, score and bar."""
    calibrated = result["calibrated_drift_share"]
    passed = calibrated < threshold
    beyond = result["calibrated_drifted_features"]
    named = ", ".join(
        f"{f['feature']} (importance {f['importance']:.3f}, {f['score']:.1f} vs bar {f['bar']:.1f})"
        for f in beyond[:8]
    )
    more = f" and {len(beyond) - 8} more" if len(beyond) > 8 else ""
    relation = "<" if passed else ">="
    message = (f"{day}: importance beyond the ordinary-day bars {calibrated:.3f} {relation} {threshold:.2f}; "
               f"{len(beyond)} feature(s) beyond their bar, {result['n_drifted']} of {result['n_features']} "
               f"over Evidently's threshold (drifted share {result['important_drift_share']:.3f})")
    if beyond:
        message += f": {named}{more}"
    if result["flagged_features"]:
        message += f"; no current values: {', '.join(sorted(result['flagged_features']))}"
    return passed, message


def plot_feature_drift(result: Mapping[str, Any], path: Path, top: int = 25) -> Path:
    """Horizontal bars: each of the ``top`` most important features' drift score against its
    threshold (red: drifted), labelled with the feature's importance and test."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = [f for f in result["important_features"] if f["drift_score"] is not None][:top]
    features = result["features"]
    figure = Figure(figsize=(8, 0.28 * len(ranked) + 1.4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots(1, 1)
    names = [f"{f['feature']} ({f['importance']:.2f}, {f['stattest']})" for f in ranked][::-1]
    scores = [f["drift_score"] for f in ranked][::-1]
    thresholds = [features[f["feature"]]["threshold"] for f in ranked][::-1]
    colours = ["tab:red" if f["drifted"] else "tab:blue" for f in ranked][::-1]
    ax.barh(range(len(ranked)), scores, color=colours)
    ax.scatter(thresholds, range(len(ranked)), marker="|", s=200, color="black", label="threshold")
    ax.set_yticks(range(len(ranked)), names, fontsize=7)
    # Distances run from 0.01 to 10 and more (a calendar feature on one day): a log scale
    # above the threshold's order keeps the small ones readable.
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set(xlabel="drift score (linear to 0.1, then log)", title=(
        f"Feature drift {result['date']}: important share {result['important_drift_share']:.3f}, "
        f"{result['n_drifted']}/{result['n_features']} drifted"))
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


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
        description=(
            "Warns on a day whose features beyond their own ordinary-day bar (mean + 3 sd of their "
            "drift on the champion's validation days) carry at least "
            f"{store.CALIBRATED_DRIFT_SHARE} of the model's importance; names them. "
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
    frame_days = _day_of(frame, spec.date_column)
    results: dict[dt.date, dict[str, Any]] = {}
    for day in days:
        rows = frame.loc[frame_days == day, features]
        if rows.empty:
            context.log.warning(f"{day}: no feature rows; no drift measured")
            continue
        result = feature_drift(data, rows, importance=record["importance"], day=day)
        result.update(calibrated_drift(result, data["drift_baseline"]))
        results[day] = result
    if not results:
        raise dg.Failure(f"no feature rows in {relation(spec.features_relation)} for {days[0]}..{days[-1]}")
    checks = {day: drift_check_message(day, result, config.calibrated_drift_share) for day, result in results.items()}
    if FEATURE_DRIFT_KEY in context.selected_asset_keys:
        yield _materialize_feature_drift(context, config, keel, record, frame, frame_days, results, checks)
    if dg.AssetCheckKey(FEATURE_DRIFT_KEY, IMPORTANT_FEATURE_DRIFT) in context.selected_asset_check_keys:
        yield from _drift_checks(context, config, results, checks, single=len(days) == 1)


def _materialize_feature_drift(
    context: dg.AssetExecutionContext, config: FeatureDriftConfig, keel: KeelState, record: Mapping[str, Any],
    frame: pd.DataFrame, frame_days: pd.Series, results: Mapping[dt.date, Mapping[str, Any]],
    checks: Mapping[dt.date, tuple[bool, str]],
) -> dg.MaterializeResult:
    """Evidently's reports, the tables and the plots of a feature drift run."""
    spec = model_spec(keel)
    days = partition_dates(context)
    name, version = record["model_name"], int(record["model_version"])
    numeric, categorical = _features(spec)
    computed_at = _now()
    reports: dict[dt.date, Path] = {}
    seconds: list[float] = []
    sample = None
    for day, result in results.items():
        wanted = config.evidently_html == "always" or (
            config.evidently_html == "drifted" and result["calibrated_drift_share"] >= config.calibrated_drift_share
        )
        if not wanted:
            continue
        if sample is None:
            sample = pd.read_parquet(record["sample_path"])
        path = monitoring_dir(keel) / "reports" / "feature_drift" / f"{day.isoformat()}.html"
        seconds.append(evidently_report(sample, frame.loc[frame_days == day], numeric, categorical, path))
        reports[day] = path
        context.log.info(f"{day}: Evidently report in {seconds[-1]:.1f} s: {path}")

    feature_frames, daily = [], []
    for day, result in results.items():
        rows, summary = drift_rows(day, name, version, result, computed_at, reports.get(day))
        feature_frames.append(rows)
        daily.append(summary)
    with keel.warehouse() as con:
        written = store.replace_days(
            con, {"feature_drift": pd.concat(feature_frames, ignore_index=True),
                  "drift_daily": pd.DataFrame(daily)}, days,
        )
        timeline = store.drift_timeline(con)

    last_day = max(results)
    last = results[last_day]
    plots = monitoring_dir(keel) / "plots" / "feature_drift"
    bars = plot_feature_drift(last, plots / f"{last_day.isoformat()}.png")
    # The grid below the shares shows the most important features only; fifty rows are unreadable.
    shown = {f["feature"] for f in last["important_features"][:TIMELINE_FEATURES]}
    timeline = [{**r, "features": {f: v for f, v in r["features"].items() if f in shown}} for r in timeline]
    timeline_plot = plot_drift_timeline(
        timeline, plots / "timeline.png", policy=TriggerPolicy()
    )
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
            "top_features": dg.MetadataValue.md(_markdown(
                [(f["feature"], f["importance"], f["stattest"], f["drift_score"], f["drifted"]) for f in top],
                ["feature", "importance", "test", "score", "drifted"],
            )),
            "drift_plot": dg.MetadataValue.path(str(bars)),
            "timeline_plot": dg.MetadataValue.path(str(timeline_plot)),
            "evidently_reports": dg.MetadataValue.json({str(d): str(p) for d, p in reports.items()}),
            **({"evidently_report": dg.MetadataValue.path(str(reports[last_day]))} if last_day in reports else {}),
            **({"evidently_seconds_per_day": float(np.mean(seconds))} if seconds else {}),
            "dagster/row_count": written["feature_drift"],
        },
    )


def _drift_checks(
    context: dg.AssetExecutionContext, config: FeatureDriftConfig, results: Mapping[dt.date, Mapping[str, Any]],
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
            "threshold": config.calibrated_drift_share,
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


def _served(con, first: dt.date, last: dt.date) -> pd.DataFrame:
    ensure_serving(con)
    return con.execute(
        "select flight_date, score, tier, model_name, model_version from serving.predictions "
        "where flight_date between ? and ? order by flight_date, flight_id",
        [first, last],
    ).df()


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

    computed_at = _now()
    rows, last_scores = [], None
    with keel.warehouse() as con:
        served = _served(con, days[0], days[-1])
        served_days = _day_of(served, "flight_date")
        for day in days:
            today = served.loc[served_days == day]
            if today.empty:
                context.log.warning(f"{day}: no predictions served; nothing compared")
                continue
            tiers = {str(k): int(v) for k, v in today["tier"].value_counts().sort_index().items()}
            primary = today.loc[today["tier"] == "primary"]
            row: dict[str, Any] = {"day": day, "rows": len(today), "primary_rows": len(primary),
                                   "tier_counts": json.dumps(tiers), "computed_at": computed_at}
            if primary.empty:
                context.log.warning(f"{day}: no primary-tier predictions ({tiers}); no score drift measured")
                row.update(model_name=champion_name, model_version=None)
                rows.append(row)
                continue
            model_name = str(primary["model_name"].mode().iloc[0])
            version = int(primary["model_version"].mode().iloc[0])
            scores = primary.loc[(primary["model_name"] == model_name) & (primary["model_version"] == version), "score"]
            reference_version, data = reference_for(con, model_name, version)
            result = prediction_drift(data, scores.to_numpy(dtype=float))
            row.update(
                model_name=model_name, model_version=version, reference_version=reference_version,
                drifted=result["drifted"], drift_score=result["drift_score"], stattest=result["stattest"],
                ks_stat=result["ks_stat"], ks_pvalue=result["ks_pvalue"], psi=result["psi"],
                positive_rate=result["positive_rate"]["current"],
                reference_positive_rate=result["positive_rate"]["reference"],
                mean_score=result["mean_score"]["current"], reference_mean_score=result["mean_score"]["reference"],
                mean_confidence=result["mean_confidence"]["current"],
                reference_mean_confidence=result["mean_confidence"]["reference"],
                threshold=result["positive_rate"]["threshold"],
            )
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
        "per_day": dg.MetadataValue.md(_markdown(
            [(r["day"], r["rows"], r["primary_rows"], r.get("model_version"), r.get("stattest"),
              r.get("drift_score"), r.get("drifted"), r.get("positive_rate"), r.get("reference_positive_rate"))
             for r in rows[-31:]],
            ["day", "rows", "primary rows", "version", "test", "score", "drifted", "positive rate", "reference"],
        )),
        "dagster/row_count": len(table),
    }
    if last_scores is not None:
        day, data, scores = last_scores
        last = next(r for r in rows if r["day"] == day)
        plot = plot_score_distribution(
            data, scores, monitoring_dir(keel) / "plots" / "prediction_drift" / f"{day.isoformat()}.png"
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


def labelled_predictions(con, spec: ModelSpec, first: dt.date, last: dt.date) -> pd.DataFrame:
    """Served scores of ``first..last`` joined with their labels (unlabelled rows left out)."""
    ensure_serving(con)
    key, label = ident(spec.key), ident(spec.label)
    return con.execute(
        f"select predictions.flight_date, predictions.score, predictions.model_name, "
        f"predictions.model_version, cast(labels.{label} as integer) as label "
        f"from serving.predictions as predictions "
        f"join {relation(spec.labels_relation)} as labels on labels.{key} = predictions.flight_id "
        f"where predictions.flight_date between ? and ? and labels.{label} is not null "
        f"order by predictions.flight_date, predictions.flight_id",
        [first, last],
    ).df()


def performance_rows(
    frame: pd.DataFrame, days: Sequence[dt.date], computed_at: dt.datetime, window_days: int = TRAILING_DAYS
) -> list[dict[str, Any]]:
    """``monitoring.performance`` rows of the ``days`` that have labelled predictions in
    ``frame`` (which also holds the ``window_days - 1`` days before them)."""
    if frame.empty:
        return []
    result = performance(frame["label"].to_numpy(), frame["score"].to_numpy(),
                         frame["flight_date"].to_numpy(), window_days=window_days)
    frame_days = _day_of(frame, "flight_date")
    rows = []
    for entry in result["days"]:
        day = dt.date.fromisoformat(entry["date"])
        if day not in days:
            continue
        today = frame.loc[frame_days == day]
        versions = (today["model_name"] + " v" + today["model_version"].astype(str)).value_counts().sort_index()
        trailing = entry["trailing"]
        rows.append({
            "day": day,
            "model_versions": json.dumps({k: int(v) for k, v in versions.items()}),
            "rows": entry["n"], "positives": entry["positives"], "roc_auc": entry["roc_auc"],
            "pr_auc": ev.average_precision(today["label"].to_numpy(), today["score"].to_numpy()),
            "log_loss": entry["log_loss"], "brier": entry["brier"],
            "mean_predicted": entry["mean_predicted"], "positive_rate": entry["positive_rate"],
            "trailing_start": dt.date.fromisoformat(trailing["start"]),
            "trailing_end": dt.date.fromisoformat(trailing["end"]),
            "trailing_days_with_data": trailing["days_with_data"], "trailing_rows": trailing["n"],
            "trailing_positives": trailing["positives"], "trailing_roc_auc": trailing["roc_auc"],
            "trailing_log_loss": trailing["log_loss"], "trailing_brier": trailing["brier"],
            "trailing_positive_rate": trailing["positive_rate"],
            "trailing_mean_predicted": trailing["mean_predicted"],
            "computed_at": computed_at,
        })
    return rows


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
        rows = performance_rows(frame, days, _now())
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
        plot = plot_performance(history, monitoring_dir(keel) / "plots" / "performance" / "performance.png",
                                policy=TriggerPolicy())
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
            "per_day": dg.MetadataValue.md(_markdown(
                [(r["day"], r["rows"], r["positives"], r["roc_auc"], r["log_loss"], r["brier"],
                  r["trailing_roc_auc"]) for r in rows[-31:]],
                ["day", "rows", "positives", "AUC", "log loss", "Brier", "trailing AUC"],
            )),
            "performance_plot": dg.MetadataValue.path(str(plot)),
        })
    return dg.MaterializeResult(metadata=metadata)


monitoring_assets = [reference, feature_drift_asset, prediction_drift_asset, performance_asset]
monitoring_checks: list[dg.AssetChecksDefinition] = []  # important_feature_drift is in feature_drift's check_specs
