"""Ingestion: landing files into ``raw.<table>``, verbatim, as text.

Every line of a landing file ends up in exactly one place, so that for every file
``lines = header + rows + lines continuing a quoted value + unparsed lines``. Rows go to
``raw.<table>``; lines that hold no row (blank lines, a repeated header, a stray quote, the
wrong number of fields, bytes that are not UTF-8, a cut-off last line) go to ``raw._unparsed``
with their line number, their bytes and the reason. Columns outside the contract are kept as
JSON in ``_extra``. A file that cannot be read as CSV text at all (empty, binary, UTF-16, the
wrong separator, a header without the contract's columns) is rejected whole: each of its lines
is unparsed with the reason, and the file is copied to ``rejected_files/``.

Values stay text, exactly as they landed: an unquoted empty field is NULL and a quoted one is
the empty string; spellings such as ``NA`` stay text until the table's contract decides what
they mean (see ``keel.data.contract``). Loading a partition replaces it inside one
transaction, so a re-run never duplicates and a crash never leaves half a day behind.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from keel.core.spec import TableSpec
from keel.core.warehouse import ident
from keel.data.landing import file_for

# A line ends at \n, \r\n or a lone \r, as CSV readers (pyarrow's included) take it.
_LINE_END = re.compile(rb"\r\n|\r|\n")
MAX_LINE_BYTES = 1 << 20
# How far a quoted value may carry a record across line breaks before the quote that opened
# it counts as stray.
MAX_RECORD_LINES = 1000
_BLOCK_SIZE = 4 * MAX_LINE_BYTES  # pyarrow needs a whole record inside one block

BLANK_LINE = "a blank line"
WHITESPACE_LINE = "a line of only whitespace"
REPEATED_HEADER = "the header line again (two files joined into one?)"
STRAY_QUOTE = 'a quote (") opened on this line is never closed: a stray quote'
TRUNCATED = "the file ends in the middle of this line (truncated transfer)"

_NOT_TEXT = [  # (leading bytes, what the file is): longest prefixes first
    (codecs.BOM_UTF32_LE, "UTF-32 text"),
    (codecs.BOM_UTF32_BE, "UTF-32 text"),
    (codecs.BOM_UTF16_LE, "UTF-16 text"),
    (codecs.BOM_UTF16_BE, "UTF-16 text"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"PK\x03\x04", "a zip archive"),
    (b"%PDF", "a PDF document"),
]
_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


class UnparsedLine(NamedTuple):
    number: int  # 1 is the file's first line
    raw: bytes  # the line as it landed, without its line ending
    reason: str
    blank: bool = False  # holds no data: reported, but the file is still intact

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "backslashreplace")


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
    unparsed: list[UnparsedLine] = field(default_factory=list)
    read_error: str | None = None
    lines: int = 0  # physical lines in the file
    header_lines: int = 0
    continued_lines: int = 0  # lines that continue a quoted value of the row above them

    @property
    def rows_parsed(self) -> int:
        return 0 if self.rows is None else self.rows.num_rows

    @property
    def blank_lines(self) -> int:
        return sum(u.blank for u in self.unparsed)


def split_lines(content: bytes) -> tuple[list[bytes], list[bytes]]:
    """The file's physical lines and the ending of each (b"" for a last line without one)."""
    lines, endings, start = [], [], 0
    for match in _LINE_END.finditer(content):
        lines.append(content[start : match.start()])
        endings.append(match.group())
        start = match.end()
    if start < len(content):
        lines.append(content[start:])
        endings.append(b"")
    return lines, endings


def _not_text(content: bytes) -> str | None:
    for prefix, kind in _NOT_TEXT:
        if content.startswith(prefix):
            return f"the file is {kind}, not UTF-8 CSV text"
    # Text has no NUL bytes; a few in one line are damage to that line, many are not text.
    first_line = content.split(b"\n", 1)[0]
    if b"\x00" in first_line or content.count(b"\x00") > len(content) // 100:
        return "the file is not text: it holds NUL bytes (binary data, or UTF-16 without a byte-order mark)"
    return None


def _other_separator(spec: TableSpec, text: str) -> str | None:
    """The separator, other than a comma, under which the header names contract columns."""
    for separator, name in _SEPARATORS.items():
        names = {spec.contract_column(n.strip()) for n in next(csv.reader([text], delimiter=separator))}
        if len(names) > 1 and names & set(spec.columns):
            return name
    return None


def _header_problem(spec: TableSpec, header: list[str] | None, text: str) -> str | None:
    if header is None or len(header) == 1:
        separator = _other_separator(spec, text)
        if separator:
            return f"the file is separated by {separator}, not commas"
    if header is None:
        return "the header line is not CSV (a quote out of place)"
    if not set(header) & set(spec.columns):
        return (
            f"the first line names none of the contract's columns ({', '.join(spec.columns)}): "
            "the header is missing or wrong"
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        return f"the header repeats column name(s) {', '.join(repeated)}: {header}"
    return None


def _field_count(text: str) -> int | None:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        return None
    return len(rows[0]) if len(rows) == 1 else None


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
    _parse_content(spec, content, parsed)
    accounted = parsed.header_lines + parsed.rows_parsed + parsed.continued_lines + len(parsed.unparsed)
    if accounted != parsed.lines:
        raise RuntimeError(
            f"{source_file}: {parsed.lines} lines but {accounted} accounted for (header "
            f"{parsed.header_lines}, rows {parsed.rows_parsed}, continued {parsed.continued_lines}, "
            f"unparsed {len(parsed.unparsed)}); refusing to load a file whose lines do not add up"
        )
    return parsed


def _reject(parsed: ParsedFile, lines: list[bytes], reason: str) -> None:
    parsed.read_error = reason
    parsed.unparsed = [UnparsedLine(n, line, reason) for n, line in enumerate(lines, start=1)]


def _parse_content(spec: TableSpec, content: bytes, parsed: ParsedFile) -> None:
    if not content:
        parsed.read_error = "the file is empty: not even a header line arrived"
        return
    lines, endings = split_lines(content)
    parsed.lines = len(lines)
    problem = _not_text(content)
    if problem:
        _reject(parsed, lines, problem)
        return

    unparsed: dict[int, UnparsedLine] = {}
    # A byte-order mark is not part of the first column's name.
    texts: list[str | None] = []
    for number, line in enumerate(lines, start=1):
        try:
            texts.append(line.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            texts.append(None)
            unparsed[number] = UnparsedLine(number, line, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    header_at = next((i for i, t in enumerate(texts) if t is None or t.strip()), None)
    if header_at is None:
        _reject(parsed, lines, "the file holds only blank lines: not even a header line arrived")
        return
    header_text = texts[header_at]
    if header_text is None:
        _reject(parsed, lines, f"the header line cannot be read: {unparsed[header_at + 1].reason}")
        return
    try:
        # Header names as the contract spells them: a renamed upstream column lands as its
        # contract column, so every later count and message speaks of contract columns.
        header = [spec.contract_column(name.strip()) for name in next(csv.reader([header_text], strict=True))]
    except csv.Error:
        header = None
    problem = _header_problem(spec, header, header_text)
    if problem:
        _reject(parsed, lines, problem)
        return
    parsed.columns = header
    parsed.header_lines = 1
    for i in range(header_at):
        unparsed[i + 1] = UnparsedLine(i + 1, lines[i], BLANK_LINE if not lines[i] else WHITESPACE_LINE, blank=True)
    if endings[-1] == b"" and len(lines) > header_at + 1:
        last = len(lines)
        unparsed[last] = UnparsedLine(last, lines[-1], TRUNCATED)

    records = _group_records(lines, endings, texts, header_at + 1, header_text, len(header), unparsed)
    table, rejected = _read_records(records, len(header))
    kept = table.column("__line").to_pylist() if table.num_rows else []
    kept_set = set(kept)
    for first, record, span in records:
        if first in kept_set:
            parsed.continued_lines += span - 1
            continue
        reason = rejected.get(first, "the CSV reader returned no row for this record")
        for k in range(span):
            unparsed[first + k] = UnparsedLine(first + k, lines[first + k - 1], reason)
    parsed.unparsed = [unparsed[n] for n in sorted(unparsed)]

    n = table.num_rows
    by_name = {name: f"c{k}" for k, name in enumerate(header)}
    columns = {
        name: table.column(by_name[name]) if name in by_name else pa.nulls(n, pa.string())
        for name in spec.columns
    }
    extras = [name for name in header if name not in spec.schema.columns]
    if extras:
        extra_values = table.select([by_name[name] for name in extras]).to_pylist()
        columns["_extra"] = pa.array(
            [json.dumps(dict(zip(extras, v.values(), strict=True))) for v in extra_values], pa.string()
        )
    else:
        columns["_extra"] = pa.nulls(n, pa.string())
    columns["_partition_date"] = pa.array([parsed.partition] * n, pa.date32())
    columns["_source_file"] = pa.array([parsed.source_file] * n, pa.string())
    columns["_source_row"] = pa.array(kept, pa.int64())
    parsed.rows = pa.table(columns)


def _group_records(
    lines: list[bytes],
    endings: list[bytes],
    texts: list[str | None],
    first_body: int,
    header_text: str,
    fields: int,
    unparsed: dict[int, UnparsedLine],
) -> list[tuple[int, str, int]]:
    """CSV records as (first line number, text, lines spanned); the other lines go to ``unparsed``.

    A quoted value may hold a line break, so a line with an odd number of quotes continues
    on the next lines until its quotes balance. The join is kept only if it makes a record
    of the header's width; otherwise the quote was stray, that one line is unparsed and the
    lines after it are read on their own, so a stray quote never swallows the rest of a file.
    """
    records: list[tuple[int, str, int]] = []
    header_key = header_text.strip()
    i = first_body
    while i < len(lines):
        number, text = i + 1, texts[i]
        if text is None or number in unparsed:
            i += 1
            continue
        if "\x00" in text:
            unparsed[number] = UnparsedLine(number, lines[i], "the line holds NUL bytes: it is damaged")
            i += 1
            continue
        if len(lines[i]) > MAX_LINE_BYTES:
            unparsed[number] = UnparsedLine(number, lines[i], f"the line is {len(lines[i]):,} bytes long, over the {MAX_LINE_BYTES:,}-byte limit")
            i += 1
            continue
        if not text.strip():
            unparsed[number] = UnparsedLine(number, lines[i], BLANK_LINE if not text else WHITESPACE_LINE, blank=True)
            i += 1
            continue
        if text.strip() == header_key:
            unparsed[number] = UnparsedLine(number, lines[i], REPEATED_HEADER)
            i += 1
            continue
        if text.count('"') % 2 == 0:
            records.append((number, text, 1))
            i += 1
            continue
        joined, size, j = text, len(lines[i]), i + 1
        closed = False
        while j < len(lines) and j - i < MAX_RECORD_LINES and size <= MAX_LINE_BYTES:
            following = texts[j]
            if following is None or (j + 1) in unparsed:
                break
            joined += endings[j - 1].decode("ascii") + following
            size += len(lines[j])
            if following.count('"') % 2:
                closed = True
                break
            j += 1
        if closed and size <= MAX_LINE_BYTES and _field_count(joined) == fields:
            records.append((number, joined, j - i + 1))
            i = j + 1
        else:
            unparsed[number] = UnparsedLine(number, lines[i], STRAY_QUOTE)
            i += 1
    return records


def _read_records(records: list[tuple[int, str, int]], fields: int) -> tuple[pa.Table, dict[int, str]]:
    """Split each record into its fields (text); records of the wrong width are returned apart.

    Each record is prefixed with its line number, so every row pyarrow returns names its line
    whatever pyarrow skips or rejects.
    """
    names = ["__line", *(f"c{k}" for k in range(fields))]
    rejected: dict[int, str] = {}

    def on_invalid_row(row) -> str:
        first = int(row.text.split(",", 1)[0])
        rejected[first] = f"expected {row.expected_columns - 1} fields, found {row.actual_columns - 1}"
        return "skip"

    if not records:
        return pa.table({name: pa.array([], pa.int64() if name == "__line" else pa.string()) for name in names}), rejected
    text = "".join(f"{number},{record}\n" for number, record, _ in records)
    table = pacsv.read_csv(
        io.BytesIO(text.encode("utf-8")),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=_BLOCK_SIZE),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(
            column_types={"__line": pa.int64(), **{name: pa.string() for name in names[1:]}},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, rejected


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
        (spec.name, f.partition, f.source_file, u.number, u.text, u.reason, u.raw, u.blank)
        for f in files
        for u in f.unparsed
    ]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    audit = [
        (spec.name, f.partition, f.source_file, f.present, f.sha256, f.size,
         json.dumps(f.columns), f.rows_parsed, len(f.unparsed), f.read_error, f.landed_at, now,
         f.version, f.lines, f.header_lines, f.continued_lines, f.blank_lines)
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
            con.executemany(
                "insert into raw._unparsed (table_name, _partition_date, _source_file, _source_row, "
                "line, error, line_bytes, blank) values (?, ?, ?, ?, ?, ?, ?, ?)",
                unparsed,
            )
        con.executemany(
            "insert into raw._files (table_name, partition_date, source_file, file_present, sha256, "
            "size_bytes, columns, rows_parsed, lines_unparsed, read_error, landed_at, loaded_at, "
            "file_version, lines, header_lines, continued_lines, blank_lines) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            audit,
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
