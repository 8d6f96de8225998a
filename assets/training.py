"""Training assets: the training set and the three models, each versioned in MLflow.

``models/training_set`` reads the labelled feature rows of a window once and writes them as
Parquet; ``primary_model`` (LightGBM with a small hyperparameter search and early
stopping), ``fallback_model`` (a small LightGBM on a few robust features) and
``baseline_model`` (the route's trailing disruption rate) train on its time split, register a
new version each and give it the alias ``challenger``. Every version carries its lineage:
window, row counts, training-set hash, dbt manifest, git commit, lock file, parameters and
the Dagster run id.
"""


import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import dagster as dg

from assets.partitions import USECASE
from keel import evaluation as ev
from keel import modeling
from keel.datasets import LABEL_CORRUPTIONS, TrainingSet, build_training_set, training_config
from keel.lineage import code_lineage, model_lineage
from keel.modeling import Split, TrainedModel
from keel.promotion import registered_names
from keel.report import holdout_metrics
from keel.spec import ModelSpec
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

GROUP = "models"
FEATURES_KEY = dg.AssetKey(["marts", "flight_features"])
LABELS_KEY = dg.AssetKey(["marts", "flight_labels"])
KEY_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")


def model_spec(keel: KeelState) -> ModelSpec:
    spec = keel.usecase.model
    if spec is None:
        raise dg.Failure(f"use case {keel.usecase.name!r} declares no model (UseCase.model)")
    return spec


def _upstream_keys() -> list[dg.AssetKey]:
    spec = USECASE.model
    if spec is None:
        return []
    return [dg.AssetKey(spec.features_relation.split(".")), dg.AssetKey(spec.labels_relation.split("."))]


class TrainingSetConfig(dg.Config):
    """The window of days to train on, and how to cut it in time."""

    start: str = ""  # first day (YYYY-MM-DD); empty: the first labelled day
    end: str = ""  # last day; empty: the last labelled day
    valid_weeks: int = 4  # validation: the weeks before the test weeks
    test_weeks: int = 4  # test (holdout): the most recent weeks
    # A drill for the promotion gates: "shuffle" or "invert" the training and validation
    # labels (never the test labels). The model that learns from them must be blocked.
    label_corruption: str = "none"


@dg.asset(
    key=["models", "training_set"],
    group_name=GROUP,
    kinds={"duckdb", "parquet"},
    deps=_upstream_keys(),
)
def training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig, keel: KeelState) -> dg.MaterializeResult:
    """Labelled feature rows of the training window, cut into train, validation and test
    weeks; written as Parquet so that the models and the evaluation read the warehouse once."""
    spec = model_spec(keel)
    if config.label_corruption not in LABEL_CORRUPTIONS:
        raise dg.Failure(f"label_corruption must be one of {LABEL_CORRUPTIONS}, got {config.label_corruption!r}")
    start = dt.date.fromisoformat(config.start) if config.start else None
    end = dt.date.fromisoformat(config.end) if config.end else None
    with keel.warehouse() as con:
        built = build_training_set(
            con, spec, start, end, valid_weeks=config.valid_weeks, test_weeks=config.test_weeks,
            label_corruption=config.label_corruption,
        )
    built.meta["dagster_run_id"] = context.run.run_id
    path = built.save(keel.paths.models / "training_set")
    meta = built.meta
    if meta["label_corruption"] != "none":
        context.log.warning(f"training labels corrupted on purpose ({meta['label_corruption']}): a drill")
    split_rows = [
        (part, v["start"], v["end"], v["rows"], v["positives"], v["positives"] / v["rows"])
        for part, v in meta["split"].items()
    ]
    return dg.MaterializeResult(
        metadata={
            "window": f"{meta['window']['start']}..{meta['window']['end']}",
            "days": meta["days"],
            "rows": meta["rows"],
            "positives": meta["positives"],
            "training_set_hash": meta["training_set_hash"],
            "frame_sha256": meta["frame_sha256"],
            "label_corruption": meta["label_corruption"],
            "split": dg.MetadataValue.md(
                "| part | first day | last day | rows | positives | rate |\n|---|---|---|---|---|---|\n"
                + "\n".join(f"| {p} | {a} | {b} | {n:,} | {k:,} | {r:.3f} |" for p, a, b, n, k, r in split_rows)
            ),
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": meta["rows"],
        },
        data_version=dg.DataVersion(meta["frame_sha256"][:16]),
    )


class PrimaryModelConfig(dg.Config):
    search_trials: int = 4  # configurations tried: the defaults, then draws from the search space
    num_threads: int = 1  # LightGBM threads; the model is the same to the bit with any count
    seed: int = 13
    # LightGBM parameters as JSON: train exactly this configuration, no search.
    params_json: str = ""


class FallbackModelConfig(dg.Config):
    num_threads: int = 1
    seed: int = 13


def _train_and_register(
    context: dg.AssetExecutionContext,
    kind: str,
    keel: KeelState,
    mlflow: MlflowRegistry,
    train: Callable[[Split, ModelSpec], TrainedModel],
    settings: dict[str, Any],
) -> dg.MaterializeResult:
    spec = model_spec(keel)
    training = TrainingSet.load(keel.paths.models / "training_set")
    split = training.split(spec)
    model = train(split, spec)
    metrics = holdout_metrics(split, spec, model)
    config = {**training_config(training.meta), **settings}
    lineage = model_lineage(
        kind=kind,
        training_set=training.meta,
        training_set_hash=training.meta["training_set_hash"],
        params=model.params,
        training_config=config,
        dagster_run_id=context.run.run_id,
        code=code_lineage(),
    )
    registry = mlflow.open(keel.paths)
    name = registered_names(keel.usecase.name)[kind]
    registered = registry.log_and_register(
        model,
        name=name,
        metrics={part: ev.flat_metrics(result) for part, result in metrics.items()},
        params=config,
        lineage=lineage,
        trials=model.trials or None,
    )
    registry.mark_challenger(name, registered.version)
    test = metrics["test"]
    context.log.info(
        f"{name} v{registered.version}: test AUC {_number(test['roc_auc'])}, log loss {test['log_loss']:.4f}, "
        f"ECE {test['ece']:.4f}; alias challenger"
    )
    metadata: dict[str, Any] = {
        "registered_model": name,
        "model_version": registered.version,
        "mlflow_run_id": registered.run_id,
        "model_uri": registered.model_uri,
        **{f"test_{m}": test[m] for m in KEY_METRICS if test[m] is not None},
        **({"valid_roc_auc": metrics["valid"]["roc_auc"]} if metrics["valid"]["roc_auc"] is not None else {}),
        "threshold": test["threshold"],
        "window": f"{lineage['window']['start']}..{lineage['window']['end']}",
        "rows": dg.MetadataValue.json(lineage["rows"]),
        "training_set_hash": lineage["training_set_hash"],
        "dbt_manifest_sha256": lineage["dbt_manifest_sha256"],
        "git_commit": lineage["git_commit"],
        "lock_file_sha256": lineage["lock_file_sha256"],
        "dagster_run_id": context.run.run_id,
        "params": dg.MetadataValue.json(lineage["params"]),
        "lineage": dg.MetadataValue.json(json.loads(json.dumps(lineage, default=str))),
    }
    if model.booster is not None:
        metadata["trees"] = model.best_iteration
    if model.trials:
        metadata["trials"] = dg.MetadataValue.md(_trials_markdown(model.trials))
    return dg.MaterializeResult(metadata=metadata)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _trials_markdown(trials: list[dict[str, Any]]) -> str:
    names = list(trials[0]["params"])
    lines = ["| trial | " + " | ".join(names) + " | rounds | valid log loss | valid AUC |",
             "|---" * (len(names) + 4) + "|"]
    for t in trials:
        lines.append(
            f"| {t['trial']} | " + " | ".join(str(t["params"].get(n)) for n in names)
            + f" | {t['best_iteration']} | {t['valid_log_loss']:.5f} | {_number(t['valid_roc_auc'])} |"
        )
    return "\n".join(lines)


@dg.asset(
    key=["models", "primary_model"],
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[training_set],
)
def primary_model(
    context: dg.AssetExecutionContext, config: PrimaryModelConfig, keel: KeelState, mlflow: MlflowRegistry
) -> dg.MaterializeResult:
    """The primary LightGBM classifier of flight disruption on every feature: a small
    hyperparameter search (each trial logged), early stopping on validation log loss,
    registered in MLflow as LightGBM text with the alias challenger."""
    params = json.loads(config.params_json) if config.params_json else None

    def train(split: Split, spec: ModelSpec) -> TrainedModel:
        return modeling.train_primary(
            split, spec, params=params, search_trials=config.search_trials, seed=config.seed,
            num_threads=config.num_threads,
        )

    settings = {"search_trials": 1 if params else config.search_trials, "seed": config.seed,
                "num_threads": config.num_threads, "explicit_params": params is not None}
    return _train_and_register(context, "primary", keel, mlflow, train, settings)


@dg.asset(
    key=["models", "fallback_model"],
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[training_set],
)
def fallback_model(
    context: dg.AssetExecutionContext, config: FallbackModelConfig, keel: KeelState, mlflow: MlflowRegistry
) -> dg.MaterializeResult:
    """A small LightGBM on a few robust features (schedule and the route's history), served
    when the primary model cannot be loaded or fails."""

    def train(split: Split, spec: ModelSpec) -> TrainedModel:
        return modeling.train_fallback(split, spec, seed=config.seed, num_threads=config.num_threads)

    return _train_and_register(
        context, "fallback", keel, mlflow, train, {"seed": config.seed, "num_threads": config.num_threads}
    )


@dg.asset(
    key=["models", "baseline_model"],
    group_name=GROUP,
    kinds={"mlflow"},
    deps=[training_set],
)
def baseline_model(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """The business-rule baseline: a flight is as likely to be disrupted as its route was
    over the trailing 28 days. The bar every model must clear, and the last serving tier."""
    return _train_and_register(context, "baseline", keel, mlflow, modeling.train_baseline, {})


training_assets = [training_set, primary_model, fallback_model, baseline_model]
