"""The data contract: landed text rows in, typed valid rows and quarantined rows out.

Each table's contract is its pandera schema and its null spellings in the deployment's
configuration. Validation reads a field as null only when it is a null spelling the contract
accepts for its column (``TableSpec.null_spellings``), and rejects the row when the field
merely looks like one (``NA``, ``null``, ``N/A``, ``NaN``...); it casts the rest to the
contract's types (a value that does not cast is a rejected row, not a null), applies the
schema lazily so that every broken rule of every row is reported, and writes each row to
exactly one of ``validated.<table>`` or ``quarantine.<table>``. For every file,
lines = header + valid + quarantined + continued + unparsed, and validation refuses to
record a partition whose lines do not add up.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pandera.errors
import pandera.pandas as pa
import pyarrow as pa_arrow

from keel.core.spec import NULL_LOOKALIKES, TableSpec, UseCase
from keel.core.warehouse import VALIDATED_META, ident

_PANDAS_DTYPES = {"BIGINT": "Int64", "INTEGER": "Int64", "DOUBLE": "Float64", "VARCHAR": "string",
                  "TIMESTAMP": "datetime64[ns]", "BOOLEAN": "boolean"}


@dataclass
class PartitionStats:
    table: str
    partition: dt.date | None
    file_present: bool = False
    landed: int = 0
    valid: int = 0
    quarantined: int = 0
    unparsed: int = 0
    read_error: str | None = None
    missing_columns: list[str] = field(default_factory=list)
    unexpected_columns: list[str] = field(default_factory=list)
    changed_types: dict[str, str] = field(default_factory=dict)
    empty_strings: dict[str, int] = field(default_factory=dict)
    unexplained_nulls: dict[str, int] = field(default_factory=dict)
    rule_counts: dict[str, int] = field(default_factory=dict)
    # The file's line accounting: lines = header + valid + quarantined + continued + unparsed.
    lines: int = 0
    header_lines: int = 0
    continued_lines: int = 0  # lines continuing a quoted value of the row above them
    blank_lines: int = 0  # unparsed lines that hold nothing at all

    def row(self) -> tuple:
        return (
            self.table, self.partition, self.file_present, self.landed, self.valid,
            self.quarantined, self.unparsed, self.read_error, json.dumps(self.missing_columns),
            json.dumps(self.unexpected_columns), json.dumps(self.changed_types),
            json.dumps(self.empty_strings), json.dumps(self.unexplained_nulls),
            json.dumps(self.rule_counts), self.lines, self.header_lines, self.continued_lines,
            self.blank_lines,
        )

    @classmethod
    def from_row(cls, row: tuple) -> PartitionStats:
        (table, partition, present, landed, valid, quarantined, unparsed, read_error, missing,
         unexpected, changed, empties, nulls, rules, lines, header, continued, blank) = row
        return cls(table, partition, present, landed, valid, quarantined, unparsed, read_error,
                   json.loads(missing), json.loads(unexpected), json.loads(changed),
                   json.loads(empties), json.loads(nulls), json.loads(rules),
                   lines or 0, header or 0, continued or 0, blank or 0)

    def unaccounted_lines(self) -> int:
        """Lines of the file in no count; 0 unless something lost or invented a line."""
        return self.lines - (self.header_lines + self.valid + self.quarantined
                             + self.continued_lines + self.unparsed)


def _cast(spec: TableSpec, column: str) -> str:
    kind = spec.duckdb_type(column)
    col = ident(column)
    if kind == "VARCHAR":
        return col
    if kind == "TIMESTAMP":
        return f"cast(try_cast({col} as TIMESTAMPTZ) as TIMESTAMP)"
    return f"try_cast(trim({col}) as {kind})"


def _accept_null_spellings(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> None:
    """One row holding, per column, the null spellings its contract accepts (bound, not formatted)."""
    columns = ", ".join(f"?::varchar[] as {ident(c)}" for c in spec.columns)
    con.execute(
        f"create or replace temp table _accepted as select {columns}, ?::varchar[] as _lookalikes",
        [list(spec.null_spellings_of(c)) for c in spec.columns] + [list(NULL_LOOKALIKES)],
    )


def _landed(spec: TableSpec) -> str:
    """The partitions being validated, with accepted null spellings read as nulls.

    ``_spelling_issues`` lists ``column:null_spelling:text`` for every field that is an
    empty field or looks like a null where the contract accepts no such spelling, and
    ``_refused`` those columns; the fields read as null, so that they count neither as
    values nor as failed casts, and the profile does not count them as nulls either.
    """
    parts = ["_partition_date", "_source_file", "_source_row", "_extra"]
    flags, refused = [], []
    for column in spec.columns:
        col, accepted = f"r.{ident(column)}", f"a.{ident(column)}"
        text = f"nullif(trim({col}), '')"
        spelled = f"coalesce(list_contains({accepted}, {text}), false)"
        lookalike = f"coalesce(list_contains(a._lookalikes, lower({text})), false)"
        parts.append(f"case when {spelled} or {lookalike} then null else {col} end as {ident(column)}")
        is_refused = f"({col} is null and not list_contains({accepted}, '')) or ({lookalike} and not {spelled})"
        flags.append(f"case when {is_refused} then '{column}:null_spelling:' || coalesce({col}, '') end")
        refused.append(f"case when {is_refused} then '{column}' end")
    parts.append(f"list_filter([{', '.join(flags)}], lambda x: x is not null) as _spelling_issues")
    parts.append(f"list_filter([{', '.join(refused)}], lambda x: x is not null) as _refused")
    return (
        f"(select {', '.join(parts)} from raw.{ident(spec.name)} r cross join _accepted a where exists "
        "(select 1 from _validating v where r._partition_date is not distinct from v.d))"
    )


def _select_typed(spec: TableSpec) -> str:
    """Typed columns plus ``_cell_issues``: fields that are empty strings, do not cast, or
    spell a null the contract does not accept."""
    parts = ["_partition_date", "_source_file", "_source_row"]
    issues = []
    for column in spec.columns:
        col = ident(column)
        parts.append(f"{_cast(spec, column)} as {col}")
        issues.append(
            f"case when {col} = '' then '{column}:empty_string' "
            f"when {col} is not null and {_cast(spec, column)} is null then '{column}:type' end"
        )
    parts.append(
        f"list_concat(list_filter([{', '.join(issues)}], lambda x: x is not null), _spelling_issues) "
        "as _cell_issues"
    )
    return ", ".join(parts)


_ARROW_TO_PANDAS = {
    pa_arrow.int64(): pd.Int64Dtype(),
    pa_arrow.int32(): pd.Int64Dtype(),
    pa_arrow.float64(): pd.Float64Dtype(),
    pa_arrow.string(): pd.StringDtype(),
    pa_arrow.bool_(): pd.BooleanDtype(),
}


def _column_profile_sql(spec: TableSpec) -> str:
    """Per partition: empty strings, cast failures, non-empty values and unexplained nulls."""
    parts = ["_partition_date", "count(*) as n"]
    for column in spec.columns:
        col, name = ident(column), column
        parts.append(f"count(*) filter (where {col} = '') as {ident(name + '__empty')}")
        parts.append(f"count(*) filter (where {col} <> '') as {ident(name + '__nonempty')}")
        parts.append(
            f"count(*) filter (where {col} <> '' and {_cast(spec, column)} is null) "
            f"as {ident(name + '__castfail')}"
        )
        explained = spec.null_when.get(column)
        # A refused null spelling rejects its row; like an empty string, it is not a null.
        condition = f"{col} is null and not list_contains(_refused, '{column}')"
        condition += f" and not coalesce(({explained}), false)" if explained else ""
        parts.append(f"count(*) filter (where {condition}) as {ident(name + '__nulls')}")
    return f"select {', '.join(parts)} from {_landed(spec)} r group by _partition_date"


def _issue_text(spec: TableSpec, column: str, kind: str, spelled: str | None = None) -> str:
    if kind == "empty_string":
        return f"{column} is an empty string where a value or null belongs"
    if kind == "type":
        return f"{column} is not {spec.duckdb_type(column)}"
    accepted = ", ".join(repr(s) if s else "an empty field" for s in spec.null_spellings_of(column))
    accepts = f"its null is written only as {accepted}" if accepted else "it has no null spelling"
    what = "an empty field" if not spelled else repr(spelled)
    return f"{column} is {what}, which its contract does not read as null ({accepts})"


def _failure_reasons(
    schema: pa.DataFrameSchema, typed: pd.DataFrame
) -> dict[int, list[tuple[str, str]]]:
    reasons: dict[int, list[tuple[str, str]]] = defaultdict(list)
    try:
        schema.validate(typed, lazy=True)
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        for context, column, check, value, index in zip(
            cases["schema_context"], cases["column"], cases["check"], cases["failure_case"],
            cases["index"], strict=True,
        ):
            if index is None or (isinstance(index, float) and np.isnan(index)):
                raise ValueError(
                    f"{schema.name}: contract check {check!r} on {column!r} failed for the table "
                    "as a whole; the contract's checks must be row-wise"
                ) from errors
            if check in ("field_uniqueness", "multiple_fields_uniqueness"):
                rule = "duplicate_key"
                reason = f"duplicate of an earlier row with the same key ({', '.join(map(str, schema.unique or [column]))})"
            elif context == "Column":
                rule = f"{column}:{check}"
                reason = f"{column}={value} fails {check}"
            else:
                # pandera reports a failed DataFrame-wide check once per column of the failing
                # row, naming the check by its error text: it is one rule, under its own name.
                wide = next((c for c in schema.checks if check in (c.name, c.error)), None)
                rule = wide.name if wide is not None and wide.name else str(check)
                reason = (wide.error if wide is not None else None) or str(check)
            reasons[int(index)].append((rule, reason))
    return reasons


def validate_partitions(
    con: duckdb.DuckDBPyConnection,
    usecase: UseCase,
    spec: TableSpec,
    partitions: list[dt.date | None],
) -> dict[dt.date | None, PartitionStats]:
    """Validate the given partitions of ``raw.<table>`` and replace them downstream."""
    table = ident(spec.name)
    con.execute("create or replace temp table _validating (d date)")
    con.executemany("insert into _validating values (?)", [[p] for p in partitions])
    stats = {p: PartitionStats(spec.name, p) for p in partitions}
    _accept_null_spellings(con, spec)

    for (partition, present, columns, read_error, unparsed, lines, header_lines, continued, blank) in con.execute(
        "select partition_date, file_present, columns, read_error, lines_unparsed, lines, "
        "header_lines, continued_lines, blank_lines from raw._files f "
        "where table_name = ? and exists (select 1 from _validating v where f.partition_date is not distinct from v.d)",
        [spec.name],
    ).fetchall():
        s = stats[partition]
        header = json.loads(columns)
        s.file_present, s.read_error, s.unparsed = present, read_error, unparsed
        # A file loaded before the line accounting existed has no line counts (NULL).
        s.lines = -1 if lines is None else lines
        s.header_lines, s.continued_lines, s.blank_lines = header_lines or 0, continued or 0, blank or 0
        if present and not read_error:
            s.missing_columns = [c for c in spec.columns if c not in header]
            s.unexpected_columns = [c for c in header if c not in spec.schema.columns]

    profile = con.execute(_column_profile_sql(spec)).fetchdf()
    for record in profile.to_dict("records"):
        s = stats[record["_partition_date"].date() if spec.partitioned else None]
        present_columns = [c for c in spec.columns if c not in s.missing_columns]
        for column in present_columns:
            failed, nonempty = record[f"{column}__castfail"], record[f"{column}__nonempty"]
            if nonempty and failed / nonempty >= spec.gates.type_change_share:
                s.changed_types[column] = spec.duckdb_type(column)
            if record[f"{column}__empty"]:
                s.empty_strings[column] = int(record[f"{column}__empty"])
            s.unexplained_nulls[column] = int(record[f"{column}__nulls"])
        s.unexplained_nulls["__rows__"] = int(record["n"])

    frame = (
        con.sql(f"select {_select_typed(spec)} from {_landed(spec)} r order by _partition_date, _source_row")
        .to_arrow_table()
        .to_pandas(types_mapper=_ARROW_TO_PANDAS.get)
    )
    typed = frame[spec.columns]
    row_reasons: dict[int, list[tuple[str, str]]] = defaultdict(list)

    # File-level failures reject every row of their partition: a file without its
    # delay column must not pass as a day on which nobody reported delays.
    partition_keys = frame["_partition_date"] if spec.partitioned else pd.Series([None] * len(frame))
    for partition, s in stats.items():
        problems = [f"the file lacks column {c}" for c in s.missing_columns] + [
            f"column {c} arrived as text that is not {kind}" for c, kind in s.changed_types.items()
        ]
        if problems:
            hit = np.flatnonzero((partition_keys == partition).to_numpy()) if spec.partitioned else np.arange(len(frame))
            for index in hit:
                row_reasons[int(index)].append(("schema_mismatch", "; ".join(problems)))

    cell_issues = frame["_cell_issues"]
    for index in np.flatnonzero(cell_issues.map(len).to_numpy()):
        partition = partition_keys.iat[index]
        for issue in cell_issues.iat[index]:
            column, kind, *spelled = issue.split(":", 2)
            if kind == "null_spelling" and column in stats[partition].missing_columns:
                continue  # the whole column is missing: schema_mismatch says so once
            row_reasons[int(index)].append((f"{column}:{kind}", _issue_text(spec, column, kind, *spelled)))

    schema, checked = spec.schema, typed
    if spec.partitioned and schema.unique:
        # Keys are unique within a partition: validating a day alone or within a year
        # must reject the same rows.
        schema = copy.deepcopy(schema)
        schema.unique = [*schema.unique, "_partition_date"]
        checked = frame[[*spec.columns, "_partition_date"]]
    key_columns = [*(schema.unique or []), *(c for c, col in schema.columns.items() if col.unique)]
    for index, reasons in _failure_reasons(schema, checked).items():
        spelled = {rule for rule, _ in row_reasons[index] if rule.endswith(":null_spelling")}
        key_spelled = any(f"{c}:null_spelling" in spelled for c in key_columns)
        # A null spelling the contract refused already explains why the column is empty,
        # and why the row's key may look like another's.
        row_reasons[index].extend(
            (rule, text) for rule, text in reasons
            if rule.replace(":not_nullable", ":null_spelling") not in spelled
            and not (rule == "duplicate_key" and key_spelled)
        )

    if spec.partitioned and len(frame):
        row_day = pd.Series(usecase.row_date(spec.name, typed), index=typed.index)
        outside = (row_day != frame["_partition_date"]) & row_day.notna()
        for index in np.flatnonzero(outside.to_numpy()):
            row_reasons[int(index)].append(("row_outside_partition", f"row dated {row_day.iat[index]} arrived in the file for {frame['_partition_date'].iat[index]}"))

    rejected_index = np.array(sorted(row_reasons), dtype=np.int64)
    is_rejected = np.zeros(len(frame), dtype=bool)
    is_rejected[rejected_index] = True

    valid = frame.loc[~is_rejected, [*spec.columns, *VALIDATED_META]]

    rejected = frame.iloc[rejected_index]
    records = pd.DataFrame({
        "_partition_date": rejected["_partition_date"].to_numpy() if spec.partitioned else None,
        "_source_row": rejected["_source_row"].astype("int64").to_numpy(),
        "rules": [json.dumps(list(dict.fromkeys(r for r, _ in row_reasons[int(i)]))) for i in rejected_index],
        "reason": ["; ".join(dict.fromkeys(t for _, t in row_reasons[int(i)])) for i in rejected_index],
    })
    valid_by_partition = Counter(valid["_partition_date"] if spec.partitioned else [None] * len(valid))
    for partition, rules in zip(
        records["_partition_date"] if spec.partitioned else [None] * len(records), records["rules"], strict=True
    ):
        s = stats[partition]
        s.quarantined += 1
        for rule in json.loads(rules):
            s.rule_counts[rule] = s.rule_counts.get(rule, 0) + 1
    rows_by_partition = Counter(partition_keys if spec.partitioned else [None] * len(frame))
    for partition, s in stats.items():
        s.valid = valid_by_partition.get(partition, 0)
        s.landed = rows_by_partition.get(partition, 0) + s.unparsed
        if s.lines < 0:
            s.lines = s.header_lines + s.valid + s.quarantined + s.continued_lines + s.unparsed
        elif s.unaccounted_lines():
            raise RuntimeError(
                f"{spec.name} {partition}: {s.lines} lines in the file but {s.unaccounted_lines()} "
                f"of them in no count (header {s.header_lines}, valid {s.valid}, quarantined "
                f"{s.quarantined}, continued {s.continued_lines}, unparsed {s.unparsed})"
            )

    con.execute("begin transaction")
    try:
        match = "exists (select 1 from _validating v where t._partition_date is not distinct from v.d)"
        con.execute(f"delete from validated.{table} t where {match}")
        con.execute(f"delete from quarantine.{table} t where {match}")
        con.execute(
            "delete from audit.partition_stats t where table_name = ? and exists "
            "(select 1 from _validating v where t.partition_date is not distinct from v.d)",
            [spec.name],
        )
        if len(valid):
            con.register("valid_rows", pa_arrow.Table.from_pandas(valid, preserve_index=False))
            con.execute(f"insert into validated.{table} by name select * from valid_rows")
            con.unregister("valid_rows")
        if len(records):
            # The quarantined record is the row as it landed, extras included, so that
            # nothing the sender wrote is lost.
            record_json = "json_merge_patch(json_object(" + ", ".join(
                f"'{c}', r.{ident(c)}" for c in spec.columns
            ) + "), coalesce(r._extra, '{}'))"
            con.register("rejected_rows", pa_arrow.Table.from_pandas(records, preserve_index=False))
            con.execute(
                f"insert into quarantine.{table} select r._partition_date, r._source_file, "
                f"r._source_row, q.rules, q.reason, {record_json} from rejected_rows q "
                f"join raw.{table} r on r._source_row = q._source_row "
                "and r._partition_date is not distinct from q._partition_date"
            )
            con.unregister("rejected_rows")
        stat_rows = [s.row() for s in stats.values()]
        if stat_rows:
            con.executemany(
                f"insert into audit.partition_stats values ({', '.join('?' * len(stat_rows[0]))})",
                stat_rows,
            )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return stats


def rule_failures(spec: TableSpec, typed: pd.DataFrame) -> dict[int, list[tuple[str, str]]]:
    """Every rule of ``spec``'s contract that each row of ``typed`` breaks, by row position:
    (rule, reason) pairs, the ones a landed row is quarantined with. ``typed`` holds the
    contract's columns in its dtypes; rows that arrive one by one (events) are checked here."""
    return dict(_failure_reasons(spec.schema, typed.reset_index(drop=True)))
