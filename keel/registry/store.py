"""The model registry: MLflow runs, registered versions, aliases and promotions.

Current MLflow 3 APIs only: models are logged with ``name=``, versions are addressed by
number or alias (``champion``, ``previous``, ``challenger``), never by stage.

How a model is stored
---------------------
A model is logged as an MLflow *pyfunc* model of the "loader module" kind: its data folder is
exactly what :meth:`keel.ml.modeling.TrainedModel.to_artifacts` writes (``model.txt`` in
LightGBM's text format, ``encoder.json``, ``model.json``) and its loader is
:func:`_load_pyfunc` in this module. Nothing is pickled: MLflow pickles a ``PythonModel``
object (cloudpickle) and would need the encoder next to a bare booster, so neither the
``PythonModel`` route nor the ``lightgbm`` flavor (which does store a ``Booster`` as text) is
used. ``mlflow.pyfunc.load_model(uri).predict(frame)`` scores raw feature rows (categoricals
as their values, encoded inside); :func:`load` returns the :class:`TrainedModel` itself.
Loading either way needs ``keel`` importable.

Promotion semantics
-------------------
* :func:`promote` moves ``previous`` to the current champion, then ``champion`` to the new
  version, tags the version (``keel.promoted_by``/``_at``, ``keel.promotion_note``) and
  appends to the promotion history. If any step fails, both aliases are put back.
* :func:`rollback` makes ``previous`` the champion again and *clears* ``previous``; the
  demoted version is tagged ``keel.rolled_back_*``. A second rollback raises (there is no
  previous) instead of silently swapping the two versions back and forth; to return to the
  demoted version, promote it.
* :func:`mark_challenger` sets ``challenger``; promoting the challenger clears that alias.

These move one registered model. Keel's champion *set* (primary, fallback, baseline) moves
through ``keel.registry.model_set``, which records each move as one transaction and finishes
a move a killed process left halfway.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import lightgbm
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient

from keel.ml.modeling import TrainedModel, load_artifacts
from keel.registry.relocation import moved_with_its_store, relocate, sqlite_file

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
MODEL_DATA = "keel_model"
HISTORY_PREFIX = "keel.promotion."


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    model_uri: str  # the logged model, models:/m-<id>

    @property
    def registry_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _client() -> MlflowClient:
    return MlflowClient()


def client() -> MlflowClient:
    """A client of the configured store (call :func:`configure` first)."""
    return _client()


def configure(tracking_uri: str, artifact_root: Path, experiment: str) -> str:
    """Point MLflow at ``tracking_uri`` (tracking and registry) and get or create
    ``experiment`` with its artifacts under ``artifact_root``; returns the experiment id.

    Keel's default is ``sqlite:///$KEEL_HOME/mlflow/mlflow.db`` with artifacts in
    ``$KEEL_HOME/mlflow/artifacts``; the caller passes both. A local store that was moved
    or copied together with its artifacts (a restored or copied home) is first made to point
    at its new place (``keel.registry.relocation``); an experiment whose artifacts were put
    somewhere else on purpose is refused."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    location = (Path(artifact_root).resolve() / folder).as_uri()
    client = _client()
    existing = client.get_experiment_by_name(experiment)
    if existing is None:
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        if _local_path(existing.artifact_location) != _local_path(location):
            store = sqlite_file(tracking_uri)
            if store is None or not moved_with_its_store(store, Path(artifact_root), _local_path(existing.artifact_location), folder):
                raise ValueError(
                    f"experiment {experiment!r} already stores its artifacts in "
                    f"{existing.artifact_location}, not {location}"
                )
            relocate(store, existing.artifact_location, location)
        experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _local_path(location: str) -> Path | str:
    """A file artifact location as a resolved path (``file:///x`` and ``/x`` are the same
    place); any other location as it is."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path)).resolve()
    return location


# --------------------------------------------------------------------------------------------
# Logging and registering


def log_and_register(
    model: TrainedModel,
    *,
    name: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    lineage: Mapping[str, Any],
    artifacts: Sequence[Path] = (),
    trials: Sequence[Mapping[str, Any]] | None = None,
) -> RegisteredVersion:
    """Log one training run and register its model as a new version of ``name``.

    The run holds the model's parameters (as ``model.*``) and the caller's ``params``,
    ``metrics`` (numbers; nested mappings are flattened with ``.``), ``lineage`` as
    ``keel.lineage.*`` tags and as ``lineage.json``, ``trials`` as ``trials.json`` plus
    ``trial.*`` metrics stepped by trial number, and each of ``artifacts`` (files or
    folders). The model is logged (text, no pickle) and registered; the version carries the
    lineage tags too (tag values are cut at 5,000 characters; ``lineage.json`` is complete).
    Call :func:`configure` first: the run goes to the experiment it set.
    """
    client = _client()
    run_params = {**_flat(model.params, "model."), **_flat(params, "")}
    run_metrics = _numeric(_flat(metrics, ""))
    lineage = dict(lineage)
    lineage_tags = {f"keel.lineage.{k}": _tag_value(v) for k, v in _flat(lineage, "").items()}
    with mlflow.start_run(run_name=f"{name}-{model.kind}") as run:
        run_id = run.info.run_id
        timestamp = _millis()
        _log_batches(
            client,
            run_id,
            metrics=[Metric(k, v, timestamp, 0) for k, v in run_metrics.items()]
            + _trial_metrics(trials or [], timestamp),
            params=[Param(k, _param_value(v)) for k, v in run_params.items()],
            tags=[RunTag(k, v) for k, v in {"keel.kind": model.kind, **lineage_tags}.items()],
        )
        mlflow.log_dict(_jsonable(lineage), "lineage.json")
        if trials is not None:
            mlflow.log_dict(_jsonable(list(trials)), "trials.json")
        for path in map(Path, artifacts):
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            else:
                mlflow.log_artifact(str(path))
        with tempfile.TemporaryDirectory() as scratch:
            data = Path(scratch) / MODEL_DATA
            model.to_artifacts(data)
            example = model.example
            signature = None
            if example is not None:
                signature = infer_signature(example, model.predict(example))
            info = mlflow.pyfunc.log_model(
                name=name,
                loader_module=__name__,
                data_path=str(data),
                signature=signature,
                input_example=example,
                # Given, so MLflow does not load the model in a subprocess to infer them.
                pip_requirements=[
                    f"lightgbm=={lightgbm.__version__}",
                    f"mlflow=={mlflow.__version__}",
                    f"numpy=={np.__version__}",
                    f"pandas=={pd.__version__}",
                ],
                metadata={"keel_kind": model.kind},
            )
        version = mlflow.register_model(info.model_uri, name, tags={"keel.kind": model.kind, **lineage_tags})
    return RegisteredVersion(name=name, version=int(version.version), run_id=run_id, model_uri=info.model_uri)


def _log_batches(
    client: MlflowClient, run_id: str, *, metrics: list[Metric], params: list[Param], tags: list[RunTag]
) -> None:
    """``log_batch`` within MLflow's limits (1,000 metrics, 100 params, 100 tags a call)."""
    while metrics or params or tags:
        client.log_batch(run_id, metrics=metrics[:900], params=params[:50], tags=tags[:50])
        metrics, params, tags = metrics[900:], params[50:], tags[50:]


def _trial_metrics(trials: Sequence[Mapping[str, Any]], timestamp: int) -> list[Metric]:
    metrics = []
    for step, trial in enumerate(trials):
        for key, value in _numeric(_flat(trial, ""), strict=False).items():
            if key != "trial":
                metrics.append(Metric(f"trial.{key}", value, timestamp, int(trial.get("trial", step))))
    return metrics


def _flat(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numeric(values: Mapping[str, Any], strict: bool = True) -> dict[str, float]:
    """Numbers as floats; ``None`` (an undefined metric) is left out. Anything else is an
    error when ``strict`` (it belongs in an artifact), skipped otherwise."""
    numeric = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (bool, int, float, np.integer, np.floating)):
            numeric[key] = float(value)
        elif strict:
            raise TypeError(
                f"metric {key!r} is a {type(value).__name__}, not a number; log it as an artifact"
            )
    return numeric


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_jsonable(value))


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value))
    return text[:5000]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _millis() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Loading


class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps: raw feature rows in, probabilities out."""

    def __init__(self, model: TrainedModel):
        self.model = model

    def predict(self, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None) -> np.ndarray:
        return self.model.predict(pd.DataFrame(model_input))


def _load_pyfunc(data_path: str) -> _PyfuncModel:
    """MLflow's entry point for the pyfunc flavor (``loader_module``)."""
    return _PyfuncModel(load_artifacts(Path(data_path)))


def resolve_version(name: str, alias_or_version: str | int) -> int:
    """The version number behind an alias, or the version itself (``3`` or ``"3"``)."""
    if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
        version = int(alias_or_version)
        _client().get_model_version(name, str(version))  # raises if there is no such version
        return version
    version = get_alias(name, str(alias_or_version))
    if version is None:
        raise LookupError(f"registered model {name!r} has no alias {alias_or_version!r}")
    return version


def load(name: str, alias_or_version: str | int) -> TrainedModel:
    """The :class:`TrainedModel` of a registered version, read from its text artifacts."""
    version = resolve_version(name, alias_or_version)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=scratch
        ))
        data = Model.load(str(local / "MLmodel")).flavors["python_function"]["data"]
        return load_artifacts(local / data)


def lineage(name: str, version: str | int) -> dict[str, Any]:
    """The lineage recorded with a version (``lineage.json`` of its training run)."""
    model_version = _client().get_model_version(name, str(resolve_version(name, version)))
    return mlflow.artifacts.load_dict(f"runs:/{model_version.run_id}/lineage.json")


# --------------------------------------------------------------------------------------------
# Aliases and promotion


def set_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``alias`` at ``version``. Use :func:`promote` for ``champion``: it keeps the
    history and ``previous``."""
    _client().set_registered_model_alias(name, alias, str(version))


def get_alias(name: str, alias: str) -> int | None:
    version = _client().get_registered_model(name).aliases.get(alias)
    return None if version is None else int(version)


def _put_alias(client: MlflowClient, name: str, alias: str, version: int | None) -> None:
    if version is None:
        if alias in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def mark_challenger(name: str, version: int | str) -> None:
    """Make ``version`` the challenger (the candidate that shadow scoring compares)."""
    version = resolve_version(name, version)
    set_alias(name, CHALLENGER, version)


def promote(name: str, version: int | str, *, actor: str, note: str) -> dict[str, Any]:
    """Make ``version`` the champion; the former champion becomes ``previous``.

    Returns the history record. Raises if ``version`` already is the champion."""
    client = _client()
    version = resolve_version(name, version)
    aliases = client.get_registered_model(name).aliases
    champion = _int_or_none(aliases.get(CHAMPION))
    previous = _int_or_none(aliases.get(PREVIOUS))
    challenger = _int_or_none(aliases.get(CHALLENGER))
    if champion == version:
        raise ValueError(f"version {version} already is the champion of {name!r}")
    record = {"action": "promote", "version": version, "from_version": champion, "actor": actor,
              "at": _now(), "note": note}
    try:
        if champion is not None:
            _put_alias(client, name, PREVIOUS, champion)
        _put_alias(client, name, CHAMPION, version)
        if challenger == version:
            _put_alias(client, name, CHALLENGER, None)
        _tag_version(client, name, version, {
            "keel.promoted_by": actor, "keel.promoted_at": record["at"], "keel.promotion_note": note,
        })
        _append_history(client, name, record)
    except BaseException:
        _restore(client, name, {CHAMPION: champion, PREVIOUS: previous, CHALLENGER: challenger})
        raise
    return record


def rollback(name: str, *, actor: str, note: str) -> dict[str, Any]:
    """Make ``previous`` the champion again and clear ``previous`` (see the module doc).

    Returns the history record. Raises ``LookupError`` when there is no previous champion."""
    client = _client()
    aliases = client.get_registered_model(name).aliases
    champion = _int_or_none(aliases.get(CHAMPION))
    previous = _int_or_none(aliases.get(PREVIOUS))
    if previous is None:
        raise LookupError(
            f"registered model {name!r} has no previous champion to roll back to "
            f"(a rollback clears it; promote a version explicitly instead)"
        )
    record = {"action": "rollback", "version": previous, "from_version": champion, "actor": actor,
              "at": _now(), "note": note}
    try:
        _put_alias(client, name, CHAMPION, previous)
        _put_alias(client, name, PREVIOUS, None)
        _tag_version(client, name, previous, {
            "keel.promoted_by": actor, "keel.promoted_at": record["at"],
            "keel.promotion_note": f"rollback: {note}",
        })
        if champion is not None:
            _tag_version(client, name, champion, {
                "keel.rolled_back_by": actor, "keel.rolled_back_at": record["at"],
                "keel.rollback_note": note,
            })
        _append_history(client, name, record)
    except BaseException:
        _restore(client, name, {CHAMPION: champion, PREVIOUS: previous})
        raise
    return record


def promotion_history(name: str) -> list[dict[str, Any]]:
    """Every promotion and rollback of ``name``, oldest first, each with its sequence number,
    action, version, former champion, actor, UTC time and note."""
    tags = _client().get_registered_model(name).tags
    return [
        {"seq": int(key[len(HISTORY_PREFIX):]), **json.loads(value)}
        for key, value in sorted(tags.items())
        if key.startswith(HISTORY_PREFIX)
    ]


def _append_history(client: MlflowClient, name: str, record: Mapping[str, Any]) -> None:
    seq = len(promotion_history(name)) + 1
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", json.dumps(record, sort_keys=True))


def _tag_version(client: MlflowClient, name: str, version: int, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def _restore(client: MlflowClient, name: str, aliases: Mapping[str, int | None]) -> None:
    for alias, version in aliases.items():
        _put_alias(client, name, alias, version)


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)
