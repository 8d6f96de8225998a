"""Where Keel's models are tracked and registered, and a registry configured to go there.

The location is the deployment's (``keel.core.config``): by default a SQLite MLflow store
inside ``KEEL_HOME`` (``mlflow/mlflow.db``) with the artifacts beside it
(``mlflow/artifacts``); any MLflow tracking URI can replace it (``[tracking]`` in keel.toml,
or ``KEEL_MLFLOW_TRACKING_URI``). ``mlflow`` is imported only once telemetry is off: it
starts its telemetry client at import time.
"""

from __future__ import annotations

from types import ModuleType

from keel.core import env
from keel.core.config import TrackingLocation
from keel.core.settings import offline_environment

__all__ = ["TrackingLocation", "open_registry", "registry_or_none"]


def open_registry(where: TrackingLocation) -> ModuleType:
    """``keel.registry.store``, pointed at ``where`` (tracking, registry and the experiment)."""
    offline_environment()
    env.set_default("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if where.local_store is not None:
        where.local_store.parent.mkdir(parents=True, exist_ok=True)
    # Imported only here, once telemetry is off: MLflow starts its telemetry client at import.
    from keel.registry import store as registry

    registry.configure(where.tracking_uri, where.artifact_root, where.experiment)
    return registry


def registry_or_none(where: TrackingLocation) -> ModuleType | None:
    """The registry at ``where``, or None while no model was ever registered there (opening
    a local store would create it)."""
    return open_registry(where) if where.exists() else None
