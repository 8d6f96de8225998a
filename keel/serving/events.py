"""Live events: rows of the deployment's event tables, checked by the table's contract and
kept in an append-only log before they are acknowledged.

An event batch is ``{"table": <name>, "rows": [{column: value, ...}, ...]}``. Each row must
carry the table's columns with their contract types (the same pydantic typing as requests)
and then pass every rule of the table's contract (``keel.data.contract.rule_failures``, the
rules that quarantine a landed row). A row that breaks a rule is answered with the rule and
kept, with its reason, in ``rejected/<table>/<date>.jsonl``, as a quarantined row is; the valid
rows go to ``<table>/<date>.jsonl`` (``date`` the UTC day received). Both are written with one
``write`` and an ``fsync`` before the answer leaves, so an acknowledged event survives a
``kill -9`` of the server; the log is replayed into the live features when a worker starts or
a new snapshot is swapped in.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from pydantic import ValidationError

from keel.core import durable
from keel.core.spec import TableSpec
from keel.data.contract import rule_failures
from keel.serving.schema import row_model

REJECTED = "rejected"


@dataclass
class EventCheck:
    table: str
    typed: pd.DataFrame  # the valid rows, in the contract's dtypes
    valid_rows: list[dict[str, Any]]  # the same rows as JSON-ready values
    rejected: list[dict[str, Any]]  # {"index", "rules", "reason", "row"}


class EventContract:
    """The contracts of the event tables, as one check per batch."""

    def __init__(self, tables: Sequence[TableSpec]):
        self.tables = {spec.name: spec for spec in tables}
        self.models = {spec.name: row_model(spec, tuple(spec.columns), f"{spec.name.title()}Event")
                       for spec in tables}

    def check(self, table: str, rows: list[Any]) -> EventCheck:
        spec, model = self.tables[table], self.models[table]
        rejected, typed_rows, valid_rows, positions = [], [], [], []
        for index, row in enumerate(rows):
            try:
                parsed = model.model_validate_json(orjson.dumps(row))
            except ValidationError as exc:
                rules = [_type_rule(e) for e in exc.errors()]
                rejected.append({"index": index, "rules": list(dict.fromkeys(r for r, _ in rules)),
                                 "reason": "; ".join(dict.fromkeys(t for _, t in rules)), "row": row})
                continue
            typed_rows.append(parsed.model_dump())
            positions.append(index)
        typed = typed_frame(spec, typed_rows)
        failures = rule_failures(spec, typed) if len(typed) else {}
        keep = []
        for position, index in enumerate(positions):
            if position in failures:
                reasons = failures[position]
                rejected.append({"index": index, "rules": list(dict.fromkeys(r for r, _ in reasons)),
                                 "reason": "; ".join(dict.fromkeys(t for _, t in reasons)),
                                 "row": rows[index]})
            else:
                keep.append(position)
                valid_rows.append(_json_row(typed_rows[position]))
        rejected.sort(key=lambda r: r["index"])
        return EventCheck(table, typed.iloc[keep].reset_index(drop=True), valid_rows, rejected)


def _type_rule(error: dict) -> tuple[str, str]:
    column = ".".join(str(p) for p in error.get("loc", ())) or "(row)"
    kind = error.get("type", "invalid")
    if kind == "extra_forbidden":
        return f"{column}:unexpected_column", f"{column} is not a column of the table"
    if kind == "missing":
        return f"{column}:missing", f"{column} is missing"
    return f"{column}:type", f"{column}: {error.get('msg', 'invalid')}"


def typed_frame(spec: TableSpec, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows of ``spec``'s columns as a frame in the contract's dtypes (time stamps naive UTC)."""
    columns = {}
    for column in spec.columns:
        dtype = str(spec.schema.columns[column].dtype)
        values = [row.get(column) for row in rows]
        if spec.duckdb_type(column) == "TIMESTAMP":
            columns[column] = pd.to_datetime(pd.Series(values, dtype=object), utc=True).dt.tz_convert(None)
        else:
            columns[column] = pd.Series(pd.array(values, dtype=dtype))
    return pd.DataFrame(columns)


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
                if isinstance(v, dt.datetime) and v.tzinfo else
                (v.isoformat() if isinstance(v, dt.datetime) else v))
            for k, v in row.items()}


class EventLog:
    """The append-only, fsynced log of accepted and rejected events under one folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def append(self, table: str, rows: list[dict[str, Any]], received_at: dt.datetime) -> Path:
        return self._write(self.root / table, [{"received_at": _stamp(received_at), "row": r} for r in rows],
                           received_at)

    def reject(self, table: str, rejected: list[dict[str, Any]], received_at: dt.datetime) -> Path:
        records = [{"received_at": _stamp(received_at), "rules": r["rules"], "reason": r["reason"],
                    "row": r["row"]} for r in rejected]
        return self._write(self.root / REJECTED / table, records, received_at)

    def _write(self, folder: Path, records: list[dict[str, Any]], received_at: dt.datetime) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{received_at.date().isoformat()}.jsonl"
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        durable.append(path, data)
        return path

    def read(self, table: str) -> Iterator[dict[str, Any]]:
        """Every accepted row of ``table``, oldest file first, in the order appended. A last line
        cut short by a crash (never acknowledged) is skipped."""
        folder = self.root / table
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
            for line in path.read_bytes().splitlines():
                try:
                    yield json.loads(line)["row"]
                except (json.JSONDecodeError, KeyError):
                    continue


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
