"""The process environment: the one module of Keel that reads or sets environment variables.

Every setting a variable can carry belongs to the deployment (``keel.core.config``), which
reads it here; the rest of Keel asks the deployment. Keeping the reads in one place lets a
test (tests/test_layers.py) hold the rule, and lets the deployment know exactly which values
it was built from, so that a change of any of them gives a fresh one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

KEEL_HOME = "KEEL_HOME"
KEEL_USECASE = "KEEL_USECASE"
KEEL_CONFIG = "KEEL_CONFIG"
KEEL_PROMOTION_POLICY = "KEEL_PROMOTION_POLICY"
KEEL_TRAIN_THREADS = "KEEL_TRAIN_THREADS"
KEEL_MLFLOW_TRACKING_URI = "KEEL_MLFLOW_TRACKING_URI"
KEEL_MLFLOW_EXPERIMENT = "KEEL_MLFLOW_EXPERIMENT"
DAGSTER_HOME = "DAGSTER_HOME"
KEEL_LOCK_TIMEOUT = "KEEL_LOCK_TIMEOUT"

# What each variable the deployment reads sets (the README's Configuration section).
DEPLOYMENT_VARIABLES: dict[str, str] = {
    KEEL_HOME: "the folder that holds all of the deployment's state (default: .keel in the project)",
    KEEL_USECASE: "the use case module (default: the DEFAULT of the usecases package)",
    KEEL_CONFIG: "the configuration file (default: $KEEL_HOME/keel.toml)",
    KEEL_PROMOTION_POLICY: "[promotion] policy: auto, manual or staged",
    KEEL_TRAIN_THREADS: "[training] threads: LightGBM threads",
    KEEL_MLFLOW_TRACKING_URI: "[tracking] uri: the MLflow tracking URI",
    KEEL_MLFLOW_EXPERIMENT: "[tracking] experiment: the MLflow experiment",
    DAGSTER_HOME: "Dagster's instance folder (default: $KEEL_HOME/dagster)",
    KEEL_LOCK_TIMEOUT: "seconds a writer waits for the one that holds the home (default 600; 0: give up at once)",
}


def get(name: str) -> str | None:
    """The variable's value; None when it is unset or empty (an empty value means unset)."""
    return os.environ.get(name) or None


def set_value(name: str, value: str) -> None:
    os.environ[name] = value


def unset(name: str) -> None:
    os.environ.pop(name, None)


def set_default(name: str, value: str) -> None:
    """Set ``name`` unless the process already has it (a person's choice wins)."""
    os.environ.setdefault(name, value)


def deployment_values() -> tuple[tuple[str, str | None], ...]:
    """The values of every variable the deployment reads, in a fixed order (its cache key)."""
    return tuple((name, get(name)) for name in DEPLOYMENT_VARIABLES)


def for_subprocess(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment for a child process (dbt), with ``overrides`` applied."""
    return {**os.environ, **(overrides or {})}
