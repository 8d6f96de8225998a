"""What Keel's state holds: counts per table and partition, and gate results."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from keel.warehouse import connect

UNPARTITIONED = "unpartitioned"


def _read_only(path: Path, attempts: int = 20):
    for attempt in range(attempts):
        try:
            return connect(path, read_only=True)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise RuntimeError(
                    f"the warehouse {path} is held by a running job; try again when it ends"
                ) from exc
            time.sleep(0.5)
    raise AssertionError("unreachable")


def collect(warehouse: Path, start=None, end=None) -> dict:
    """The ``keel status --json`` document (other stages add their own keys)."""
    doc: dict = {"tables": {}, "checks": []}
    if not warehouse.exists():
        return doc
    ctx = _read_only(warehouse)
    with ctx as con:
        tables = {r[0] for r in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables").fetchall()}
        if "audit.partition_stats" not in tables:
            return doc
        window = "(? is null or partition_date >= ?) and (? is null or partition_date <= ?)"
        params = [start, start, end, end]
        for table, partition, landed, valid, quarantined in con.execute(
            "select table_name, partition_date, landed, valid, quarantined from audit.partition_stats "
            f"where partition_date is null or ({window}) order by table_name, partition_date",
            params,
        ).fetchall():
            key = partition.isoformat() if partition else UNPARTITIONED
            doc["tables"].setdefault(table, {})[key] = {
                "landed": landed, "valid": valid, "quarantined": quarantined,
            }
        for table, partition, name, passed, blocking, message in con.execute(
            "select table_name, partition_date, check_name, passed, blocking, message "
            f"from audit.check_results where partition_date is null or ({window}) "
            "order by table_name, partition_date, check_name",
            params,
        ).fetchall():
            doc["checks"].append({
                "asset": f"validated/{table}",
                "partition": partition.isoformat() if partition else None,
                "name": name,
                "passed": bool(passed),
                "blocking": bool(blocking),
                "message": message,
            })
    return doc
