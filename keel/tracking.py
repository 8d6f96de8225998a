"""Where Keel's models are tracked and registered, and a registry configured to go there.

The default is a SQLite MLflow store inside ``KEEL_HOME`` (``mlflow/mlflow.db``) with the
artifacts beside it (``mlflow/artifacts``); any MLflow tracking URI can replace it, through
the ``MlflowRegistry`` resource or ``KEEL_MLFLOW_TRACKING_URI`` (which the ``keel`` command
reads too). ``mlflow`` is imported only once telemetry is off: it starts its telemetry client
at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from keel.settings import KeelPaths, offline_environment

TRACKING_URI_ENV = "KEEL_MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "KEEL_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "keel"


@dataclass(frozen=True)
class TrackingLocation:
    tracking_uri: str
    artifact_root: Path
    experiment: str

    @property
    def local_store(self) -> Path | None:
        """The SQLite file of a ``sqlite:///`` store, else None."""
        prefix = "sqlite:///"
        return Path(self.tracking_uri[len(prefix):]) if self.tracking_uri.startswith(prefix) else None

    def exists(self) -> bool:
        """False only when the store is a local SQLite file that was never created: no model
        was ever registered there, and opening it would create it."""
        store = self.local_store
        return store is None or store.exists()


def location(paths: KeelPaths, tracking_uri: str = "", artifact_root: str = "", experiment: str = "") -> TrackingLocation:
    """The configured location, else the environment's, else the default inside KEEL_HOME."""
    uri = tracking_uri or os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{paths.mlflow / 'mlflow.db'}"
    root = Path(artifact_root) if artifact_root else paths.mlflow / "artifacts"
    return TrackingLocation(uri, root, experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT)


def open_registry(where: TrackingLocation) -> ModuleType:
    """``keel.registry``, pointed at ``where`` (tracking, registry and the experiment)."""
    offline_environment()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if where.local_store is not None:
        where.local_store.parent.mkdir(parents=True, exist_ok=True)
    from keel import registry

    registry.configure(where.tracking_uri, where.artifact_root, where.experiment)
    return registry
