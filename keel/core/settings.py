"""Where Keel keeps its state, and the process environment it needs.

Everything Keel writes (landing zone, DuckDB warehouse, Dagster home, MLflow store) lives
under one folder, ``KEEL_HOME``, so that moving or wiping a deployment is one variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from keel.core import env

# The tags of one run over a range of daily partitions (Dagster's single-run backfill).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def range_tags(first, last) -> dict[str, str]:
    """Run tags that make one run cover the daily partitions ``first..last`` (dates)."""
    return {RANGE_START: first.isoformat(), RANGE_END: last.isoformat()}

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Telemetry and update checks stay off: Keel runs offline (MLflow accepts only the string "true").
_OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}

_KEEL_HEADER = "# Written by Keel."
_DAGSTER_YAML = f"""\
{_KEEL_HEADER} Keel rewrites this file as it changes; delete this line to keep your edits.
# Runs share one DuckDB file, which allows a single writer at a time, so the run queue
# admits one run at a time. Run monitoring fails a run that never starts, or never stops
# when cancelled, so it cannot hold that slot for good; a run whose process was killed is
# failed by Keel itself at the start of every keel command (keel.app.recovery), since the
# default run launcher cannot check a run's process.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
"""


def dagster_yaml_is_keels(path: Path) -> bool:
    """Whether ``path`` is a dagster.yaml Keel wrote (and may rewrite); False when missing."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().startswith(_KEEL_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def write_dagster_yaml(dagster_home: Path) -> Path:
    """Write Keel's dagster.yaml unless the file there is someone else's; returns its path."""
    path = dagster_home / "dagster.yaml"
    if path.exists() and not dagster_yaml_is_keels(path):
        return path
    if not path.exists() or path.read_text(encoding="utf-8") != _DAGSTER_YAML:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".dagster.yaml.{os.getpid()}")
        scratch.write_text(_DAGSTER_YAML, encoding="utf-8")
        os.replace(scratch, path)
    return path


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
    return Path(env.get(env.KEEL_HOME) or PROJECT_ROOT / ".keel").resolve()


def paths() -> KeelPaths:
    return KeelPaths(keel_home())


def offline_environment() -> None:
    """Switch telemetry off for every library Keel runs; call before importing mlflow, which
    starts its telemetry client at import time."""
    for key, value in _OFFLINE_ENV.items():
        env.set_default(key, value)


def prepare_environment() -> KeelPaths:
    """Create the state folders and point Dagster at them; safe to call repeatedly."""
    offline_environment()
    p = paths()
    for folder in (p.landing, p.dagster_home, p.mlflow, p.rejected_files):
        folder.mkdir(parents=True, exist_ok=True)
    env.set_value(env.KEEL_HOME, str(p.home))
    env.set_default(env.DAGSTER_HOME, str(p.dagster_home))
    write_dagster_yaml(Path(env.get(env.DAGSTER_HOME) or p.dagster_home))
    return p

