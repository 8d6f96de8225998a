"""The MLflow store models are tracked and registered in, as a Dagster resource."""

from __future__ import annotations

from types import ModuleType

import dagster as dg

from keel.settings import KeelPaths
from keel.tracking import TrackingLocation, location, open_registry


class MlflowRegistry(dg.ConfigurableResource):
    """An MLflow tracking URI and experiment. Empty fields fall back to
    ``KEEL_MLFLOW_TRACKING_URI`` / ``KEEL_MLFLOW_EXPERIMENT`` and then to the defaults: a SQLite
    store at ``$KEEL_HOME/mlflow/mlflow.db``, artifacts in ``$KEEL_HOME/mlflow/artifacts``,
    experiment ``keel``."""

    tracking_uri: str = ""
    experiment: str = ""
    artifact_root: str = ""

    def location(self, paths: KeelPaths) -> TrackingLocation:
        return location(paths, self.tracking_uri, self.artifact_root, self.experiment)

    def open(self, paths: KeelPaths) -> ModuleType:
        """``keel.registry``, configured for this store."""
        return open_registry(self.location(paths))
