"""Training assets: the training set and the three models, each versioned in MLflow.

``models/training_set`` reads the labelled feature rows of a window once and writes them as
Parquet under a folder of its run (``models/training_set/<run id>``); ``primary_model`` (LightGBM with a small hyperparameter search and early
stopping), ``fallback_model`` (a small LightGBM on a few robust features) and
``baseline_model`` (the use case's ModelSpec.baseline_feature) train on its time split, register a
new version each and give it the alias ``challenger``. Every version carries its lineage:
window, row counts, training-set hash, dbt manifest, git commit, lock file, parameters and
the Dagster run id.
"""


import datetime as dt
import json
import shutil
from pathlib import Path
from collections.abc import Callable
from typing import Any

import dagster as dg

from assets.features import FEATURES_KEY, LABELS_KEY
from keel.ml import evaluation as ev
from keel.ml import modeling
from keel.ml.datasets import LABEL_CORRUPTIONS, TrainingSet, build_training_set, training_config
from keel.ml.lineage import code_lineage, model_lineage
from keel.ml.modeling import Split, TrainedModel
from keel.registry.promotion import RUN_TAG, registered_names
from keel.ml.report import holdout_metrics
from keel.core.spec import ModelSpec
from keel.render.tables import cell, markdown_table
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

GROUP = "models"
KEY_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")


def model_spec(keel: KeelState) -> ModelSpec:
    spec = keel.usecase.model
    if spec is None:
        raise dg.Failure(f"use case {keel.usecase.name!r} declares no model (UseCase.model)")
    return spec


class TrainingSetConfig(dg.Config):
    """The window of days to train on, and how to cut it in time."""

    start: str = ""  # first day (YYYY-MM-DD); empty: the first labelled day
    end: str = ""  # last day; empty: the last labelled day
    valid_weeks: int = 4  # validation: the weeks before the test weeks
    test_weeks: int = 4  # test (holdout): the most recent weeks
    # A drill for the promotion gates: "shuffle" or "invert" the training and validation
    # labels (never the test labels). The model that learns from them must be blocked.
    label_corruption: str = "none"


TRAINING_SET_KEY = dg.AssetKey(["models", "training_set"])


@dg.asset(
    key=TRAINING_SET_KEY,
    group_name=GROUP,
    kinds={"duckdb", "parquet"},
    deps=[key for key in (FEATURES_KEY, LABELS_KEY) if key],
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
    path = built.save(training_set_dir(keel, context.run.run_id))
    _keep_recent_training_sets(keel.paths.models / "training_set")
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
            "split": dg.MetadataValue.md(markdown_table(
                ["part", "first day", "last day", "rows", "positives", "rate"], split_rows, digits=3,
            )),
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": meta["rows"],
        },
        data_version=dg.DataVersion(meta["frame_sha256"][:16]),
    )


KEEP_TRAINING_SETS = 3  # recent runs' training sets kept beside the current one's


def training_set_dir(keel: KeelState, run_id: str) -> Path:
    """Where run ``run_id`` writes its training set: each run reads its own, never one that
    another run wrote to a shared path in the meantime."""
    return keel.paths.models / "training_set" / run_id


def _keep_recent_training_sets(root: Path) -> None:
    runs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for old in runs[KEEP_TRAINING_SETS + 1:]:
        shutil.rmtree(old, ignore_errors=True)


def load_training_set(context: dg.AssetExecutionContext, keel: KeelState) -> TrainingSet:
    """This run's training set; in a run that did not build one (a model materialized on its
    own), the one written by the run that last materialized models/training_set."""
    own = training_set_dir(keel, context.run.run_id)
    if own.exists():
        return TrainingSet.load(own)
    records = context.instance.fetch_materializations(TRAINING_SET_KEY, limit=1).records
    if not records:
        raise dg.Failure("no training set: materialize models/training_set first")
    path = records[0].asset_materialization.metadata["path"].value
    return TrainingSet.load(Path(path).parent)


def registered_in_run(registry, name: str, run_id: str) -> int | None:
    """The version of ``name`` that Dagster run ``run_id`` registered, from its lineage tag;
    None when that run registered none. A run evaluates and promotes its own models, not
    whatever a moving alias points at when it gets there."""
    # The registry's own filter language; the name comes from the configuration.
    found = [
        int(mv.version) for mv in registry.client().search_model_versions(filter_string=f"name = '{name}'")
        if mv.tags.get(RUN_TAG) == run_id
    ]
    return max(found) if found else None


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
    training = load_training_set(context, keel)
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
    registry = mlflow.open()
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
        f"{name} v{registered.version}: test AUC {cell(test['roc_auc'])}, log loss {test['log_loss']:.4f}, "
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


def _trials_markdown(trials: list[dict[str, Any]]) -> str:
    names = list(trials[0]["params"])
    # Parameters and rounds as they were set, the log loss to five decimals: written as text.
    return markdown_table(
        ["trial", *names, "rounds", "valid log loss", "valid AUC"],
        [(t["trial"], *(str(t["params"].get(n)) for n in names), str(t["best_iteration"]),
          f"{t['valid_log_loss']:.5f}", t["valid_roc_auc"]) for t in trials],
    )


@dg.asset(
    key=["models", "primary_model"],
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[training_set],
)
def primary_model(
    context: dg.AssetExecutionContext, config: PrimaryModelConfig, keel: KeelState, mlflow: MlflowRegistry
) -> dg.MaterializeResult:
    """The primary LightGBM classifier of the use case's label on every feature: a small
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
    """A small LightGBM on a few robust features (ModelSpec.fallback_features), served
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
    """The business-rule baseline: the use case's baseline feature, already a probability
    of the label, served as the score. The bar every model must clear, and the last serving tier."""
    return _train_and_register(context, "baseline", keel, mlflow, modeling.train_baseline, {})


training_assets = [training_set, primary_model, fallback_model, baseline_model]
