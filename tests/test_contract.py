"""Parsing, the data contract and the gates, on small hand-made files.

A toy table of station readings stands in for a deployment's table: one file per day, a key,
a pattern, a range, a nullable number and a cross-field rule.
"""

import datetime as dt
import json

import pandas as pd
import pandera.pandas as pa
import pytest

from keel.data import gates
from keel.data.contract import PartitionStats, validate_partitions
from keel.data.ingest import load_partitions, parse_file
from keel.core.spec import FaultPlan, GateThresholds, NullSpellings, TableSpec, UseCase
from keel.core.warehouse import connect, ensure_tables

DAY = dt.date(2013, 3, 7)  # a Thursday
HEADER = "station,obs_date,low,high,count\n"

READINGS = pa.DataFrameSchema(
    {
        "station": pa.Column("string", pa.Check.str_matches(r"^[A-Z]{3}$")),
        "obs_date": pa.Column("string"),
        "low": pa.Column("Float64", nullable=True),
        "high": pa.Column("Float64", nullable=True),
        "count": pa.Column("Int64", pa.Check.in_range(0, 1000), nullable=True),
    },
    checks=[
        pa.Check(
            lambda df: ~(df["low"] > df["high"]).fillna(False),
            name="low_not_above_high",
            error="low must not exceed high",
        )
    ],
    unique=["station"],
    report_duplicates="exclude_first",
    name="readings",
)


def readings_spec(null_spellings: NullSpellings | None = None, **gate_settings) -> TableSpec:
    return TableSpec(
        name="readings",
        description="Daily readings per station.",
        schema=READINGS,
        key=("station",),
        partitioned=True,
        gates=GateThresholds(**gate_settings),
        null_spellings=null_spellings or NullSpellings(),
    )


SPEC = readings_spec()
TOY = UseCase(
    name="toy",
    tables=(SPEC,),
    start=dt.date(2013, 1, 1),
    end=dt.date(2013, 12, 31),
    timezone="UTC",
    source=lambda table: pd.DataFrame(),
    row_date=lambda table, df: pd.to_datetime(df["obs_date"], errors="coerce").dt.date,
    faults=FaultPlan("readings", ("low", "low_c"), "high", "count", "{} units", "low",
                     lambda df, rng: df),
)


@pytest.fixture
def landing(tmp_path):
    return tmp_path / "landing"


def land(landing, content: bytes, day: dt.date = DAY):
    path = landing / "readings" / f"{day.isoformat()}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def validate(tmp_path, landing, day: dt.date = DAY, spec: TableSpec = SPEC):
    """Load and validate the day; return its stats and the validated and quarantined rows."""
    parsed = parse_file(spec, landing, day)
    with connect(tmp_path / "warehouse.duckdb") as con:
        ensure_tables(con, [spec])
        load_partitions(con, spec, [parsed], landing, tmp_path / "rejected")
        stats = validate_partitions(con, TOY, spec, [day])[day]
        valid = con.execute(
            "select station, _source_row from validated.readings order by _source_row").fetchall()
        quarantined = con.execute(
            "select _source_row, rules, reason, record from quarantine.readings order by _source_row"
        ).fetchall()
    return stats, valid, [(row, json.loads(rules), reason, record) for row, rules, reason, record in quarantined]


# --- parsing -------------------------------------------------------------------------


def test_truncated_last_line_is_unparsed_with_a_truncation_reason(landing):
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"JFK","2013-03-07",1,2,3\n"LGA","2013-0').encode())
    parsed = parse_file(SPEC, landing, DAY)
    assert parsed.rows_parsed == 2
    assert parsed.rows.column("_source_row").to_pylist() == [2, 3]
    ((line_no, line, reason, blank),) = parsed.unparsed
    assert line_no == 4 and line == b'"LGA","2013-0' and not blank
    assert "truncated" in reason


def test_line_with_too_many_fields_is_unparsed_with_the_field_counts(landing):
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"JFK","2013-03-07",1,2,3,4\n"LGA","2013-03-07",1,2,3\n').encode())
    parsed = parse_file(SPEC, landing, DAY)
    assert parsed.rows.column("station").to_pylist() == ["EWR", "LGA"]
    assert parsed.rows.column("_source_row").to_pylist() == [2, 4]
    ((line_no, _, reason, _),) = parsed.unparsed
    assert line_no == 3
    assert reason == "expected 5 fields, found 6"


def test_invalid_utf8_line_is_unparsed_and_the_rest_kept(landing):
    body = HEADER.encode() + b'"EWR","2013-03-07",1,2,3\n"J\xff\xfeK","2013-03-07",1,2,3\n"LGA","2013-03-07",1,2,3\n'
    land(landing, body)
    parsed = parse_file(SPEC, landing, DAY)
    assert parsed.rows.column("station").to_pylist() == ["EWR", "LGA"]
    assert parsed.rows.column("_source_row").to_pylist() == [2, 4]
    ((line_no, line, reason, _),) = parsed.unparsed
    assert line_no == 3 and line == b'"J\xff\xfeK","2013-03-07",1,2,3'
    assert "not valid UTF-8" in reason
    assert parsed.read_error is None


def test_header_only_file_gives_zero_rows_and_nothing_unparsed(tmp_path, landing):
    land(landing, HEADER.encode())
    parsed = parse_file(SPEC, landing, DAY)
    assert parsed.present and parsed.read_error is None
    assert parsed.rows_parsed == 0 and parsed.unparsed == []
    stats, valid, quarantined = validate(tmp_path, landing)
    assert (stats.file_present, stats.landed, stats.valid, stats.quarantined) == (True, 0, 0, 0)
    assert valid == [] and quarantined == []


def test_empty_file_is_a_read_error_and_is_kept_byte_for_byte(tmp_path, landing):
    land(landing, b"")
    stats, _, _ = validate(tmp_path, landing)
    assert "empty" in stats.read_error
    result = gates.file_intact(stats, None)
    assert not result.passed and "cannot be read" in result.message
    assert [p.name for p in (tmp_path / "rejected" / "readings").iterdir()] == [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.csv"
    ]


def test_crlf_line_endings_parse_like_lf(tmp_path, landing):
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"JFK","2013-03-07",1,2,3\n').replace("\n", "\r\n").encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("EWR", 2), ("JFK", 3)] and quarantined == []
    assert stats.missing_columns == [] and stats.unexpected_columns == []


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path, landing):
    # Regression: the header kept the UTF-8 BOM ("\ufeffstation") while pyarrow dropped it,
    # and parse_file crashed with a KeyError instead of loading the file.
    land(landing, b"\xef\xbb\xbf" + (HEADER + '"EWR","2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("EWR", 2)] and quarantined == []
    assert stats.unexpected_columns == []


def test_a_quoted_value_with_a_newline_loses_no_line(tmp_path, landing):
    # Regression: the load crashed when a quoted value held a line break (records != lines).
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"J\nFK","2013-03-07",1,2,3\n"LGA","2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert ("EWR", 2) in valid and ("LGA", 5) in valid
    assert [row for row, *_ in quarantined] == [3], "the two-line record keeps its first line"
    assert stats.landed == stats.valid + stats.quarantined == 3


def test_an_unclosed_quote_at_the_end_of_the_file_is_unparsed_not_swallowed(tmp_path, landing):
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"JFK,"2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("EWR", 2)] and quarantined == []
    assert (stats.lines, stats.header_lines, stats.unparsed) == (3, 1, 1)
    ((line_no, line, reason, _),) = parse_file(SPEC, landing, DAY).unparsed
    assert line_no == 3 and line == b'"JFK,"2013-03-07",1,2,3' and "never closed" in reason
    assert not gates.file_intact(stats, reason).passed


def test_a_blank_line_is_kept_aside_and_the_rest_of_the_file_loads(tmp_path, landing):
    # Regression: a blank line made parse_file count a record that pyarrow skipped, and
    # pa.table raised "ArrowInvalid: _source_row expected length 2 but got length 3".
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n\n"JFK","2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("EWR", 2), ("JFK", 4)] and quarantined == []
    assert (stats.lines, stats.unparsed, stats.blank_lines) == (4, 1, 1)
    result = gates.file_intact(stats, None)
    assert result.passed and "1 blank line" in result.message


def test_a_stray_quote_costs_its_own_line_only(tmp_path, landing):
    # Regression: a stray quote swallowed every later line into one unparsed "record", so
    # three lines counted as one and the rows after it were lost.
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"JFK,"2013-03-07",1,2,3\n'
                   '"LGA","2013-03-07",1,2,3\n"BOS","2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("EWR", 2), ("LGA", 4), ("BOS", 5)] and quarantined == []
    (unparsed,) = parse_file(SPEC, landing, DAY).unparsed
    assert (unparsed.number, unparsed.raw) == (3, b'"JFK,"2013-03-07",1,2,3')
    assert "stray quote" in unparsed.reason
    assert (stats.lines, stats.valid, stats.unparsed) == (5, 3, 1)


# --- the contract --------------------------------------------------------------------


NULL_LOOKALIKES = (
    HEADER
    + '"EWR","2013-03-07",NA,2,3\n'
    + '"JFK","2013-03-07",1,null,3\n'
    + '"LGA","2013-03-07",1,2,N/A\n'
    + '"BOS","2013-03-07",NaN,2,3\n'
    + '"SFO","2013-03-07",1,2,\n'
)


def test_null_lookalikes_are_quarantined_under_the_rule_they_broke(tmp_path, landing):
    # Regression: pyarrow's default null strings turned NA, null, N/A and NaN into nulls
    # behind the contract's back, and these rows were valid.
    land(landing, NULL_LOOKALIKES.encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("SFO", 6)], "an empty numeric field is the default null spelling"
    assert {row: rules for row, rules, _, _ in quarantined} == {
        2: ["low:null_spelling"], 3: ["high:null_spelling"], 4: ["count:null_spelling"],
        5: ["low:null_spelling"],
    }
    reasons = {row: reason for row, _, reason, _ in quarantined}
    assert reasons[2] == "low is 'NA', which its contract does not read as null (its null is written only as an empty field)"
    assert [json.loads(record)["high"] for row, _, _, record in quarantined if row == 3] == ["null"]
    assert stats.rule_counts == {"low:null_spelling": 2, "high:null_spelling": 1, "count:null_spelling": 1}


def test_a_table_can_accept_its_own_null_spellings_per_column(tmp_path, landing):
    spec = readings_spec(NullSpellings(columns={"low": ("NA", ""), "count": ("N/A",)}))
    land(landing, NULL_LOOKALIKES.replace('"BOS","2013-03-07",NaN', '"BOS","2013-03-07",na').encode())
    stats, valid, quarantined = validate(tmp_path, landing, spec=spec)
    assert valid == [("EWR", 2), ("LGA", 4)]
    assert {row: rules for row, rules, _, _ in quarantined} == {
        3: ["high:null_spelling"],
        5: ["low:null_spelling"],  # spellings match exactly: "na" is not "NA"
        6: ["count:null_spelling"],  # count accepts "N/A" only, not an empty field
    }
    assert stats.unexplained_nulls["low"] == 1 and stats.unexplained_nulls["count"] == 1


def test_a_text_column_has_no_null_spelling_by_default(tmp_path, landing):
    land(landing, (HEADER + ',"2013-03-07",1,2,3\n"NULL","2013-03-07",1,2,3\n"N/A","2013-03-07",1,2,3\n'
                   '"JFK","2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("JFK", 5)]
    assert {row: rules for row, rules, _, _ in quarantined} == {
        2: ["station:null_spelling"], 3: ["station:null_spelling"], 4: ["station:null_spelling"],
    }, "a refused null spelling is reported once, not also as a missing value"
    reasons = {row: reason for row, _, reason, _ in quarantined}
    assert reasons[2] == "station is an empty field, which its contract does not read as null (it has no null spelling)"



def test_empty_string_in_a_numeric_column_is_rejected_not_a_null(tmp_path, landing):
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,""\n"JFK","2013-03-07",1,2,\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)

    assert valid == [("JFK", 3)], "an unquoted empty field is a null, which count allows"
    ((row, rules, reason, record),) = quarantined
    assert row == 2
    assert rules == ["count:empty_string"]
    assert "count is an empty string" in reason
    assert json.loads(record)["count"] == ""
    assert stats.empty_strings == {"count": 1}
    assert stats.unexplained_nulls["count"] == 1, "only JFK's real null counts as a null"
    assert not gates.no_empty_strings(stats).passed


def test_duplicated_key_keeps_the_first_row_and_quarantines_the_second(tmp_path, landing):
    land(landing, (HEADER + '"EWR","2013-03-07",1,2,3\n"JFK","2013-03-07",1,2,3\n"EWR","2013-03-07",5,6,7\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("EWR", 2), ("JFK", 3)]
    ((row, rules, reason, record),) = quarantined
    assert row == 4 and rules == ["duplicate_key"]
    assert "duplicate" in reason and "station" in reason
    assert json.loads(record)["count"] == "7"
    assert stats.rule_counts == {"duplicate_key": 1}
    assert (stats.landed, stats.valid, stats.quarantined) == (3, 2, 1)


def test_failed_cross_field_rule_is_one_rule_under_its_name(tmp_path, landing):
    # Regression: a DataFrame-wide check was recorded once per column ("station:low must not
    # exceed high", "count:low must not exceed high", ...) instead of once under its name.
    land(landing, (HEADER + '"EWR","2013-03-07",9,2,3\n"JFK","2013-03-07",1,2,3\n').encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("JFK", 3)]
    ((row, rules, reason, _),) = quarantined
    assert row == 2
    assert rules == ["low_not_above_high"]
    assert reason == "low must not exceed high"
    assert stats.rule_counts == {"low_not_above_high": 1}


def test_every_broken_rule_of_a_row_is_recorded_and_nothing_is_lost(tmp_path, landing):
    land(landing, (
        HEADER
        + '"ewr","2013-03-07",1,2,3000\n'  # bad pattern and out of range
        + '"JFK","2013-03-07",x,2,3\n'  # low is not a number
        + '"LGA","2013-03-08",1,2,3\n'  # dated the next day
        + '"BOS","2013-03-07",1,2,3,4\n'  # one field too many
        + '"SFO","2013-03-07",1,2,3\n'
    ).encode())
    stats, valid, quarantined = validate(tmp_path, landing)
    assert valid == [("SFO", 6)]
    rules = {row: set(r) for row, r, _, _ in quarantined}
    assert rules == {
        2: {"station:str_matches('^[A-Z]{3}$')", "count:in_range(0, 1000)"},
        3: {"low:type"},
        4: {"row_outside_partition"},
    }
    assert all(reason for _, _, reason, _ in quarantined)
    assert (stats.landed, stats.valid, stats.quarantined, stats.unparsed) == (5, 1, 3, 1)
    assert (stats.lines, stats.header_lines) == (6, 1) and stats.unaccounted_lines() == 0


# --- the gates -----------------------------------------------------------------------


def day_stats(day: dt.date, landed: int, **fields) -> PartitionStats:
    return PartitionStats("readings", day, file_present=True, landed=landed, valid=landed, **fields)


def thursdays_before(day: dt.date, weeks: int) -> list[dt.date]:
    return [day - dt.timedelta(weeks=w) for w in range(weeks, 0, -1)]


@pytest.mark.parametrize(
    ("landed", "passes"),
    [(1000, True), (650, True), (500, True), (499, False), (50, False), (2000, True), (2001, False)],
    ids=["usual", "thanksgiving-dip-35pct", "at-min-ratio", "below-min-ratio", "drop-95pct",
         "at-max-ratio", "above-max-ratio"],
)
def test_volume_within_baseline_compares_to_the_same_weekday_median(landed, passes):
    history = [day_stats(d, 1000) for d in thursdays_before(DAY, 4)]
    # Other weekdays are quieter; they must not drag the Thursday baseline down.
    history += [day_stats(DAY - dt.timedelta(days=k), 300) for k in (1, 2, 3)]
    result = gates.volume_within_baseline(day_stats(DAY, landed), SPEC, history)
    assert result.passed is passes
    assert result.metadata["baseline_basis"] == "same weekday"
    assert result.metadata["baseline_median"] == 1000
    assert f"{landed} rows landed" in result.message


def test_volume_within_baseline_learns_before_it_has_history():
    history = [day_stats(DAY - dt.timedelta(days=1), 1000), day_stats(DAY - dt.timedelta(days=2), 1000)]
    result = gates.volume_within_baseline(day_stats(DAY, 1), SPEC, history)
    assert result.passed and "learning the baseline" in result.message


def nulls(rows: int, **by_column) -> dict[str, int]:
    return {"__rows__": rows, "low": 0, "high": 0, "count": 0, **by_column}


@pytest.mark.parametrize(
    ("today", "failing"),
    [
        (nulls(100, low=90), []),  # low is not gated at all
        (nulls(100, high=55), []),  # within high's own tolerance of 60 points
        (nulls(100, high=65), ["high"]),
        (nulls(100, count=19), []),  # the default tolerance is 20 points
        (nulls(100, count=25), ["count"]),
        (nulls(100, low=90, high=65, count=25), ["high", "count"]),
    ],
    ids=["not-gated", "own-tolerance-ok", "own-tolerance-exceeded", "default-ok", "default-exceeded", "both"],
)
def test_null_rates_within_baseline_honours_overrides(today, failing):
    spec = readings_spec(null_rate_overrides={"low": None, "high": 0.6})
    history = [day_stats(DAY - dt.timedelta(days=k), 100, unexplained_nulls=nulls(100)) for k in (1, 2, 3)]
    result = gates.null_rates_within_baseline(
        day_stats(DAY, 100, unexplained_nulls=today), spec, history
    )
    assert result.passed is (not failing)
    assert "low" not in result.metadata["columns"]
    assert result.metadata["columns"]["high"]["tolerance"] == 0.6
    assert result.metadata["columns"]["count"]["tolerance"] == 0.2
    for column in ("high", "count"):
        assert (f"{column} " in result.message) is (column in failing)


def test_an_unreadable_file_fails_file_intact_and_skips_the_gates_that_need_rows():
    stats = PartitionStats("readings", DAY, file_present=True, read_error="the header line cannot be read")
    results = gates.evaluate(SPEC, stats, [], [], None)
    assert [r.name for r in results] == list(gates.DAILY_GATES)
    assert [r.name for r in results if not r.passed] == ["file_intact"]
    assert all(r.metadata == {"evaluated": False} for r in results[2:])


def test_a_missing_day_fails_landed_on_time_naming_the_later_days():
    stats = PartitionStats("readings", DAY)
    results = gates.evaluate(SPEC, stats, [], [DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)], None)
    assert [r.name for r in results if not r.passed] == ["landed_on_time"]
    assert "has not landed" in results[0].message and "2013-03-09" in results[0].message
