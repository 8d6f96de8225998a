"""``keel replay``: plays the upstream system, day by day, with optional realistic faults.

The pipeline never reads the replay source; it only sees files in the landing zone, exactly
as it would see them from a real upstream system.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from keel.data.landing import file_for, write_atomically
from keel.core.spec import FaultPlan, TableSpec, UseCase

FAULT_KINDS: dict[str, str] = {
    "empty_strings": 'empty strings ("") sent where nulls belong, in every column',
    "renamed_column": "a column arrives under a new name",
    "missing_column": "a column is missing from the file",
    "numeric_as_text": "a numeric column arrives as text with units (e.g. '1,400 mi')",
    "volume_drop": "95% of the day's rows are missing",
    "duplicate_rows": "10% of the day's rows are sent twice",
    "out_of_range": "negative distances and time stamps outside their day on a few % of rows",
    "null_spike": "one column turns null on 60% of the rows",
    "truncated_file": "the file is cut off part-way through a line",
    "corrupt_file": "a block of the file is overwritten with binary garbage",
    "late_day": "the day is held back and arrives after later days (replay it again to deliver)",
}


@dataclass
class ReplayReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    fault: str | None = None
    fault_file: str | None = None

    def to_dict(self) -> dict:
        return {
            "written": len(self.written),
            "unchanged": len(self.unchanged),
            "held_back": self.held_back,
            "fault": self.fault,
            "fault_file": self.fault_file,
        }


def _typed_for_landing(table: TableSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Integral columns as integers, so the upstream files say 517 and not 517.0. The source
    frame has the upstream files' column names (``TableSpec.file_columns``)."""
    out = frame.copy()
    for column in table.columns:
        name = table.file_column(column)
        if name in out and table.duckdb_type(column) in ("BIGINT", "INTEGER"):
            out[name] = out[name].astype("Int64")
    return out


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """Nulls as empty unquoted fields, text always quoted: an empty string stays distinct."""
    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


def _apply_row_fault(
    kind: str, frame: pd.DataFrame, plan: FaultPlan, rng: np.random.Generator
) -> pd.DataFrame:
    if kind == "empty_strings":
        return frame.astype("string").fillna("")
    if kind == "renamed_column":
        old, new = plan.rename
        return frame.rename(columns={old: new})
    if kind == "missing_column":
        return frame.drop(columns=[plan.missing])
    if kind == "numeric_as_text":
        column = plan.numeric_as_text
        out = frame.copy()
        out[column] = [None if pd.isna(v) else plan.text_format.format(v) for v in out[column]]
        return out
    if kind == "volume_drop":
        keep = max(1, round(len(frame) * 0.05))
        return frame.iloc[np.sort(rng.choice(len(frame), size=keep, replace=False))]
    if kind == "duplicate_rows":
        extra = frame.iloc[rng.choice(len(frame), size=max(1, len(frame) // 10), replace=False)]
        return pd.concat([frame, extra]).sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
    if kind == "out_of_range":
        return plan.out_of_range(frame, rng)
    if kind == "null_spike":
        out = frame.copy()
        hit = rng.choice(len(out), size=int(len(out) * 0.6), replace=False)
        out.iloc[hit, out.columns.get_loc(plan.null_spike)] = None
        return out
    raise ValueError(f"unknown row fault {kind!r}")


def _apply_byte_fault(kind: str, content: bytes, rng: np.random.Generator) -> bytes:
    if kind == "truncated_file":
        cut = int(len(content) * 0.6)
        # Cut inside a line, as an interrupted transfer does.
        while cut < len(content) and content[cut - 1 : cut] == b"\n":
            cut += 1
        return content[:cut]
    if kind == "corrupt_file":
        start = len(content) // 3
        garbage = rng.integers(128, 256, size=max(64, len(content) // 20), dtype=np.uint8)
        return content[:start] + garbage.tobytes() + content[start + len(garbage) :]
    raise ValueError(f"unknown byte fault {kind!r}")


def _emit(landing: Path, report: ReplayReport, path: Path, content: bytes) -> None:
    name = path.relative_to(landing).as_posix()
    (report.written if write_atomically(path, content) else report.unchanged).append(name)


def write_snapshots(usecase: UseCase, landing: Path, report: ReplayReport) -> None:
    """The reference tables, as the upstream system's current snapshot of each."""
    if usecase.source is None:
        raise ValueError(f"use case {usecase.name!r} has no replay source (UseCase.source)")
    for table in usecase.snapshot_tables:
        frame = _typed_for_landing(table, usecase.source(table.name))
        _emit(landing, report, file_for(landing, table, None), to_csv_bytes(frame))


def replay(
    usecase: UseCase,
    landing: Path,
    start: dt.date,
    end: dt.date,
    *,
    fault: str | None = None,
    fault_date: dt.date | None = None,
    fault_table: str | None = None,
    seed: int = 13,
) -> ReplayReport:
    """Write the landing files for the days ``start..end`` and the snapshot tables."""
    if usecase.source is None:
        raise ValueError(f"use case {usecase.name!r} has no replay source (UseCase.source)")
    days = usecase.days(start, end)
    if fault is not None:
        if fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; kinds: {', '.join(FAULT_KINDS)}")
        if fault_date is None or fault_date not in days:
            raise ValueError(f"--fault-date must be one of the replayed days {start}..{end}")
    if fault is not None and not usecase.fault_plans:
        raise ValueError(f"use case {usecase.name!r} declares no fault plan (UseCase.faults)")
    fault_table = fault_table or (usecase.fault_plans[0].table if usecase.fault_plans else None)
    if fault is not None:
        try:
            spec = usecase.table(fault_table)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if not spec.partitioned:
            raise ValueError(f"faults apply to daily tables; {fault_table} is a snapshot table")
        if usecase.fault_plan(fault_table) is None:
            raise ValueError(f"{fault_table} has no fault plan; tables with one: "
                             f"{', '.join(p.table for p in usecase.fault_plans)}")
    rng = np.random.default_rng(seed)
    report = ReplayReport(fault=fault)

    def emit(path: Path, content: bytes) -> None:
        _emit(landing, report, path, content)

    write_snapshots(usecase, landing, report)

    for table in usecase.partitioned_tables:
        source = usecase.source(table.name)
        # row_date reads contract columns; the source carries the upstream files' names.
        contract_named = source.rename(columns=dict(table.file_columns))
        row_days = pd.Series(usecase.row_date(table.name, contract_named), index=source.index)
        wanted = source[(row_days >= days[0]) & (row_days <= days[-1])]
        by_day = {day: rows for day, rows in wanted.groupby(row_days.loc[wanted.index])}
        empty = source.iloc[0:0]
        for day in days:
            frame = _typed_for_landing(table, by_day.get(day, empty))
            path = file_for(landing, table, day)
            is_faulty = fault is not None and table.name == fault_table and day == fault_date
            if is_faulty and fault == "late_day":
                report.held_back.append(path.relative_to(landing).as_posix())
                continue
            if is_faulty and fault not in ("truncated_file", "corrupt_file"):
                frame = _apply_row_fault(fault, frame, usecase.fault_plan(table.name), rng)
            content = to_csv_bytes(frame)
            if is_faulty and fault in ("truncated_file", "corrupt_file"):
                content = _apply_byte_fault(fault, content, rng)
            if is_faulty:
                report.fault_file = path.relative_to(landing).as_posix()
            emit(path, content)
    return report
