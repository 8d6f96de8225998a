"""The champion's monitoring reference: a profile of the rows it learned from, built once.

Each champion version's reference is rebuilt from its lineage (the training window and its
time split), scored by the model itself, and written as JSON (the profiles of
``keel.monitoring.daily.build_reference``, the operating threshold, the feature importance and
the per-feature drift bars of ordinary days) beside a Parquet sample of the rows for
Evidently's report. Files live under ``KEEL_HOME/monitoring/reference/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from keel.core.dates import utc_now
from keel.core.spec import ModelSpec
from keel.data.landing import write_atomically
from keel.ml.datasets import build_training_set
from keel.monitoring.daily import build_reference, drift_baseline

# Evidently's cost grows with rows x columns; a few thousand reference rows show the same
# distributions at a fraction of the time of the full training window.
SAMPLE_ROWS = 5_000
SAMPLE_SEED = 13
THRESHOLD_METRIC = "valid.threshold"  # the operating threshold, chosen on validation (max F1)


def model_inputs(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """The model's inputs, split as the reference profiles them: (numeric, categorical)."""
    categorical = [f for f in spec.features if f in spec.categorical]
    return [f for f in spec.features if f not in spec.categorical], categorical


def reference_paths(monitoring: Path, model_name: str, version: int) -> tuple[Path, Path]:
    """Where one version's reference JSON and its Parquet sample of training rows live
    under the ``monitoring`` folder."""
    folder = Path(monitoring) / "reference"
    return folder / f"{model_name}-v{version}.json", folder / f"{model_name}-v{version}.sample.parquet"


def load_reference(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


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
        raise LookupError(f"{model_name} v{version}: its run logged no {THRESHOLD_METRIC}")
    return float(metrics[THRESHOLD_METRIC]), f"mlflow run {run_id} metric {THRESHOLD_METRIC}"


def build_champion_reference(
    warehouse: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]], registry, spec: ModelSpec,
    name: str, version: int, path: Path, sample_path: Path, log: logging.Logger | Any,
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """Rebuild the version's train and validation rows from its lineage, score them and
    write its reference JSON and row sample; returns its monitoring.reference row, the
    reference and the validation rows' scores. ``warehouse()`` opens the warehouse; ``log``
    takes ``warning`` and ``info`` lines."""
    lineage = registry.lineage(name, version)
    config = lineage["training_config"]
    window = (dt.date.fromisoformat(lineage["window"]["start"]), dt.date.fromisoformat(lineage["window"]["end"]))
    corruption = config.get("label_corruption", "none")
    # True labels even for a drill model (its gates keep it from serving): the reference's
    # label rate describes the data, not the drill.
    with warehouse() as con:
        training = build_training_set(
            con, spec, *window, valid_weeks=config["valid_weeks"], test_weeks=config["test_weeks"],
            feedback_as_of=config.get("feedback_as_of"),
        )
    split = training.split(spec)
    if corruption == "none" and training.meta["training_set_hash"] != lineage["training_set_hash"]:
        log.warning(
            f"{name} v{version}: the warehouse's rows of {window[0]}..{window[1]} no longer hash to the "
            f"training set the model learned from; the reference describes the rows as they are now"
        )
    # The test weeks stay out: they are the promotion holdout, not what the model learned from.
    frame = pd.concat([split.train, split.valid], ignore_index=True)
    model = registry.load(name, version)
    if model.booster is None:
        raise ValueError(f"{name} v{version} is a {model.kind} model without a booster: no importance")
    features = list(spec.features)
    numeric, categorical = model_inputs(spec)
    scores = model.predict(frame)
    threshold, threshold_source = operating_threshold(registry, name, version)
    importance = normalised_importance(model.booster, features)
    data = build_reference(
        frame[features], numeric, categorical, scores=scores, threshold=threshold,
        labels=frame[spec.label].to_numpy(dtype=float),
    )
    first = min(split.windows["train"][0], split.windows["valid"][0])
    last = max(split.windows["train"][1], split.windows["valid"][1])
    built_at = utc_now()
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
    # (keel.monitoring.daily.drift_baseline and calibrated_drift).
    train_only = build_reference(split.train[features], numeric, categorical, scores=None)
    data["drift_baseline"] = drift_baseline(
        train_only, split.valid[[*features, spec.date_column]], spec.date_column, importance=importance
    )
    sample = frame[features].sample(n=min(SAMPLE_ROWS, len(frame)), random_state=SAMPLE_SEED)
    write_atomically(sample_path, sample.reset_index(drop=True).to_parquet(index=False))
    write_atomically(path, (json.dumps(data, sort_keys=True) + "\n").encode())
    log.info(
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
