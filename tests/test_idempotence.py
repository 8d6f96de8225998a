"""Running Keel again changes nothing; a failed load leaves the previous load in place."""

import datetime as dt
import hashlib
import io

import pyarrow
import pytest
from conftest import USECASE, data_lines

from keel.app.pipeline import run_pipeline
from keel.data.ingest import load_partitions, parse_file
from keel.data.replay import replay
from keel.app.status import collect
from keel.core.warehouse import connect

START, END = dt.date(2013, 3, 1), dt.date(2013, 3, 4)
TABLES = [f"{schema}.{t.name}" for schema in ("raw", "validated", "quarantine") for t in USECASE.tables]
TABLES += ["raw._unparsed", "audit.partition_stats"]


def contents(pipeline) -> dict[str, tuple[int, str]]:
    """Row count and a digest of the ordered rows of every table the pipeline writes."""
    out = {}
    for table in TABLES:
        rows = pipeline.query(f"select * from {table} order by all")
        out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


def test_running_the_pipeline_twice_gives_identical_tables_and_counts(replayed_home, pipeline):
    day = dt.date(2013, 3, 3)
    replay(USECASE, replayed_home.landing, day, day, fault="truncated_file", fault_date=day)

    first_out, second_out = io.StringIO(), io.StringIO()
    first_rc = run_pipeline(START, END, out=first_out)
    first = contents(pipeline)
    first_status = collect(replayed_home.warehouse)
    second_rc = run_pipeline(START, END, out=second_out)

    assert first_rc == second_rc == 1, "the truncated file blocks its day both times"
    assert "BLOCKED validated/flights 2013-03-03 file_intact" in second_out.getvalue()
    assert contents(pipeline) == first
    second_status = collect(replayed_home.warehouse)
    assert second_status["tables"] == first_status["tables"]
    # Verdicts are identical; a message may cite history (the second load of a snapshot is
    # compared with the first, which set the baseline).
    def verdicts(status):
        return [{k: c[k] for k in ("asset", "partition", "name", "passed", "blocking")} for c in status["checks"]]

    assert verdicts(second_status) == verdicts(first_status)
    assert all(n > 0 for table, (n, _) in first.items() if not table.startswith("quarantine.")), first
    # The cut-off last line is kept once, as an unparsed line; no row broke the contract.
    assert first["quarantine.flights"][0] == 0 and first["raw._unparsed"][0] == 1
    landed = sum(p["landed"] for p in first_status["tables"]["flights"].values())
    assert landed == sum(
        data_lines(pipeline.landing_file("flights", START + dt.timedelta(days=i))) for i in range(4)
    )


def test_reingesting_a_partition_does_not_duplicate_rows(replayed_home, pipeline):
    day = dt.date(2013, 3, 2)
    replay(USECASE, replayed_home.landing, day, day, fault="truncated_file", fault_date=day)
    pipeline.ingest_days(START, END)
    before = contents(pipeline)
    before_files = pipeline.query("select table_name, partition_date, sha256 from raw._files order by all")

    pipeline.ingest_day(day)

    assert contents(pipeline) == before
    assert pipeline.query("select table_name, partition_date, sha256 from raw._files order by all") == before_files
    assert len(before_files) == 2 * 4, "one row per daily table and day"
    (raw_rows,) = pipeline.query("select count(*) from raw.flights where _partition_date = ?", [day])[0]
    (unparsed,) = pipeline.query("select count(*) from raw._unparsed where _partition_date = ?", [day])[0]
    assert raw_rows + unparsed == data_lines(pipeline.landing_file("flights", day))
    assert unparsed == 1


def test_a_load_that_fails_midway_leaves_the_previous_partition_intact(replayed_home, pipeline, monkeypatch):
    day = dt.date(2013, 3, 2)
    pipeline.ingest_days(START, END)
    before = contents(pipeline)
    before_files = pipeline.query("select * from raw._files order by all")
    (loaded,) = pipeline.query("select count(*) from raw.flights where _partition_date = ?", [day])[0]

    # Upstream resends the day (a different file), and the load dies after its deletes.
    replay(USECASE, replayed_home.landing, day, day, fault="duplicate_rows", fault_date=day)
    spec = USECASE.table("flights")
    parsed = parse_file(spec, replayed_home.landing, day)
    assert parsed.rows_parsed > loaded > 0, "the resent file holds more rows than the loaded one"

    def out_of_memory(*args, **kwargs):
        raise MemoryError("simulated crash while loading")

    monkeypatch.setattr(pyarrow, "concat_tables", out_of_memory)
    with connect(replayed_home.warehouse) as con, pytest.raises(MemoryError):
        load_partitions(con, spec, [parsed], replayed_home.landing, replayed_home.rejected_files)

    assert contents(pipeline) == before
    assert pipeline.query("select * from raw._files order by all") == before_files
    monkeypatch.undo()
    with connect(replayed_home.warehouse) as con:
        load_partitions(con, spec, [parsed], replayed_home.landing, replayed_home.rejected_files)
    (reloaded,) = pipeline.query("select count(*) from raw.flights where _partition_date = ?", [day])[0]
    assert reloaded == parsed.rows_parsed == data_lines(pipeline.landing_file("flights", day))
