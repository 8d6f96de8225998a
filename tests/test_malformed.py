"""A corpus of malformed landing files: no crash, the verdict a person expects, no line lost.

Each file is a real day of flights (its header and first six rows) broken one way. Every
file goes through the parser, the load and the contract; a representative subset also goes
through the real ingestion assets and gates with ``dg.materialize``. Lines are counted from
the bytes (``file_lines``), never by the parser under test, and every file must satisfy
lines = header + valid + quarantined + continued + unparsed.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import re
from dataclasses import dataclass, field

import dagster as dg
import pytest
from conftest import USECASE, file_lines

from assets.ingestion import raw_assets, raw_key
from assets.validation import gate_checks, validated_key, validation_assets
from keel.app.pipeline import run_pipeline
from keel.app.status import collect
from keel.core.warehouse import connect, ensure_tables
from keel.data.contract import validate_partitions
from keel.data.ingest import MAX_LINE_BYTES, load_partitions, parse_file
from keel.data.landing import file_for
from resources.keel_state import KeelState

DAY = dt.date(2013, 3, 5)
SPEC = USECASE.table("flights")


@dataclass
class Verdict:
    valid: int
    quarantined: int = 0
    unparsed: int = 0
    blank: int = 0
    continued: int = 0
    header: int = 1
    rejected: str | None = None  # words of the reason the whole file is rejected
    reasons: dict[int, str] = field(default_factory=dict)  # line -> words of its unparsed reason
    rules: dict[int, str] = field(default_factory=dict)  # line -> a rule its row broke

    @property
    def lines(self) -> int:
        return self.header + self.valid + self.quarantined + self.continued + self.unparsed


def rejected(reason: str, lines: int) -> Verdict:
    return Verdict(valid=0, unparsed=lines, header=0, rejected=reason)


@pytest.fixture(scope="module")
def clean_day(replayed_template) -> tuple[bytes, list[bytes]]:
    """The header and the first six rows of a real day, as upstream sent them."""
    lines = file_for(replayed_template / "landing", SPEC, DAY).read_bytes().split(b"\n")
    return lines[0], lines[1:7]


def lf(header: bytes, rows: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in [header, *rows])


def fields(line: bytes) -> list[bytes]:
    return line.split(b",")  # the clean rows hold no comma inside a value


def column(name: str) -> int:
    return SPEC.columns.index(name)


def set_field(row: bytes, name: str, value: bytes) -> bytes:
    values = fields(row)
    values[column(name)] = value
    return b",".join(values)


def unclose(row: bytes, name: str = "carrier") -> bytes:
    """The row with the closing quote of one text value dropped: one stray quote."""
    return set_field(row, name, fields(row)[column(name)][:-1])


def reorder(line: bytes) -> bytes:
    return b",".join(reversed(fields(line)))


# name -> (builder of the file from the clean header and rows, the expected verdict)
CORPUS = {
    "clean": (lf, Verdict(6)),
    "utf8_byte_order_mark": (lambda h, r: b"\xef\xbb\xbf" + lf(h, r), Verdict(6)),
    "crlf_line_endings": (lambda h, r: lf(h, r).replace(b"\n", b"\r\n"), Verdict(6)),
    "cr_line_endings": (lambda h, r: lf(h, r).replace(b"\n", b"\r"), Verdict(6)),
    "blank_line": (lambda h, r: lf(h, [*r[:2], b"", *r[2:]]),
                   Verdict(6, unparsed=1, blank=1, reasons={4: "blank line"})),
    "trailing_blank_lines": (lambda h, r: lf(h, r) + b"\n\n",
                             Verdict(6, unparsed=2, blank=2, reasons={8: "blank", 9: "blank"})),
    "leading_blank_line": (lambda h, r: b"\n" + lf(h, r), Verdict(6, unparsed=1, blank=1, reasons={1: "blank"})),
    "whitespace_only_line": (lambda h, r: lf(h, [r[0], b" \t ", *r[1:]]),
                             Verdict(6, unparsed=1, blank=1, reasons={3: "only whitespace"})),
    "latin1_row": (lambda h, r: lf(h, [*r[:2], r[2].replace(b'"IAH"', b'"Montr\xe9al"'), *r[3:]]),
                   Verdict(5, unparsed=1, reasons={4: "not valid UTF-8"})),
    "utf16_with_byte_order_mark": (lambda h, r: lf(h, r).decode().encode("utf-16"),
                                   rejected("UTF-16", 8)),  # the last 0x00 ends no line
    "utf16_without_byte_order_mark": (lambda h, r: lf(h, r).decode().encode("utf-16-le"),
                                      rejected("NUL bytes", 8)),
    "stray_quote": (lambda h, r: lf(h, [*r[:2], unclose(r[2]), *r[3:]]),
                    Verdict(5, unparsed=1, reasons={4: "stray quote"})),
    "two_stray_quotes": (
        lambda h, r: lf(h, [r[0], unclose(r[1]), unclose(r[2], "origin"), *r[3:]]),
        Verdict(4, unparsed=2, reasons={3: "stray quote", 4: "stray quote"}),
    ),
    "unclosed_quote_on_the_last_line": (lambda h, r: lf(h, [*r[:5], unclose(r[5])]),
                                        Verdict(5, unparsed=1, reasons={7: "never closed"})),
    "newline_inside_a_quoted_value": (
        lambda h, r: lf(h, [set_field(r[0], "tailnum", b'"N563\nUW"'), *r[1:]]),
        Verdict(5, quarantined=1, continued=1, rules={2: "tailnum:str_matches"}),
    ),
    "one_field_too_many": (lambda h, r: lf(h, [r[0], r[1] + b",1", *r[2:]]),
                           Verdict(5, unparsed=1, reasons={3: "expected 19 fields, found 20"})),
    "one_field_too_few": (lambda h, r: lf(h, [*r[:2], b",".join(fields(r[2])[:-1]), *r[3:]]),
                          Verdict(5, unparsed=1, reasons={4: "expected 19 fields, found 18"})),
    "semicolon_separated": (lambda h, r: lf(h, r).replace(b",", b";"), rejected("semicolons", 7)),
    "tab_separated": (lambda h, r: lf(h, r).replace(b",", b"\t"), rejected("tabs", 7)),
    "header_only": (lambda h, r: lf(h, []), Verdict(0)),
    "zero_bytes": (lambda h, r: b"", Verdict(0, header=0, rejected="empty")),
    "only_blank_lines": (lambda h, r: b"\n\n\n", rejected("only blank lines", 3)),
    "header_repeated_mid_file": (lambda h, r: lf(h, [*r[:3], h, *r[3:]]),
                                 Verdict(6, unparsed=1, reasons={5: "header line again"})),
    "columns_reordered": (lambda h, r: lf(reorder(h), [reorder(row) for row in r]), Verdict(6)),
    "column_added": (lambda h, r: lf(h + b',"gate"', [row + b',"B12"' for row in r]), Verdict(6)),
    "column_renamed": (lambda h, r: lf(h.replace(b'"dep_delay"', b'"dep_delay_minutes"'), r),
                       Verdict(0, quarantined=6, rules={n: "schema_mismatch" for n in range(2, 8)})),
    "column_duplicated": (lambda h, r: lf(h.replace(b'"arr_delay"', b'"dep_delay"'), r),
                          rejected("repeats column name(s) dep_delay", 7)),
    "no_header_line": (lambda h, r: lf(r[0], r[1:]), rejected("names none of the contract's columns", 6)),
    "very_long_line": (lambda h, r: lf(h, [*r[:2], b"x" * (2 * MAX_LINE_BYTES), *r[3:]]),
                       Verdict(5, unparsed=1, reasons={4: "over the 1,048,576-byte limit"})),
    "long_value_in_an_extra_column": (
        lambda h, r: lf(h + b',"remarks"', [row + b',"' + b"y" * 300_000 + b'"' for row in r]), Verdict(6)
    ),
    "truncated_last_line": (lambda h, r: lf(h, r)[:-20], Verdict(5, unparsed=1, reasons={7: "truncated"})),
    "nul_byte_in_one_line": (lambda h, r: lf(h, [r[0], r[1].replace(b"EWR", b"E\x00R"), *r[2:]]),
                             Verdict(5, unparsed=1, reasons={3: "NUL bytes"})),
    "gzip_compressed": (lambda h, r: gzip.compress(lf(h, r), mtime=0), None),
    "binary": (lambda h, r: bytes(range(256)) * 64, None),
    "null_lookalikes": (
        lambda h, r: lf(h, [
            set_field(r[0], "dep_delay", b"NA"),
            set_field(r[1], "arr_delay", b"null"),
            set_field(r[2], "tailnum", b'"N/A"'),
            set_field(r[3], "air_time", b"NaN"),
            *r[4:],
        ]),
        Verdict(2, quarantined=4, rules={
            2: "dep_delay:null_spelling", 3: "arr_delay:null_spelling",
            4: "tailnum:null_spelling", 5: "air_time:null_spelling",
        }),
    ),
    "quoted_empty_string": (lambda h, r: lf(h, [set_field(r[0], "tailnum", b'""'), *r[1:]]),
                            Verdict(5, quarantined=1, rules={2: "tailnum:empty_string"})),
}


def build(name: str, clean_day) -> tuple[bytes, Verdict]:
    builder, verdict = CORPUS[name]
    content = builder(*clean_day)
    if verdict is None:  # a binary file: every line it happens to have is rejected
        verdict = rejected("not", file_lines(content))
    return content, verdict


def test_file_lines_counts_every_kind_of_line_ending():
    # Regression: the helper that counted a file's lines split on b"\n" as the parser did, so
    # a file with CR endings counted as one line and the accounting tests could not see it.
    assert file_lines(b"") == 0
    assert file_lines(b"a\n") == 1
    assert file_lines(b"a\r\nb\rc\nd") == 4
    assert file_lines(b"a\r\r\n") == 2
    assert file_lines(b"\n\n") == 2


def test_every_verdict_adds_up_to_the_lines_of_its_file(clean_day):
    for name in CORPUS:
        content, verdict = build(name, clean_day)
        assert verdict.lines == file_lines(content), name


def land(landing, content: bytes) -> None:
    path = file_for(landing, SPEC, DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def physical_lines(content: bytes) -> list[bytes]:
    return content.splitlines()


def assert_unparsed_lines_kept(con, content: bytes, verdict: Verdict) -> None:
    """Each unparsed line is stored with its own bytes and a reason; the reasons are as expected."""
    stored = con.execute(
        "select _source_row, line_bytes, error, blank from quarantine._unparsed where table_name = 'flights' "
        "order by _source_row"
    ).fetchall()
    assert len(stored) == verdict.unparsed
    lines = physical_lines(content)
    for number, raw, reason, blank in stored:
        assert bytes(raw) == lines[number - 1], number
        assert reason
        if verdict.rejected:
            assert verdict.rejected in reason
        assert blank is (verdict.reasons.get(number, "").startswith(("blank", "only whitespace")))
    by_line = {number: reason for number, _, reason, _ in stored}
    for number, words in verdict.reasons.items():
        assert words in by_line[number], (number, by_line.get(number))


@pytest.mark.parametrize("name", list(CORPUS))
def test_malformed_file_gets_its_verdict_and_loses_no_line(name, clean_day, tmp_path):
    content, verdict = build(name, clean_day)
    landing = tmp_path / "landing"
    land(landing, content)

    parsed = parse_file(SPEC, landing, DAY)
    with connect(tmp_path / "warehouse.duckdb") as con:
        ensure_tables(con, [SPEC])
        load_partitions(con, SPEC, [parsed], landing, tmp_path / "rejected")
        stats = validate_partitions(con, USECASE, SPEC, [DAY])[DAY]
        valid_rows = [r for (r,) in con.execute("select _source_row from validated.flights").fetchall()]
        quarantined = dict(con.execute("select _source_row, rules from quarantine.flights").fetchall())
        assert_unparsed_lines_kept(con, content, verdict)
        extras = [json.loads(e) for (e,) in con.execute(
            "select _extra from raw.flights where _extra is not null order by _source_row").fetchall()]

    counts = (stats.lines, stats.header_lines, stats.valid, stats.quarantined, stats.continued_lines,
              stats.unparsed, stats.blank_lines)
    assert counts == (file_lines(content), verdict.header, verdict.valid, verdict.quarantined,
                      verdict.continued, verdict.unparsed, verdict.blank)
    assert stats.unaccounted_lines() == 0
    # Each line is in one place only: rows and unparsed lines never share a line number.
    numbers = [*valid_rows, *quarantined, *verdict.reasons]
    assert len(set(numbers)) == len(numbers)
    for number, rule in verdict.rules.items():
        assert any(r.startswith(rule) for r in json.loads(quarantined[number])), (number, quarantined[number])
    if verdict.rejected:
        assert verdict.rejected in stats.read_error
        if content:
            kept = (tmp_path / "rejected" / "flights").iterdir()
            assert [p.read_bytes() for p in kept] == [content], "the rejected file is kept byte for byte"
    else:
        assert stats.read_error is None
    if name == "column_added":
        assert extras == [{"gate": "B12"}] * 6, "a column outside the contract is kept in _extra"
    if name == "long_value_in_an_extra_column":
        assert [e["remarks"] for e in extras] == ["y" * 300_000] * 6


# Through Dagster: the real raw and validated assets and the real gates, on one day.
THROUGH_DAGSTER = {
    "clean": "passed",
    "blank_line": "passed",
    "stray_quote": "failed",
    "null_lookalikes": "passed",
    "utf16_with_byte_order_mark": "failed",
    "column_renamed": "passed",
    "newline_inside_a_quoted_value": "passed",
    "zero_bytes": "failed",
}


def flights_assets():
    raw = next(a for a in raw_assets if raw_key("flights") in a.keys)
    validate = next(a for a in validation_assets if validated_key("flights") in a.keys)
    gates = next(c for c in gate_checks if any(k.asset_key == validated_key("flights") for k in c.check_keys))
    return [raw, validate, gates]


@pytest.mark.parametrize("name", list(THROUGH_DAGSTER))
def test_malformed_file_through_the_ingestion_assets(name, clean_day, replayed_home):
    # Regression (blank_line): a blank line crashed raw/flights with "ArrowInvalid:
    # _source_row expected length N but got length N+1", and the day never loaded.
    content, verdict = build(name, clean_day)
    land(replayed_home.landing, content)

    result = dg.materialize(
        flights_assets(), partition_key=DAY.isoformat(), resources={"keel": KeelState()},
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )

    steps_failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert steps_failed in ([], ["flights_gates"]), steps_failed  # only a gate may fail the run
    by_key = {m.asset_key: m.materialization.metadata for m in result.get_asset_materialization_events()}
    raw = by_key[raw_key("flights")]
    assert raw["lines"].value == file_lines(content)
    assert (raw["header_lines"].value + raw["rows_parsed"].value + raw["continued_lines"].value
            + raw["lines_unparsed"].value) == file_lines(content)
    meta = by_key[validated_key("flights")]
    assert (meta["rows_valid"].value, meta["rows_quarantined"].value, meta["lines_unparsed"].value) == (
        verdict.valid, verdict.quarantined, verdict.unparsed)
    assert meta["lines"].value == file_lines(content)
    intact = next(e for e in result.get_asset_check_evaluations() if e.check_name == "file_intact")
    assert ("passed" if intact.passed else "failed") == THROUGH_DAGSTER[name], intact.description
    if verdict.rejected:
        assert verdict.rejected in intact.description


@pytest.mark.slow
def test_keel_run_loads_a_day_with_a_blank_line_and_reports_its_table(replayed_home):
    # Regression: one blank line in one flights file crashed its ingestion, every day of the
    # range was held back for flights, keel run exited 2 and its summary left flights out.
    day = dt.date(2013, 3, 2)
    path = file_for(replayed_home.landing, SPEC, day)
    lines = path.read_bytes().split(b"\n")
    content = b"\n".join([*lines[:3], b"", *lines[3:]])
    path.write_bytes(content)

    out = io.StringIO()
    assert run_pipeline(dt.date(2013, 3, 1), dt.date(2013, 3, 4), out=out) == 0, out.getvalue()

    assert re.search(r"^ +flights +4 days +landed .* unparsed lines 1$", out.getvalue(), re.M), out.getvalue()
    counts = collect(replayed_home.warehouse)["tables"]["flights"][day.isoformat()]
    assert counts["lines"] == file_lines(content)
    assert (counts["unparsed"], counts["quarantined"]) == (1, 0)
    assert counts["valid"] == file_lines(content) - 2, "every line but the header and the blank one"
