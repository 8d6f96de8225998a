"""Online snapshots: the warehouse's online feature tables, frozen into a file of their own.

DuckDB admits one writer per file and the pipeline keeps writing the warehouse while the API
serves, so the server never opens the warehouse: it reads a snapshot, a DuckDB file that
holds a copy of every table of the online schema, written once and never changed. Each
snapshot lives in its own folder (``$KEEL_HOME/serving/snapshots/<version>/``) with a
``manifest.json``; the file ``CURRENT`` names the version that serves, and is replaced
atomically, so a reader sees the old snapshot or the new one, never half of one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from keel.core.warehouse import ident

SNAPSHOT_FILE = "snapshot.duckdb"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
KEEP_SNAPSHOTS = 3


@dataclass(frozen=True)
class Snapshot:
    version: str
    path: Path  # the DuckDB file
    as_of: str  # the last feature date it holds (ISO), or "" when it holds none
    tables: dict[str, int]  # schema.table -> rows
    created_at: str


def snapshots_root(home: Path) -> Path:
    return Path(home) / "serving" / "snapshots"


def export_snapshot(con: duckdb.DuckDBPyConnection, root: Path, schema: str) -> Snapshot:
    """Copy every table of ``schema`` from the open warehouse ``con`` (a writer's connection)
    into a new snapshot under ``root`` and make it the current one."""

    def copy(staged: Path) -> tuple[dict[str, int], str]:
        con.execute("attach ? as keel_snapshot", [str(staged)])
        try:
            (source,) = con.execute("select current_database()").fetchone()
            return _copy_schema(con, source, "keel_snapshot", schema)
        finally:
            con.execute("detach keel_snapshot")

    return _export(root, schema, copy)


def export_from_file(warehouse: Path, root: Path, schema: str) -> Snapshot:
    """``export_snapshot`` from a warehouse file that is only read (attached read-only)."""

    def copy(staged: Path) -> tuple[dict[str, int], str]:
        con = duckdb.connect(str(staged))
        try:
            con.execute("attach ? as keel_warehouse (read_only)", [str(warehouse)])
            (target,) = con.execute("select current_database()").fetchone()
            return _copy_schema(con, "keel_warehouse", target, schema)
        finally:
            con.close()

    return _export(root, schema, copy)


def _copy_schema(con: duckdb.DuckDBPyConnection, source: str, target: str, schema: str,
                 date_column: str = "feature_date") -> tuple[dict[str, int], str]:
    """Copy the tables of ``source.schema`` into ``target.schema``; returns their row counts and
    the date through which all of them hold rows: the least of their last ``date_column``
    values (ISO, "" when none has one)."""
    tables = [name for (name,) in con.execute(
        "select table_name from duckdb_tables() where database_name = ? and schema_name = ? "
        "order by table_name", [source, schema],
    ).fetchall()]
    if not tables:
        raise LookupError(f"the warehouse has no tables in schema {schema!r}: build the features first")
    con.execute(f"create schema {ident(target)}.{ident(schema)}")
    counts, last_dates = {}, []
    for table in tables:
        origin = f"{ident(source)}.{ident(schema)}.{ident(table)}"
        copied = f"{ident(target)}.{ident(schema)}.{ident(table)}"
        con.execute(f"create table {copied} as select * from {origin}")
        counts[f"{schema}.{table}"] = con.execute(f"select count(*) from {copied}").fetchone()[0]
        columns = {c for (c,) in con.execute(
            "select column_name from duckdb_columns() where database_name = ? and schema_name = ? "
            "and table_name = ?", [target, schema, table]).fetchall()}
        if date_column in columns:
            last = con.execute(f"select max({ident(date_column)}) from {copied}").fetchone()[0]
            if last is not None:
                last_dates.append(last)
    return counts, (min(last_dates).isoformat() if last_dates else "")


def _export(root: Path, schema: str, copy) -> Snapshot:
    """Stage a snapshot with ``copy(file) -> (counts, as_of)``, then publish it: the folder is
    renamed into place, then ``CURRENT`` replaced. The version is the export time plus a
    digest of what it holds, so two exports never share a folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    created = dt.datetime.now(dt.timezone.utc)
    staging = root / f".staging-{os.getpid()}-{created.strftime('%Y%m%dT%H%M%S%f')}"
    staging.mkdir()
    try:
        counts, as_of = copy(staging / SNAPSHOT_FILE)
        digest = hashlib.sha256(json.dumps([counts, as_of], sort_keys=True).encode()).hexdigest()[:8]
        version = f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{digest}"
        manifest = {"version": version, "as_of": as_of, "tables": counts,
                    "created_at": created.isoformat(timespec="seconds"), "schema": schema}
        _write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(staging, root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_synced(root / f".{CURRENT_FILE}.tmp", version + "\n")
    os.replace(root / f".{CURRENT_FILE}.tmp", root / CURRENT_FILE)
    _prune(root, keep=KEEP_SNAPSHOTS, current=version)
    return read_snapshot(root, version)


def _prune(root: Path, keep: int, current: str) -> None:
    """Remove all but the ``keep`` newest snapshots (the current one always stays): a server
    reads a snapshot into memory when it swaps it in, so older folders serve no one."""
    versions = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for version in versions[:-keep]:
        if version != current:
            shutil.rmtree(root / version, ignore_errors=True)


def current_version(root: Path) -> str | None:
    """The version ``CURRENT`` names, or None when no snapshot was ever made current."""
    try:
        return (Path(root) / CURRENT_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def read_snapshot(root: Path, version: str) -> Snapshot:
    folder = Path(root) / version
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return Snapshot(version=manifest["version"], path=folder / SNAPSHOT_FILE, as_of=manifest["as_of"],
                    tables=manifest["tables"], created_at=manifest["created_at"])


def current_snapshot(root: Path) -> Snapshot | None:
    version = current_version(root)
    return None if version is None else read_snapshot(root, version)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
