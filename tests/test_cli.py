"""The ``keel`` command as a person uses it: its output, its JSON and its exit codes."""

import datetime as dt
import json

import dagster as dg
import pytest
from conftest import USECASE, data_lines

from keel.app.cli import main
from keel.data.gates import DAILY_GATES, SNAPSHOT_GATES
from keel.data.replay import FAULT_KINDS, replay

CHECK_KEYS = {"kind": str, "asset": str, "partition": (str, type(None)), "name": str, "passed": bool,
              "blocking": bool, "severity": str, "message": str}
# A run's report: a start and an end line per stage, then the summary (about 20 lines).
MAX_REPORT_LINES = 40


def test_list_faults_lists_every_kind_with_its_description(capsys):
    assert main(["replay", "--list-faults"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert listed == FAULT_KINDS


def test_replay_with_an_unknown_fault_exits_2_naming_the_known_kinds(keel_home, capsys):
    code = main(["replay", "--start", "2013-03-01", "--end", "2013-03-02",
                 "--fault", "gremlins", "--fault-date", "2013-03-01"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown fault 'gremlins'" in err
    assert all(kind in err for kind in FAULT_KINDS)
    assert list(keel_home.landing.rglob("*.csv")) == [], "nothing lands when the command is wrong"


def test_replay_with_a_fault_but_no_date_exits_2(keel_home, capsys):
    assert main(["replay", "--start", "2013-03-01", "--fault", "null_spike"]) == 2
    assert "--fault and --fault-date go together" in capsys.readouterr().err


@pytest.mark.parametrize("argv, reason", [
    (["run", "--start", "2014-01-01", "--end", "2014-01-02"], "outside flight_disruption's calendar"),
    # Regression: an end before the start was reported as "outside the calendar".
    (["run", "--start", "2013-03-05", "--end", "2013-03-01"], "the end date 2013-03-01 is before the start date 2013-03-05"),
])
def test_run_outside_the_calendar_exits_2(keel_home, capsys, argv, reason):
    assert main(argv) == 2
    assert reason in capsys.readouterr().err


def test_run_on_clean_days_exits_0_and_status_json_has_the_documented_shape(replayed_home, capsys):
    # Regression: run_pipeline bound sys.stdout at import, so its report escaped capture.
    days = ["2013-03-01", "2013-03-02", "2013-03-03", "2013-03-04"]
    assert main(["run", "--start", days[0], "--end", days[-1]]) == 0
    captured = capsys.readouterr()
    out = captured.out
    expected = len(days) * len(DAILY_GATES) * len(USECASE.partitioned_tables) + len(SNAPSHOT_GATES) * len(
        USECASE.snapshot_tables
    )
    assert f"checks: {expected} passed, 0 failed" in out
    assert "BLOCKED" not in out
    assert_a_short_report_and_the_events_in_the_log_file(out, captured.err, replayed_home)

    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)

    assert set(doc) >= {"tables", "checks"}
    assert set(doc["tables"]) == {t.name for t in USECASE.tables}
    for spec in USECASE.tables:
        partitions = doc["tables"][spec.name]
        assert list(partitions) == (days if spec.partitioned else ["unpartitioned"])
        for key, counts in partitions.items():
            assert set(counts) == {"landed", "valid", "quarantined", "unparsed", "lines"}
            assert all(type(v) is int for v in counts.values())
            assert counts["landed"] == counts["valid"] + counts["quarantined"] + counts["unparsed"]
            day = dt.date.fromisoformat(key) if spec.partitioned else None
            path = replayed_home.landing / spec.name / (f"{key}.csv" if day else f"{spec.name}.csv")
            assert counts["landed"] == data_lines(path)
            assert counts["lines"] == data_lines(path) + 1, "the header line is a line too"

    checks = [c for c in doc["checks"] if c["kind"] == "gate"]
    for check in checks:
        assert set(check) == set(CHECK_KEYS)
        for key, kind in CHECK_KEYS.items():
            assert isinstance(check[key], kind), (key, check)
        assert check["passed"] and check["blocking"] and check["message"]
    expected = {(f"validated/{t.name}", d, g) for t in USECASE.partitioned_tables for d in days for g in DAILY_GATES}
    expected |= {(f"validated/{t.name}", None, g) for t in USECASE.snapshot_tables for g in SNAPSHOT_GATES}
    assert sorted((c["asset"], c["partition"] or "", c["name"]) for c in checks) == sorted(
        (a, p or "", n) for a, p, n in expected)


def test_run_with_a_fault_exits_1_and_prints_the_blocked_gate(replayed_home, capsys):
    fault_day = dt.date(2013, 3, 8)
    replay(USECASE, replayed_home.landing, fault_day, fault_day, fault="null_spike", fault_date=fault_day)

    assert main(["run", "--start", "2013-03-04", "--end", fault_day.isoformat()]) == 1

    out = capsys.readouterr().out
    blocked = [line.strip() for line in out.splitlines() if line.strip().startswith("BLOCKED")]
    assert len(blocked) == 1
    assert blocked[0].startswith("BLOCKED validated/flights 2013-03-08 null_rates_within_baseline: null spike: tailnum")

    assert main(["status", "--json", "--compact"]) == 0
    doc = json.loads(capsys.readouterr().out)
    failed = [c for c in doc["checks"] if not c["passed"]]
    assert [(c["asset"], c["partition"], c["name"]) for c in failed] == [
        ("validated/flights", "2013-03-08", "null_rates_within_baseline")
    ]


def _log_files(home):
    return sorted((home.home / "logs").glob("run-*.log"))


def assert_a_short_report_and_the_events_in_the_log_file(out: str, err: str, home) -> None:
    """The terminal shows the stages and the summary; the log file holds what Dagster, dbt
    and MLflow said, one line per event, as many runs as the instance recorded."""
    lines = out.splitlines()
    assert len(lines) <= MAX_REPORT_LINES, out
    assert err == ""
    assert " - DEBUG - " not in out and "Running with dbt" not in out
    started = [line[7:].split(" (")[0] for line in lines if line.startswith("[ .. ] ")]
    ended = [line[7:35].rstrip() for line in lines if line.startswith("[ ok ] ")]
    assert started == ended and "ingest daily tables" in started and "build daily features" in started

    (log,) = _log_files(home)
    assert f"logs: {log}" in lines
    text = log.read_text()
    runs = dg.DagsterInstance.get().get_run_records()
    assert len(runs) >= 4
    assert text.count(" - RUN_START - ") == len(runs)
    assert text.count(" - RUN_SUCCESS - ") == len(runs)
    assert text.count(" - STEP_SUCCESS - ") >= len(runs)
    assert "Running with dbt=" in text and "Completed successfully" in text
    assert all(line in text for line in lines if line.startswith(("[ .. ]", "[ ok ]")))


def test_run_verbose_shows_the_dagster_events_in_the_terminal_and_keeps_them_in_the_log_file(replayed_home, capsys):
    assert main(["run", "--verbose", "--start", "2013-03-01", "--end", "2013-03-01"]) == 0
    captured = capsys.readouterr()
    runs = dg.DagsterInstance.get().get_run_records()
    assert captured.err.count(" - RUN_START - ") == len(runs) >= 4
    assert "Running with dbt=" in captured.out
    assert "[ ok ] build daily features" in captured.out
    (log,) = _log_files(replayed_home)
    assert log.read_text().count(" - RUN_START - ") == len(runs)
