"""A Keel home moved or copied to another path: its MLflow store made to point at itself.

MLflow's SQLite store names artifacts by absolute URI (the experiment's artifact location,
each run's, each logged model's, each model version's). A home restored from a backup to
another path would look for its models at the old path, and a copy would read (and write)
the original's. ``keel.registry.store.configure`` finds that case when it opens the store
and rewrites those locations here, in one SQLite transaction, without MLflow.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Where MLflow 3's SQLite store records an artifact location as an absolute URI.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


def moved_with_its_store(store: Path, artifact_root: Path, recorded: Path | str, folder: str) -> bool:
    """Whether ``recorded`` (an experiment's artifact folder, as a local path) is this store's
    own from before its folder moved: the artifacts sat beside the SQLite file then
    (``<old>/artifacts/<folder>``) as they do now (``<dir>/mlflow.db``,
    ``<dir>/artifacts/<folder>``), and they are present at the new place. Anything else (an
    experiment a user pointed elsewhere) is not moved."""
    if not isinstance(recorded, Path):
        return False
    here = artifact_root.resolve()
    return (
        here == store.resolve().parent / "artifacts"
        and recorded.name == folder and recorded.parent.name == "artifacts"
        and (here / folder).is_dir()
    )


def relocate(store: Path, old: str, new: str) -> int:
    """Rewrite every artifact location at or under ``old`` to the same place under ``new``,
    in one transaction; returns how many locations changed."""
    old, new = old.rstrip("/"), new.rstrip("/")
    changed = 0
    con = sqlite3.connect(store)
    try:
        with con:
            for table, column in LOCATION_COLUMNS:
                # Identifiers from the fixed list above; the locations are bound.
                changed += con.execute(
                    f"update {table} set {column} = ? || substr({column}, ?) "
                    f"where {column} = ? or substr({column}, 1, ?) = ?",
                    [new, len(old) + 1, old, len(old) + 1, old + "/"],
                ).rowcount
    finally:
        con.close()
    return changed
