"""The MLflow store models are tracked and registered in, as a Dagster resource."""

from __future__ import annotations

from types import ModuleType

import dagster as dg

from keel.core.config import current
from keel.registry.tracking import TrackingLocation, open_registry


class MlflowRegistry(dg.ConfigurableResource):
    """The deployment's MLflow tracking URI, artifact folder and experiment (``[tracking]``
    in keel.toml, ``KEEL_MLFLOW_TRACKING_URI`` / ``KEEL_MLFLOW_EXPERIMENT``; by default a
    SQLite store at ``$KEEL_HOME/mlflow/mlflow.db``, artifacts in
    ``$KEEL_HOME/mlflow/artifacts``, experiment ``keel``)."""

    @property
    def location(self) -> TrackingLocation:
        return current().tracking

    def open(self) -> ModuleType:
        """``keel.registry.store``, configured for this store."""
        return open_registry(self.location)
