"""The DuckDB warehouse: table layout and connections.

Schemas: ``raw`` (what landed, as text), ``validated`` (typed rows that passed the contract),
``quarantine`` (every rejected row with its reasons) and ``audit`` (per-file and per-partition
statistics and gate results). dbt models add their own schemas on top.

DuckDB lets one process write a file at a time, so every connection here is short-lived.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from keel.spec import TableSpec

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
    """create table if not exists audit.check_results (
        table_name varchar, partition_date date, check_name varchar, passed boolean,
        blocking boolean, message varchar, metadata varchar, evaluated_at timestamp,
        run_id varchar)""",
    """create table if not exists audit.snapshot_baseline (
        table_name varchar primary key, landed bigint, sha256 varchar, accepted_at timestamp)""",
    """create table if not exists audit.gate_status (
        table_name varchar, partition_date date, passed boolean, failed_checks varchar,
        evaluated_at timestamp)""",
]


def ident(name: str) -> str:
    """Quote an identifier that comes from the configuration's allow-list."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid column or table name for Keel")
    return f'"{name}"'


def check_table_spec(spec: TableSpec) -> None:
    for name in [spec.name, *spec.columns]:
        ident(name)


@contextmanager
def connect(path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
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
