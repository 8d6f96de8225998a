"""What a model was made from: data window, training-set hash, code, dependencies, run.

Every registered model carries one lineage record (MLflow: ``lineage.json`` and
``keel.lineage.*`` tags; Dagster: the model asset's metadata). ``keel lineage`` prints it and
``keel reproduce`` retrains from it.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keel.core.config import current
from keel.core.settings import PROJECT_ROOT

LOCK_FILE = PROJECT_ROOT / "requirements.lock"

LINEAGE_FIELDS = (
    "model_kind",
    "window",
    "rows",
    "split",
    "training_set_hash",
    "label_corruption",
    "dbt_manifest_sha256",
    "git_commit",
    "git_dirty",
    "lock_file_sha256",
    "params",
    "training_config",
    "dagster_run_id",
    "features_relation",
    "labels_relation",
    "feedback",
)
"""The keys of every lineage record, in the order ``keel lineage`` prints them."""


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, or ``"missing"``."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """``git rev-parse HEAD`` of the checkout, or ``"unknown"`` outside one."""
    return _git(root, "rev-parse", "HEAD") or "unknown"


def git_dirty(root: Path = PROJECT_ROOT) -> bool | None:
    """Whether tracked files differ from HEAD (the commit alone does not pin the code then);
    None outside a checkout."""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def dbt_manifest() -> Path:
    """The parsed manifest of the deployment's dbt project."""
    return current().usecase.dbt_project / "target" / "manifest.json"


def code_lineage(root: Path = PROJECT_ROOT, manifest: Path | None = None, lock_file: Path = LOCK_FILE) -> dict[str, Any]:
    """The code a model is trained with: commit, dbt manifest and lock file hashes."""
    manifest = manifest or dbt_manifest()
    return {
        "dbt_manifest_sha256": file_sha256(manifest),
        "git_commit": git_commit(root),
        "git_dirty": git_dirty(root),
        "lock_file_sha256": file_sha256(lock_file),
    }


def model_lineage(
    *,
    kind: str,
    training_set: Mapping[str, Any],
    training_set_hash: str,
    params: Mapping[str, Any],
    training_config: Mapping[str, Any],
    dagster_run_id: str,
    code: Mapping[str, Any],
) -> dict[str, Any]:
    """One model's lineage record (keys: ``LINEAGE_FIELDS``).

    ``training_set`` is the training set's description (``keel.training.TrainingSet.meta``):
    its window, split and relations; ``training_set_hash`` the hash of the rows the model
    was fitted on; ``params`` the model's own parameters (for LightGBM everything
    ``train_primary(params=...)`` needs to retrain it).
    """
    record = {
        "model_kind": kind,
        "window": dict(training_set["window"]),
        "rows": {part: values["rows"] for part, values in training_set["split"].items()}
        | {"total": training_set["rows"]},
        "split": dict(training_set["split"]),
        "training_set_hash": training_set_hash,
        "label_corruption": training_set.get("label_corruption", "none"),
        **dict(code),
        "params": dict(params),
        "training_config": dict(training_config),
        "dagster_run_id": dagster_run_id,
        "features_relation": training_set["features_relation"],
        "labels_relation": training_set["labels_relation"],
        # The label corrections the model learned with: those in effect at ``as_of``.
        "feedback": dict(training_set.get("feedback") or {"as_of": None, "labels_corrected": 0}),
    }
    return {key: record[key] for key in LINEAGE_FIELDS}
