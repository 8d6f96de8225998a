"""Where Keel keeps its state, and the process environment it needs.

Everything Keel writes (landing zone, DuckDB warehouse, Dagster home, MLflow store) lives
under one folder, ``KEEL_HOME``, so that moving or wiping a deployment is one variable.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

# The tags of one run over a range of daily partitions (Dagster's single-run backfill).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def range_tags(first, last) -> dict[str, str]:
    """Run tags that make one run cover the daily partitions ``first..last`` (dates)."""
    return {RANGE_START: first.isoformat(), RANGE_END: last.isoformat()}

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_USECASE = "usecases.flights"

# Telemetry and update checks stay off: Keel runs offline (MLflow accepts only the string "true").
_OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}

_DAGSTER_YAML = """\
# Written by Keel. Runs share one DuckDB file, which allows a single writer at a time,
# so the run queue admits one run at a time.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
"""


@dataclass(frozen=True)
class KeelPaths:
    home: Path

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow(self) -> Path:
        return self.home / "mlflow"

    @property
    def models(self) -> Path:
        """The current training set and the evaluation reports (plots, tables) per version."""
        return self.home / "models"

    @property
    def rejected_files(self) -> Path:
        """Copies of landing files that could not be read at all, kept byte for byte."""
        return self.home / "rejected_files"


def keel_home() -> Path:
    return Path(os.environ.get("KEEL_HOME") or PROJECT_ROOT / ".keel").resolve()


def paths() -> KeelPaths:
    return KeelPaths(keel_home())


def offline_environment() -> None:
    """Switch telemetry off for every library Keel runs; call before importing mlflow, which
    starts its telemetry client at import time."""
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def prepare_environment() -> KeelPaths:
    """Create the state folders and point Dagster at them; safe to call repeatedly."""
    offline_environment()
    p = paths()
    for folder in (p.landing, p.dagster_home, p.mlflow, p.rejected_files):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ["KEEL_HOME"] = str(p.home)
    os.environ.setdefault("DAGSTER_HOME", str(p.dagster_home))
    dagster_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.parent.mkdir(parents=True, exist_ok=True)
        dagster_yaml.write_text(_DAGSTER_YAML)
    return p


def load_usecase():
    """The one configuration module of the deployment (``KEEL_USECASE``, a module path)."""
    module = importlib.import_module(os.environ.get("KEEL_USECASE", DEFAULT_USECASE))
    return module.USECASE
