"""Ingestion: landing files into ``raw.<table>``, verbatim, as text.

Nothing a file holds is dropped here. Lines that cannot be parsed go to ``raw._unparsed``
with the parser's reason; columns outside the contract are kept as JSON in ``_extra``; a
file that cannot be decoded at all is copied to ``rejected_files/``. Loading a partition
replaces it inside one transaction, so a re-run never duplicates and a crash never leaves
half a day behind.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from keel.landing import file_for
from keel.spec import TableSpec
from keel.warehouse import ident


@dataclass
class ParsedFile:
    table: str
    partition: dt.date | None
    source_file: str
    present: bool
    sha256: str | None = None
    size: int = 0
    landed_at: dt.datetime | None = None
    version: str | None = None  # size:mtime_ns, as the landing sensor sees the file
    columns: list[str] = field(default_factory=list)
    rows: pa.Table | None = None
    unparsed: list[tuple[int, str, str]] = field(default_factory=list)
    read_error: str | None = None

    @property
    def rows_parsed(self) -> int:
        return 0 if self.rows is None else self.rows.num_rows


def _group_records(
    lines: list[tuple[int, str]],
) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """Join physical lines into CSV records: a quoted value may hold a line break.

    A record keeps the number of its first line. A quote left open at the end of the file
    makes that last record unparsable rather than swallowing the lines before it.
    """
    records: list[tuple[int, str]] = []
    current: tuple[int, str] | None = None
    for number, text in lines:
        if current is None:
            current = (number, text)
        else:
            current = (current[0], current[1] + "\n" + text)
        if current[1].count('"') % 2 == 0:
            records.append(current)
            current = None
    unterminated = []
    if current is not None:
        unterminated.append((current[0], current[1], "a quoted value is never closed"))
    return records, unterminated


def _decode_lines(
    lines: list[bytes], first_line: int
) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    good, bad = [], []
    for number, line in enumerate(lines, start=first_line):
        try:
            good.append((number, line.decode("utf-8")))
        except UnicodeDecodeError as exc:
            bad.append((number, line.decode("utf-8", "backslashreplace"), f"not valid UTF-8 ({exc.reason})"))
    return good, bad


def parse_file(spec: TableSpec, landing: Path, partition: dt.date | None) -> ParsedFile:
    """Read one landing file into contract columns (text), extras and unparsed lines."""
    path = file_for(landing, spec, partition)
    source_file = path.relative_to(landing).as_posix()
    parsed = ParsedFile(spec.name, partition, source_file, present=path.exists())
    if not parsed.present:
        return parsed
    # Stat before reading: if the file is replaced meanwhile, the recorded version is the
    # older one and the landing sensor requests the newer file again.
    stat = path.stat()
    content = path.read_bytes()
    parsed.sha256 = hashlib.sha256(content).hexdigest()
    parsed.size = len(content)
    parsed.landed_at = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).replace(tzinfo=None)
    parsed.version = f"{stat.st_size}:{stat.st_mtime_ns}"
    if not content:
        parsed.read_error = "the file is empty: not even a header line arrived"
        return parsed

    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        parsed.unparsed.append(
            (len(lines), lines[-1].decode("utf-8", "backslashreplace"),
             "the file ends in the middle of this line (truncated transfer)")
        )
        lines.pop()
    try:
        header_text = lines[0].decode("utf-8-sig")  # a byte-order mark is not part of a name
        header = next(csv.reader([header_text]))
    except (UnicodeDecodeError, StopIteration, csv.Error, IndexError) as exc:
        parsed.read_error = f"the header line cannot be read ({exc}); the file is not CSV text"
        parsed.unparsed = [
            (n, line.decode("utf-8", "backslashreplace"), parsed.read_error)
            for n, line in enumerate(lines, start=1)
        ] + [u for u in parsed.unparsed if u[0] > len(lines)]
        return parsed
    parsed.columns = header
    if len(set(header)) != len(header):
        parsed.read_error = f"the header repeats a column name: {header}"
        parsed.unparsed = [
            (n, line.decode("utf-8", "backslashreplace"), parsed.read_error)
            for n, line in enumerate(lines[1:], start=2)
        ] + parsed.unparsed
        return parsed

    body, undecodable = _decode_lines(lines[1:], first_line=2)
    records, unterminated = _group_records(body)
    # pyarrow numbers the physical lines of the text it is given (header = line 1); map each
    # record's first line there back to its line in the landed file.
    original_line: dict[int, int] = {}
    text_line = 2
    for number, record in records:
        original_line[text_line] = number
        text_line += record.count("\n") + 1
    rejected: dict[int, tuple[int, str, str]] = {}

    def on_invalid_row(row) -> str:
        original = original_line.get(row.number, -1) if row.number else -1
        rejected[original] = (
            original,
            row.text,
            f"expected {row.expected_columns} fields, found {row.actual_columns}",
        )
        return "skip"

    text = "\n".join([header_text, *(record for _, record in records)]) + "\n"
    table = pacsv.read_csv(
        io.BytesIO(text.encode("utf-8")),
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    kept_lines = [n for n, _ in records if n not in rejected]
    parsed.unparsed = sorted([*undecodable, *unterminated, *rejected.values(), *parsed.unparsed])

    n = table.num_rows
    columns = {
        name: table.column(name) if name in header else pa.nulls(n, pa.string())
        for name in spec.columns
    }
    extras = [name for name in header if name not in spec.schema.columns]
    if extras:
        extra_values = table.select(extras).to_pylist()
        columns["_extra"] = pa.array([json.dumps(v) for v in extra_values], pa.string())
    else:
        columns["_extra"] = pa.nulls(n, pa.string())
    columns["_partition_date"] = pa.array([partition] * n, pa.date32())
    columns["_source_file"] = pa.array([source_file] * n, pa.string())
    columns["_source_row"] = pa.array(kept_lines, pa.int64())
    parsed.rows = pa.table(columns)
    return parsed


def load_partitions(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    files: list[ParsedFile],
    landing: Path,
    rejected_files: Path,
) -> None:
    """Replace the given partitions of ``raw.<table>`` in one transaction."""
    table = ident(spec.name)
    partitions = [f.partition for f in files]
    rows = [f.rows for f in files if f.rows is not None and f.rows.num_rows]
    unparsed = [
        (spec.name, f.partition, f.source_file, number, line, error)
        for f in files
        for number, line, error in f.unparsed
    ]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    audit = [
        (spec.name, f.partition, f.source_file, f.present, f.sha256, f.size,
         json.dumps(f.columns), f.rows_parsed, len(f.unparsed), f.read_error, f.landed_at, now,
         f.version)
        for f in files
    ]
    for f in files:
        if f.read_error and f.present:
            target = rejected_files / spec.name / f"{f.sha256}.csv"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(file_for(landing, spec, f.partition), target)

    con.execute("begin transaction")
    try:
        con.execute("create or replace temp table _loading_partitions (d date)")
        con.executemany("insert into _loading_partitions values (?)", [[p] for p in partitions])
        match = "_partition_date is not distinct from d"
        con.execute(
            f"delete from raw.{table} where exists (select 1 from _loading_partitions where {match})"
        )
        con.execute(
            "delete from raw._unparsed where table_name = ? and exists "
            f"(select 1 from _loading_partitions where {match})",
            [spec.name],
        )
        con.execute(
            "delete from raw._files where table_name = ? and exists "
            "(select 1 from _loading_partitions where partition_date is not distinct from d)",
            [spec.name],
        )
        if rows:
            landed_rows = pa.concat_tables(rows)
            con.register("landed_rows", landed_rows)
            con.execute(f"insert into raw.{table} by name select * from landed_rows")
            con.unregister("landed_rows")
        if unparsed:
            con.executemany("insert into raw._unparsed values (?, ?, ?, ?, ?, ?)", unparsed)
        con.executemany("insert into raw._files values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", audit)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
