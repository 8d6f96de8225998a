"""The dbt project and the guarantee that its manifest exists before definitions load.

``@dbt_assets`` reads ``target/manifest.json`` when its module is imported, so every entry
point (``keel``, ``dagster dev``, tests) calls :func:`ensure_manifest` first. It re-parses
only when a model, macro, seed, test or the project files changed since the last parse.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from keel.core import env
from keel.core.config import current
from keel.core.settings import PROJECT_ROOT, keel_home

# The deployment's dbt project (``UseCase.dbt_project``): the graph holds one use case's models.
DBT_PROJECT_DIR = current().usecase.dbt_project
# The framework's generic macros and tests, which every use case's project reads.
FRAMEWORK_DBT_DIR = PROJECT_ROOT / "keel" / "dbt"
_SOURCES = ("models", "macros", "seeds", "tests", "dbt_project.yml", "profiles.yml")

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def _newest_source_mtime() -> float:
    newest = 0.0
    for path in [*(DBT_PROJECT_DIR / name for name in _SOURCES), FRAMEWORK_DBT_DIR]:
        if not path.exists():
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max([newest, *(p.stat().st_mtime for p in files)])
    return newest


def ensure_manifest() -> Path:
    """Parse the dbt project if its manifest is missing or older than its sources."""
    manifest = dbt_project.manifest_path
    if manifest.exists() and manifest.stat().st_mtime >= _newest_source_mtime():
        return manifest
    target = manifest.parent
    target.mkdir(parents=True, exist_ok=True)
    # Several processes (pytest workers, the webserver and daemon) may load at once.
    with open(target / ".keel-parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.exists() and manifest.stat().st_mtime >= _newest_source_mtime():
            return manifest
        variables = env.for_subprocess({"KEEL_HOME": str(keel_home()), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
        dbt = Path(sys.executable).parent / "dbt"
        done = subprocess.run(
            [str(dbt), "parse", "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--quiet"],
            env=variables, capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dbt parse failed:\n{done.stdout}\n{done.stderr}")
    return manifest


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(
        project_dir=dbt_project,
        profiles_dir=str(DBT_PROJECT_DIR),
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )
