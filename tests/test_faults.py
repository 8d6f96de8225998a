"""Every upstream fault ``keel replay`` can play is stopped by its gate, on its day only.

Each case replays twelve days of March 2013 with one fault on 2013-03-10, ingests the whole
range in one run (as the landing sensor does), and reads back what a person would look at:
the run's check evaluations, ``audit.gate_status`` and the row counts.
"""

import datetime as dt
import json

import dagster as dg
import pytest
from conftest import DAYS, FAULT_DAY, FIRST_DAY, LAST_DAY, RANGE_END, RANGE_START, USECASE, data_lines

from assets.ingestion import raw_assets
from assets.partitions import daily_partitions
from assets.validation import gate_checks, validation_assets
from keel.data.gates import DAILY_GATES, SNAPSHOT_GATES
from keel.data.replay import FAULT_KINDS, replay
from resources.keel_state import KeelState

FAULT_TABLE = USECASE.fault_plans[0].table

# The gates that fail on the fault day, the first one being the gate named for the fault;
# the others are the consequences a person also sees (a file without a contract column
# rejects every row, so its quarantine rate fails too).
FAILED_GATES = {
    "empty_strings": ["no_empty_strings"],
    "renamed_column": ["schema_conforms", "quarantine_rate"],
    "missing_column": ["schema_conforms", "quarantine_rate"],
    "numeric_as_text": ["schema_conforms", "quarantine_rate"],
    "volume_drop": ["volume_within_baseline"],
    "duplicate_rows": ["quarantine_rate"],
    "out_of_range": ["quarantine_rate"],
    "null_spike": ["null_rates_within_baseline"],
    "truncated_file": ["file_intact"],
    "corrupt_file": ["file_intact"],
    "late_day": ["landed_on_time"],
}

# Words the named gate's message must hold for a person to see what went wrong.
MESSAGE_WORDS = {
    "empty_strings": ['empty strings ("")', "arr_delay", "tailnum"],
    "renamed_column": ["dep_delay is missing", "dep_delay_minutes", "renamed"],
    "missing_column": ["arr_delay is missing"],
    "numeric_as_text": ["distance", "DOUBLE"],
    "volume_drop": ["rows landed", "median", "ratio 0.05"],
    "duplicate_rows": ["quarantined", "duplicate_key"],
    # Regression: the cross-field rule was counted once per column, under each column's name.
    "out_of_range": ["quarantined", "distance:in_range", "time_hour_inside_its_day"],
    "null_spike": ["null spike", "tailnum"],
    "truncated_file": ["could not be parsed", "truncat"],
    "corrupt_file": ["could not be parsed", "not valid UTF-8"],
    "late_day": ["has not landed", "2013-03-12"],
}


def land_with_fault(landing, kind: str) -> None:
    """Replay the twelve days with ``kind`` on the fault day, as upstream would send them."""
    # The template already holds a clean fault-day file; upstream never sent one.
    (landing / FAULT_TABLE / f"{FAULT_DAY.isoformat()}.csv").unlink()
    report = replay(USECASE, landing, FIRST_DAY, LAST_DAY, fault=kind, fault_date=FAULT_DAY)
    if kind == "late_day":
        assert report.held_back == [f"{FAULT_TABLE}/{FAULT_DAY.isoformat()}.csv"]
    else:
        assert report.fault_file == f"{FAULT_TABLE}/{FAULT_DAY.isoformat()}.csv"


def stats_of_fault_day(pipeline) -> tuple[int, int, int, int]:
    return pipeline.partition_stats(FAULT_TABLE)[FAULT_DAY]


def test_every_fault_kind_has_an_expected_gate():
    assert set(FAILED_GATES) == set(FAULT_KINDS) == set(MESSAGE_WORDS)
    assert all(gates[0] in DAILY_GATES for gates in FAILED_GATES.values())


@pytest.mark.parametrize("kind", list(FAULT_KINDS))
def test_fault_fails_its_gate_on_its_day_only_and_loses_no_row(kind, replayed_home, pipeline):
    land_with_fault(replayed_home.landing, kind)
    result = pipeline.ingest_days(FIRST_DAY, LAST_DAY)

    # (a) Every gate of every day has its own evaluation; the named gate failed on the fault
    # day with a message that says what went wrong.
    evaluations = result.get_asset_check_evaluations()
    by_key = {(e.asset_key.path[-1], e.check_name, e.partition): e for e in evaluations}
    assert len(by_key) == len(evaluations), "each gate is reported once per table and day"
    assert set(by_key) == {
        (t.name, gate, day.isoformat())
        for t in USECASE.partitioned_tables for gate in DAILY_GATES for day in DAYS
    }
    named_gate = FAILED_GATES[kind][0]
    failed = by_key[(FAULT_TABLE, named_gate, FAULT_DAY.isoformat())]
    assert not failed.passed and failed.blocking
    day_message = failed.metadata["message"].value
    for word in MESSAGE_WORDS[kind]:
        assert word in day_message, f"{word!r} not in {day_message!r}"
    assert failed.description == day_message

    # (b) Only the fault day of the fault table failed, and only its expected gates.
    failing = sorted((e.asset_key.path[-1], e.check_name, e.partition) for e in evaluations if not e.passed)
    assert failing == sorted((FAULT_TABLE, gate, FAULT_DAY.isoformat()) for gate in FAILED_GATES[kind])
    assert not result.success, "a failed blocking gate fails the run"

    status = pipeline.gate_status()
    assert set(status) == {(t.name, day) for t in USECASE.partitioned_tables for day in DAYS}
    for (table, day), (passed, failed_checks) in status.items():
        if (table, day) == (FAULT_TABLE, FAULT_DAY):
            assert not passed
            assert set(failed_checks.split(",")) == set(FAILED_GATES[kind])
        else:
            assert passed, f"{table} {day} failed {failed_checks}"
    recorded = pipeline.check_results()
    assert len(recorded) == len(DAYS) * len(DAILY_GATES) * len(USECASE.partitioned_tables)
    assert recorded[(FAULT_TABLE, FAULT_DAY, named_gate)] == (False, True, day_message)

    # (c) No line lost: every line after the header is valid, quarantined or unparsed, in
    # the tables too.
    for spec in USECASE.partitioned_tables:
        stats = pipeline.partition_stats(spec.name)
        valid = dict(pipeline.query(
            f"select _partition_date, count(*) from validated.{spec.name} group by 1"))
        quarantined = dict(pipeline.query(
            f"select _partition_date, count(*) from quarantine.{spec.name} group by 1"))
        unparsed = dict(pipeline.query(
            "select _partition_date, count(*) from raw._unparsed where table_name = ? group by 1",
            [spec.name]))
        for day in DAYS:
            landed, n_valid, n_quarantined, n_unparsed = stats[day]
            assert landed == n_valid + n_quarantined + n_unparsed, (spec.name, day)
            assert (valid.get(day, 0), quarantined.get(day, 0), unparsed.get(day, 0)) == (
                n_valid, n_quarantined, n_unparsed)
            path = pipeline.landing_file(spec.name, day)
            assert landed == (data_lines(path) if path.exists() else 0), (spec.name, day)

    fault_file = pipeline.landing_file(FAULT_TABLE, FAULT_DAY)
    if kind == "late_day":
        assert not fault_file.exists() and stats_of_fault_day(pipeline) == (0, 0, 0, 0)
        return
    # Each line of the fault file ends up in exactly one place, traceable to its line.
    lines = data_lines(fault_file)
    assert stats_of_fault_day(pipeline)[0] == lines
    source = f"{FAULT_TABLE}/{FAULT_DAY.isoformat()}.csv"
    placed = [row for (row,) in pipeline.query(
        f"select _source_row from validated.{FAULT_TABLE} where _partition_date = ? and _source_file = ? "
        f"union all select _source_row from quarantine.{FAULT_TABLE} where _partition_date = ? and _source_file = ? "
        "union all select _source_row from raw._unparsed where _partition_date = ? and _source_file = ?",
        [FAULT_DAY, source, FAULT_DAY, source, FAULT_DAY, source])]
    assert sorted(placed) == list(range(2, lines + 2))

    # Every quarantined row says which rules it broke, why, and where it came from.
    for spec in USECASE.partitioned_tables:
        for day, source_file, source_row, rules, reason in pipeline.query(
            f"select _partition_date, _source_file, _source_row, rules, reason from quarantine.{spec.name}"
        ):
            assert source_file == f"{spec.name}/{day.isoformat()}.csv" and source_row >= 2
            assert json.loads(rules) and reason.strip()


def test_late_day_passes_its_gate_once_delivered(replayed_home, pipeline):
    land_with_fault(replayed_home.landing, "late_day")
    pipeline.ingest_days(FIRST_DAY, LAST_DAY)
    assert pipeline.gate_status()[(FAULT_TABLE, FAULT_DAY)] == (False, "landed_on_time")

    report = replay(USECASE, replayed_home.landing, FAULT_DAY, FAULT_DAY)
    assert f"{FAULT_TABLE}/{FAULT_DAY.isoformat()}.csv" in report.written
    result = pipeline.ingest_day(FAULT_DAY)

    evaluations = {
        e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == FAULT_TABLE
    }
    assert set(evaluations) == set(DAILY_GATES)
    assert [(g, e.description) for g, e in evaluations.items() if not e.passed] == []
    assert evaluations["landed_on_time"].description == "the file has landed"
    assert {e.partition for e in evaluations.values()} == {FAULT_DAY.isoformat()}
    assert result.success
    assert pipeline.gate_status()[(FAULT_TABLE, FAULT_DAY)] == (True, "")
    # The volume and null-rate gates now have a baseline, and used it.
    landed, valid, quarantined, unparsed = stats_of_fault_day(pipeline)
    assert landed == data_lines(pipeline.landing_file(FAULT_TABLE, FAULT_DAY)) > 0
    assert landed == valid + quarantined and unparsed == 0
    volume = evaluations["volume_within_baseline"].metadata["details"].value
    assert volume["baseline_days"] >= 3 and 0.5 <= volume["ratio"] <= 2.0


def test_snapshot_tables_pass_their_gates_and_lose_no_row(replayed_home, pipeline):
    result = pipeline.ingest_snapshots()
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert sorted((e.asset_key.path[-1], e.check_name) for e in evaluations) == sorted(
        (t.name, gate) for t in USECASE.snapshot_tables for gate in SNAPSHOT_GATES
    )
    assert [e.description for e in evaluations if not e.passed] == []
    for spec in USECASE.snapshot_tables:
        landed, valid, quarantined, unparsed = pipeline.partition_stats(spec.name)[None]
        assert unparsed == 0
        assert landed == valid + quarantined == data_lines(pipeline.landing_file(spec.name, None)) > 0
        assert pipeline.query(f"select count(*) from validated.{spec.name}") == [(valid,)]


def test_a_snapshot_that_shrinks_to_a_tenth_is_blocked(replayed_home, pipeline):
    # Regression: snapshot_min_ratio was configured but no gate read it.
    pipeline.ingest_snapshots()
    planes = pipeline.landing_file("planes", None)
    lines = planes.read_bytes().splitlines(keepends=True)
    planes.write_bytes(b"".join(lines[: len(lines) // 10]))

    result = pipeline.ingest_snapshots()

    failed = [e for e in result.get_asset_check_evaluations()
              if e.asset_key == dg.AssetKey(["validated", "planes"]) and not e.passed]
    assert [e.check_name for e in failed] == ["volume_within_baseline"]
    assert "last accepted snapshot had 3322" in failed[0].description

    # Re-running the shrunken file does not make it the baseline: it is blocked again.
    again = pipeline.ingest_snapshots()
    assert [e.check_name for e in again.get_asset_check_evaluations()
            if e.asset_key == dg.AssetKey(["validated", "planes"]) and not e.passed] == ["volume_within_baseline"]


@dg.asset(
    partitions_def=daily_partitions,
    deps=[dg.AssetKey(["validated", "flights"])],
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="probe",
)
def features_probe(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
    """Stands in for the features: records, per day, how many validated flights it read."""
    out = keel.paths.home / "features_probe"
    out.mkdir(exist_ok=True)
    with keel.warehouse() as con:
        for key in context.partition_keys:
            (n,) = con.execute(
                "select count(*) from validated.flights where _partition_date = ?", [key]
            ).fetchone()
            (out / f"{key}.json").write_text(json.dumps({"validated_flights": n}))
    return dg.MaterializeResult(metadata={"days": len(context.partition_keys)})


PROBED_GRAPH = [*raw_assets, *validation_assets, *gate_checks, features_probe]


def probe_days(paths) -> dict[str, int]:
    folder = paths.home / "features_probe"
    if not folder.exists():
        return {}
    return {p.stem: json.loads(p.read_text())["validated_flights"] for p in folder.glob("*.json")}


def test_failed_gate_blocks_downstream_of_its_day_only(replayed_home, pipeline):
    land_with_fault(replayed_home.landing, "missing_column")

    blocked = dg.materialize(
        PROBED_GRAPH, partition_key=FAULT_DAY.isoformat(), instance=pipeline.instance,
        resources={"keel": KeelState()}, raise_on_error=False,
    )
    assert not blocked.success
    assert {e.check_name for e in blocked.get_asset_check_evaluations() if not e.passed} == {
        "schema_conforms", "quarantine_rate"
    }
    assert dg.AssetKey("features_probe") not in {
        m.asset_key for m in blocked.get_asset_materialization_events()
    }
    assert dg.AssetKey(["validated", "flights"]) in {
        m.asset_key for m in blocked.get_asset_materialization_events()
    }
    assert probe_days(replayed_home) == {}

    normal_day = FAULT_DAY + dt.timedelta(days=1)
    passed = dg.materialize(
        PROBED_GRAPH, partition_key=normal_day.isoformat(), instance=pipeline.instance,
        resources={"keel": KeelState()}, raise_on_error=False,
    )
    assert passed.success
    probe = [m for m in passed.get_asset_materialization_events() if m.asset_key == dg.AssetKey("features_probe")]
    assert [m.partition for m in probe] == [normal_day.isoformat()]
    valid = pipeline.partition_stats(FAULT_TABLE)[normal_day][1]
    assert probe_days(replayed_home) == {normal_day.isoformat(): valid}
    assert valid > 0


def test_a_failed_gate_in_a_range_run_holds_back_the_whole_run_but_is_recorded_per_day(
    replayed_home, pipeline
):
    # Within one run the gates are one step, so Dagster stops that run's downstream steps for
    # every day it covers; the per-day verdicts let keel run (and automation) rebuild the
    # passing days in runs of their own (tests/test_features_dagster.py).
    land_with_fault(replayed_home.landing, "missing_column")
    result = dg.materialize(
        PROBED_GRAPH, instance=pipeline.instance, resources={"keel": KeelState()},
        raise_on_error=False,
        tags={RANGE_START: "2013-03-09", RANGE_END: "2013-03-11"},
    )
    assert probe_days(replayed_home) == {}
    failed = {(e.partition, e.check_name) for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {("2013-03-10", gate) for gate in FAILED_GATES["missing_column"]}
    status = pipeline.gate_status()
    assert [status[(FAULT_TABLE, d)][0] for d in DAYS if d.isoformat() in ("2013-03-09", "2013-03-10", "2013-03-11")] == [True, False, True]


# One use case may drill several of its daily tables: flights' weather has a plan of its own.
WEATHER_FAULTS = {
    "renamed_column": (["schema_conforms", "quarantine_rate"], ["temp is missing", "temperature"]),
    "missing_column": (["schema_conforms", "quarantine_rate"], ["humid is missing"]),
    "numeric_as_text": (["schema_conforms", "quarantine_rate"], ["pressure", "DOUBLE"]),
    "out_of_range": (["quarantine_rate"], ["quarantined", "humid:in_range"]),
    "null_spike": (["null_rates_within_baseline"], ["null spike", "temp"]),
}


@pytest.mark.parametrize("kind", list(WEATHER_FAULTS))
def test_a_second_tables_fault_plan_fails_that_tables_gate_on_its_day_only(kind, replayed_home, pipeline):
    # Regression: a use case had one fault plan; --fault-table weather applied the flights
    # plan's column names to the weather file: a rename changed nothing, a drop raised KeyError.
    (replayed_home.landing / "weather" / f"{FAULT_DAY.isoformat()}.csv").unlink()
    report = replay(USECASE, replayed_home.landing, FIRST_DAY, LAST_DAY, fault=kind, fault_date=FAULT_DAY,
                    fault_table="weather")
    assert report.fault_file == f"weather/{FAULT_DAY.isoformat()}.csv"
    result = pipeline.ingest_days(FIRST_DAY, LAST_DAY)
    gates, words = WEATHER_FAULTS[kind]
    evaluations = result.get_asset_check_evaluations()
    failing = sorted((e.asset_key.path[-1], e.check_name, e.partition) for e in evaluations if not e.passed)
    assert failing == sorted(("weather", gate, FAULT_DAY.isoformat()) for gate in gates)
    (named,) = [e for e in evaluations if (e.asset_key.path[-1], e.check_name, e.partition)
                == ("weather", gates[0], FAULT_DAY.isoformat())]
    message = named.metadata["message"].value
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    landed, n_valid, n_quarantined, n_unparsed = pipeline.partition_stats("weather")[FAULT_DAY]
    assert landed == n_valid + n_quarantined + n_unparsed == data_lines(pipeline.landing_file("weather", FAULT_DAY))


def test_a_table_without_a_fault_plan_is_refused_with_the_tables_that_have_one(replayed_home):
    with pytest.raises(ValueError, match="planes is a snapshot table"):
        replay(USECASE, replayed_home.landing, FIRST_DAY, LAST_DAY, fault="missing_column",
               fault_date=FAULT_DAY, fault_table="planes")
    with pytest.raises(ValueError, match="no table 'runways'"):
        replay(USECASE, replayed_home.landing, FIRST_DAY, LAST_DAY, fault="missing_column",
               fault_date=FAULT_DAY, fault_table="runways")
