"""Training of the three models Keel serves: the primary LightGBM, its fallback and a baseline.

Everything here is a plain function of a pandas frame that already joins features and label
(``spec.key``, ``spec.date_column``, every ``spec.features`` column, ``spec.label`` and the
slice columns); nothing reads the warehouse or MLflow.

Reproducibility is a contract, not a hope: ``keel reproduce`` retrains from the recorded
training-set hash and parameters and expects the same model to the bit. So

* each split part is sorted by (date, key) before training, so the warehouse's row order
  does not matter;
* LightGBM runs with ``deterministic=True``, ``force_row_wise=True``, a fixed
  ``num_threads`` and the seed, and the hyperparameter search samples its configurations
  from a grid with a seeded generator;
* the booster a :class:`TrainedModel` holds is rebuilt from its own LightGBM text
  (truncated at the best iteration), so the model in memory is exactly the model on disk and
  a save/load round trip gives identical predictions.

Models are stored as LightGBM text (``model.txt``) and JSON, never pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from keel.ml.encoding import CategoryEncoder, is_missing
from keel.ml.evaluation import log_loss, roc_auc
from keel.ml.split import Split, label_values, require_columns
from keel.core.spec import ModelSpec

ARTIFACT_FORMAT = 1
MODEL_FILE = "model.txt"
ENCODER_FILE = "encoder.json"
MANIFEST_FILE = "model.json"

KINDS = ("primary", "fallback", "baseline")

# Parameters every LightGBM model is trained with.
BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": ["binary_logloss", "auc"],
    "boosting_type": "gbdt",
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
# The thread count is fixed, never "all cores". One thread by default: Keel shares a small
# machine with Dagster's step processes, pytest-xdist workers and the serving process, and
# LightGBM's OpenMP threads spin-wait when they do not each get a core; measured here, 2
# threads with one core busy elsewhere trained 10-40x slower than 1 thread. On a free
# 2-core machine 2 threads are ~1.8x faster (250k rows x 30 features: 3.2 s vs 5.9 s per
# trial); the model was the same to the bit with 1 or 2 threads.
DEFAULT_NUM_THREADS = 1

# The primary model's search space; ``search_trials`` configurations are drawn from it.
SEARCH_SPACE: dict[str, tuple] = {
    "num_leaves": (15, 31, 63, 127),
    "learning_rate": (0.03, 0.05, 0.1),
    "min_data_in_leaf": (20, 50, 100, 200),
    "feature_fraction": (0.7, 0.8, 0.9, 1.0),
}
# The first trial: a sensible default, so a search of one trial is still a good model.
DEFAULT_PRIMARY_PARAMS = {
    "num_leaves": 63,
    "learning_rate": 0.05,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
}
PRIMARY_MAX_ROUNDS = 2000
PRIMARY_EARLY_STOPPING = 50

FALLBACK_PARAMS = {
    "num_leaves": 31,
    "learning_rate": 0.05,
    "min_data_in_leaf": 50,
    "feature_fraction": 1.0,
}
FALLBACK_MAX_ROUNDS = 200
FALLBACK_EARLY_STOPPING = 20

BASELINE_CLIP = (1e-4, 1 - 1e-4)


# --------------------------------------------------------------------------------------------
# Models


@dataclass
class BaselineModel:
    """The business rule: ``spec.baseline_feature`` is already a probability of the label.

    Missing values get the training set's label mean; predictions are clipped to
    ``[1e-4, 1 - 1e-4]`` so the log loss stays finite.
    """

    feature: str
    fill_value: float

    @classmethod
    def fit(cls, train: pd.DataFrame, spec: ModelSpec) -> BaselineModel:
        return cls(feature=spec.baseline_feature, fill_value=float(label_values(train, spec).mean()))

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        values = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), -1)[:, 0]
        return np.clip(np.where(np.isnan(values), self.fill_value, values), *BASELINE_CLIP)

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "fill_value": self.fill_value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineModel:
        return cls(feature=data["feature"], fill_value=float(data["fill_value"]))


@dataclass
class TrainedModel:
    """One trained model of any kind behind one scoring interface.

    ``predict(frame)`` scores a frame; ``matrix(frame)`` + ``predict_matrix(X)`` is the same
    path split in two (the matrix columns are ``features``, categoricals as codes), and
    ``row_matrix(record)`` builds one row from a dict without pandas, for serving.
    ``trials``, ``valid_pred``, ``test_pred`` and ``example`` exist only on a freshly trained
    model; they are not part of its artifacts.
    """

    kind: str
    features: tuple[str, ...]
    encoder: CategoryEncoder
    params: dict[str, Any]
    best_iteration: int | None = None
    booster: lgb.Booster | None = None
    baseline: BaselineModel | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    valid_pred: np.ndarray | None = None
    test_pred: np.ndarray | None = None
    example: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        is_baseline = self.kind == "baseline"
        if is_baseline != (self.baseline is not None) or is_baseline == (self.booster is not None):
            needs = "a baseline and no booster" if is_baseline else "a booster and no baseline"
            raise ValueError(f"a {self.kind} model needs {needs}")

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(self.encoder.columns)

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's input matrix (float64, columns in ``features`` order)."""
        return _matrix(frame, self.features, self.encoder)

    def row_matrix(self, values: Mapping[str, Any]) -> np.ndarray:
        """The 1-row input matrix of one record (feature name -> raw value), without pandas:
        the single-row serving path. A missing feature or ``None`` is a missing value."""
        row = np.empty((1, len(self.features)), dtype=np.float64)
        for j, column in enumerate(self.features):
            value = values.get(column)
            if column in self.encoder.columns:
                row[0, j] = self.encoder.code(column, value)
            else:
                row[0, j] = math.nan if is_missing(value) else float(value)
        return row

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities of the label for rows of ``matrix()`` or ``row_matrix()``."""
        if self.baseline is not None:
            return self.baseline.predict_matrix(matrix)
        # A booster read from text forgets its num_threads and predicts with OpenMP's default
        # (every core): measured here, 7.8 ms per single-row call instead of 24 us.
        return self.booster.predict(matrix, num_threads=int(self.params.get("num_threads", DEFAULT_NUM_THREADS)))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities of the label for each row of ``frame``."""
        return self.predict_matrix(self.matrix(frame))

    def manifest(self) -> dict[str, Any]:
        return {
            "format": ARTIFACT_FORMAT,
            "kind": self.kind,
            "features": list(self.features),
            "categorical": list(self.categorical),
            "params": self.params,
            "best_iteration": self.best_iteration,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "lightgbm_version": lgb.__version__,
        }

    def to_artifacts(self, directory: Path) -> list[Path]:
        """Write ``model.txt`` (LightGBM text; not for the baseline), ``encoder.json`` and
        ``model.json`` into ``directory`` and return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        manifest = self.manifest()
        if self.booster is not None:
            text = self.booster.model_to_string()
            path = directory / MODEL_FILE
            path.write_text(text, encoding="utf-8")
            manifest["model_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
            written.append(path)
        for name, content in ((ENCODER_FILE, self.encoder.to_dict()), (MANIFEST_FILE, manifest)):
            path = directory / name
            path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            written.append(path)
        return written


def load_artifacts(directory: Path) -> TrainedModel:
    """The model that ``TrainedModel.to_artifacts`` wrote into ``directory``."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{directory}: unsupported model format {manifest.get('format')!r}")
    encoder = CategoryEncoder.from_dict(json.loads((directory / ENCODER_FILE).read_text(encoding="utf-8")))
    booster = baseline = None
    if manifest["kind"] == "baseline":
        baseline = BaselineModel.from_dict(manifest["baseline"])
    else:
        text = (directory / MODEL_FILE).read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest != manifest["model_sha256"]:
            raise ValueError(f"{directory / MODEL_FILE}: sha256 {digest} does not match model.json")
        booster = lgb.Booster(model_str=text)
    return TrainedModel(
        kind=manifest["kind"],
        features=tuple(manifest["features"]),
        encoder=encoder,
        params=manifest["params"],
        best_iteration=manifest["best_iteration"],
        booster=booster,
        baseline=baseline,
    )


# --------------------------------------------------------------------------------------------
# Training


def train_primary(
    split: Split,
    spec: ModelSpec,
    *,
    params: Mapping[str, Any] | None = None,
    search_trials: int = 6,
    seed: int = 13,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> TrainedModel:
    """The primary LightGBM classifier on every ``spec.features`` column.

    Without ``params``, ``search_trials`` configurations are tried: the defaults first, then
    configurations drawn without replacement from ``SEARCH_SPACE`` by a generator seeded with
    ``seed``. Each is trained with early stopping on the validation log loss; the booster with
    the lowest validation log loss is kept, truncated at its best iteration (no refit). With
    ``params`` (e.g. the recorded ``model.params`` of a model to reproduce), exactly that one
    configuration is trained; its keys override ``BASE_PARAMS`` and ``num_threads``, while
    ``seed`` always comes from the argument. Every trial is returned in ``trials`` for the
    caller to log.
    """
    if params is not None:
        configurations = [dict(params)]
    else:
        configurations = _search_configurations(max(search_trials, 1), seed)
    return _train_lightgbm(
        "primary", split, spec, spec.features, configurations, seed, num_threads,
        max_rounds=PRIMARY_MAX_ROUNDS, early_stopping=PRIMARY_EARLY_STOPPING,
    )


def train_fallback(
    split: Split, spec: ModelSpec, seed: int = 13, *, num_threads: int = DEFAULT_NUM_THREADS
) -> TrainedModel:
    """A small LightGBM on ``spec.fallback_features`` only (fixed parameters, at most 200
    rounds, early stopping), served when the primary model's inputs are unavailable."""
    if not spec.fallback_features:
        raise ValueError("spec.fallback_features is empty")
    return _train_lightgbm(
        "fallback", split, spec, spec.fallback_features, [dict(FALLBACK_PARAMS)], seed, num_threads,
        max_rounds=FALLBACK_MAX_ROUNDS, early_stopping=FALLBACK_EARLY_STOPPING,
    )


def train_baseline(split: Split, spec: ModelSpec) -> TrainedModel:
    """The business-rule baseline as a :class:`TrainedModel`."""
    baseline = BaselineModel.fit(split.train, spec)
    model = TrainedModel(
        kind="baseline",
        features=(spec.baseline_feature,),
        encoder=CategoryEncoder(),
        params={"fill_value": baseline.fill_value},
        baseline=baseline,
        example=_example(split.train, (spec.baseline_feature,), ()),
    )
    model.valid_pred = model.predict(split.valid)
    model.test_pred = model.predict(split.test)
    return model


def _search_configurations(trials: int, seed: int) -> list[dict[str, Any]]:
    names = list(SEARCH_SPACE)
    grid = [dict(zip(names, values)) for values in _product([SEARCH_SPACE[n] for n in names])]
    grid = [config for config in grid if config != DEFAULT_PRIMARY_PARAMS]
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(grid), size=min(trials - 1, len(grid)), replace=False)
    return [dict(DEFAULT_PRIMARY_PARAMS)] + [grid[int(i)] for i in drawn]


def _product(axes: list[tuple]) -> list[tuple]:
    combos: list[tuple] = [()]
    for axis in axes:
        combos = [c + (v,) for c in combos for v in axis]
    return combos


def _train_lightgbm(
    kind: str,
    split: Split,
    spec: ModelSpec,
    features: Sequence[str],
    configurations: list[dict[str, Any]],
    seed: int,
    num_threads: int,
    *,
    max_rounds: int,
    early_stopping: int,
) -> TrainedModel:
    features = tuple(features)
    categorical = [c for c in features if c in spec.categorical]
    require_columns(split.train, [*features, spec.label], f"train_{kind}")
    _check_numeric(split.train, [f for f in features if f not in categorical])
    encoder = CategoryEncoder.fit(split.train, categorical)
    x_train, x_valid = _matrix(split.train, features, encoder), _matrix(split.valid, features, encoder)
    y_train, y_valid = label_values(split.train, spec), label_values(split.valid, spec)

    trials = []
    best: tuple[float, lgb.Booster, dict[str, Any]] | None = None
    for number, configuration in enumerate(configurations):
        params = {**BASE_PARAMS, "num_threads": num_threads, **configuration, "seed": seed}
        train_set = lgb.Dataset(
            x_train, label=y_train, feature_name=list(features), categorical_feature=categorical
        )
        valid_set = lgb.Dataset(x_valid, label=y_valid, reference=train_set)
        booster = lgb.train(
            params, train_set, num_boost_round=max_rounds, valid_sets=[valid_set],
            valid_names=["valid"],
            callbacks=[lgb.early_stopping(early_stopping, first_metric_only=True, verbose=False)],
        )
        # The kept model is exactly its text form up to the best iteration (see module doc).
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        valid_pred = booster.predict(x_valid)
        trial = {
            "trial": number,
            "params": {k: params[k] for k in configuration if k != "seed"},
            "best_iteration": booster.current_iteration(),
            "valid_log_loss": log_loss(y_valid, valid_pred),
            "valid_roc_auc": roc_auc(y_valid, valid_pred),
        }
        trials.append(trial)
        if best is None or trial["valid_log_loss"] < best[0]:
            best = (trial["valid_log_loss"], booster, params)

    _, booster, params = best
    model = TrainedModel(
        kind=kind,
        features=features,
        encoder=encoder,
        params=_json_params(params),
        best_iteration=booster.current_iteration(),
        booster=booster,
        trials=trials,
        example=_example(split.train, features, categorical),
    )
    model.valid_pred = model.predict_matrix(x_valid)
    model.test_pred = model.predict(split.test)
    return model


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def _matrix(frame: pd.DataFrame, features: Sequence[str], encoder: CategoryEncoder) -> np.ndarray:
    require_columns(frame, features, "scoring")
    codes = encoder.transform(frame)
    matrix = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, column in enumerate(features):
        if column in codes:
            matrix[:, j] = codes[column]
        else:
            matrix[:, j] = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return matrix


def _example(frame: pd.DataFrame, features: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """A few raw input rows, as MLflow's input example: numbers as float64 (MLflow's advice
    for integer columns that can be missing), categoricals as their values, never the pandas
    category dtype (it breaks MLflow's signature inference)."""
    rows = frame[list(features)].iloc[:5].copy()
    for column in features:
        if isinstance(rows[column].dtype, pd.CategoricalDtype):
            rows[column] = rows[column].astype(object)
        values = rows[column]
        if column not in categorical or (
            pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        ):
            rows[column] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return rows.reset_index(drop=True)


def _check_numeric(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    for column in columns:
        dtype = frame[column].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise ValueError(f"feature {column} has dtype {dtype} but is not in spec.categorical")
