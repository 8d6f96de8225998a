"""The DuckDB warehouse: table layout and connections.

Schemas: ``raw`` (what landed, as text), ``validated`` (typed rows that passed the contract),
``quarantine`` (every rejected row with its reasons) and ``audit`` (per-file and per-partition
statistics, gate results and the latest result of every other asset check). dbt models add their own schemas on top.

DuckDB lets one process write a file at a time, so every connection here is short-lived.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from keel.core.lock import HomeBusy, busy, hold
from keel.core.spec import TableSpec

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")

RAW_META = {
    "_extra": "VARCHAR",  # columns the file had beyond the contract, as JSON
    "_partition_date": "DATE",
    "_source_file": "VARCHAR",
    "_source_row": "BIGINT",
}
VALIDATED_META = {"_partition_date": "DATE", "_source_file": "VARCHAR", "_source_row": "BIGINT"}

AUDIT_DDL = [
    """create table if not exists raw._unparsed (
        table_name varchar, _partition_date date, _source_file varchar, _source_row bigint,
        line varchar, error varchar)""",
    """create table if not exists raw._files (
        table_name varchar, partition_date date, source_file varchar, file_present boolean,
        sha256 varchar, size_bytes bigint, columns varchar, rows_parsed bigint,
        lines_unparsed bigint, read_error varchar, landed_at timestamp, loaded_at timestamp,
        file_version varchar)""",
    """create table if not exists audit.partition_stats (
        table_name varchar, partition_date date, file_present boolean, landed bigint,
        valid bigint, quarantined bigint, unparsed bigint, read_error varchar,
        missing_columns varchar, unexpected_columns varchar, changed_types varchar,
        empty_strings varchar, unexplained_nulls varchar, rule_counts varchar)""",
    # Added after the first release: the line accounting of every file (lines = header + rows
    # + continued + unparsed) and the bytes of each unparsed line. Added, not created, so
    # that a home built before them gains them in place.
    "alter table raw._unparsed add column if not exists line_bytes blob",
    "alter table raw._unparsed add column if not exists blank boolean",
    *[
        f"alter table {table} add column if not exists {column} bigint"
        for table in ("raw._files", "audit.partition_stats")
        for column in ("lines", "header_lines", "continued_lines", "blank_lines")
    ],
    # Beside the quarantined rows, where a person looks for what was rejected.
    "create view if not exists quarantine._unparsed as select * from raw._unparsed",
    """create table if not exists audit.check_results (
        table_name varchar, partition_date date, check_name varchar, passed boolean,
        blocking boolean, message varchar, metadata varchar, evaluated_at timestamp,
        run_id varchar)""",
    """create table if not exists audit.snapshot_baseline (
        table_name varchar primary key, landed bigint, sha256 varchar, accepted_at timestamp)""",
    # The latest result of every other asset check (dbt tests, feature_skew, the promotion
    # gates, the monitoring checks): one row per asset, check and partition (null: none).
    """create table if not exists audit.asset_checks (
        asset_key varchar, partition_date date, check_name varchar, kind varchar,
        passed boolean, severity varchar, blocking boolean, message varchar,
        evaluated_at timestamp, run_id varchar)""",
    """create table if not exists audit.gate_status (
        table_name varchar, partition_date date, passed boolean, failed_checks varchar,
        evaluated_at timestamp)""",
]


def ident(name: str) -> str:
    """Quote an identifier that comes from the configuration's allow-list."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid column or table name for Keel")
    return f'"{name}"'


def relation(name: str) -> str:
    """``schema.table`` of the configuration, quoted."""
    return ".".join(ident(part) for part in name.split("."))


def check_table_spec(spec: TableSpec) -> None:
    for name in [spec.name, *spec.columns]:
        ident(name)


@contextmanager
def connect(path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute("set TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


class WarehouseBusy(RuntimeError):
    """A writer held the warehouse for longer than a reader waits."""


# How a reader names itself as the holder of the Keel home, for the moment of its read.
READER = "a reader of the warehouse"
# How long a reader (keel status, a sensor's read) waits for a writer to let go of the file.
READ_WAIT_S = 5.0


@contextmanager
def connect_for_reading(path: Path, wait_s: float = READ_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that retries while a writer holds the file (DuckDB admits no
    reader beside a writer), then raises :class:`WarehouseBusy` saying who writes, when the
    Keel home's lock names it. The retry covers opening the file; the block runs once.

    The reader holds the Keel home's lock (``keel.core.lock``) while it reads: DuckDB lets no
    process write a file that another has open, even read-only, so a reader that did not
    would make a writer of the daemon fail."""
    try:
        with hold(path.parent, READER, timeout=wait_s):
            with _open_for_reading(path, wait_s) as con:
                yield con
    except HomeBusy as exc:
        who = exc.holder.describe() if exc.holder else "another process"
        raise WarehouseBusy(
            f"the warehouse {path} is being written by {who}; waited {wait_s:.0f} s, try again when it ends"
        ) from exc


@contextmanager
def _open_for_reading(path: Path, wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(path), read_only=True)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                holder = busy(path.parent)
                who = holder.describe() if holder else "another process"
                raise WarehouseBusy(
                    f"the warehouse {path} is being written by {who}; waited {wait_s:.0f} s, try again when it ends"
                ) from exc
            time.sleep(0.25)
    try:
        con.execute("set TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether ``schema.table`` exists; asks without creating anything, so a read-only
    connection can ask too."""
    (found,) = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(found)


CHECK_KINDS = ("gate", "dbt_test", "feature_skew", "promotion", "monitoring")


def record_checks(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """Keep ``rows`` as the latest result of their checks in ``audit.asset_checks``: each
    row is (asset key, partition date or None, check name, kind, passed, severity, blocking,
    message, run id); an earlier result of the same check and partition is replaced."""
    if not rows:
        return
    for row in rows:
        if row[3] not in CHECK_KINDS:
            raise ValueError(f"unknown check kind {row[3]!r}; known: {', '.join(CHECK_KINDS)}")
    con.execute("create schema if not exists audit")
    for statement in AUDIT_DDL:
        if "audit.asset_checks" in statement:
            con.execute(statement)
    con.execute("begin transaction")
    try:
        con.executemany(
            "delete from audit.asset_checks where asset_key = ? and check_name = ? "
            "and partition_date is not distinct from ?",
            [(asset, name, partition) for asset, partition, name, *_ in rows],
        )
        con.executemany(
            "insert into audit.asset_checks values (?, ?, ?, ?, ?, ?, ?, ?, current_timestamp, ?)",
            [tuple(row) for row in rows],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def ensure_tables(con: duckdb.DuckDBPyConnection, specs: list[TableSpec]) -> None:
    for schema in ("raw", "validated", "quarantine", "audit"):
        con.execute(f"create schema if not exists {schema}")
    for statement in AUDIT_DDL:
        con.execute(statement)
    for spec in specs:
        check_table_spec(spec)
        table = ident(spec.name)
        raw_cols = [f"{ident(c)} VARCHAR" for c in spec.columns]
        raw_cols += [f"{name} {kind}" for name, kind in RAW_META.items()]
        con.execute(f"create table if not exists raw.{table} ({', '.join(raw_cols)})")
        typed = [f"{ident(c)} {spec.duckdb_type(c)}" for c in spec.columns]
        typed += [f"{name} {kind}" for name, kind in VALIDATED_META.items()]
        con.execute(f"create table if not exists validated.{table} ({', '.join(typed)})")
        con.execute(
            f"""create table if not exists quarantine.{table} (
                _partition_date date, _source_file varchar, _source_row bigint,
                rules varchar, reason varchar, record varchar)"""
        )


def replace_rows(con: duckdb.DuckDBPyConnection, table: str, columns: str, frame,
                 where: str = "true", params: list | tuple = ()) -> int:
    """In one transaction, delete the rows of ``table`` that ``where`` selects (bound
    ``params``) and insert ``frame``'s ``columns`` (a select list over the frame); a failure
    leaves the table as it was. ``table`` and ``columns`` are the caller's identifiers, never
    a user's. Returns the rows inserted."""
    con.execute("begin transaction")
    try:
        con.execute(f"delete from {table} where {where}", list(params))
        if len(frame):
            con.register("_keel_rows", frame)
            con.execute(f"insert into {table} select {columns} from _keel_rows")
            con.unregister("_keel_rows")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return len(frame)
