"""The landing-zone sensor requests every new or changed day exactly once, in ranges."""

import datetime as dt
import json
import shutil

import dagster as dg
import pytest
from conftest import FIRST_DAY, LAST_DAY, RANGE_END, RANGE_START, USECASE

from keel.data.replay import replay
from resources.keel_state import KeelState
from keel.core.dates import contiguous_ranges
from sensors.landing import MAX_RETRIES, RUN_KEY_TAG, landing_zone_sensor, plan_retries, plan_runs

CALENDAR_START = USECASE.start.isoformat()
D = dt.date


def tick(cursor: str | None = None, instance: dg.DagsterInstance | None = None) -> tuple[list[dg.RunRequest], str]:
    # A context manager: KeelState sets itself up (the lock of a run) like any resource.
    with dg.build_sensor_context(
        cursor=cursor, resources={"keel": KeelState()}, instance=instance or dg.DagsterInstance.ephemeral()
    ) as context:
        result = landing_zone_sensor(context)
    return list(result.run_requests or []), result.cursor


def daily_ranges(requests: list[dg.RunRequest]) -> list[tuple[str, str]]:
    ranges = []
    for request in requests:
        if request.job_name == "ingest_daily":
            ranges.append((request.tags[RANGE_START], request.tags[RANGE_END]))
    return ranges


def snapshot_requests(requests: list[dg.RunRequest]) -> list[dg.RunRequest]:
    return [r for r in requests if r.job_name == "ingest_snapshots"]


def hold_back(landing, days: list[dt.date], into) -> None:
    """Move the daily files of ``days`` out of the landing zone, as if not yet sent."""
    for table in USECASE.partitioned_tables:
        for day in days:
            target = into / table.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(landing / table.name / f"{day.isoformat()}.csv", target)


def deliver(landing, days: list[dt.date], held) -> None:
    for table in USECASE.partitioned_tables:
        for day in days:
            shutil.move(held / table.name / f"{day.isoformat()}.csv", landing / table.name)


def test_first_tick_requests_the_snapshots_and_one_range_up_to_the_last_landed_day(replayed_home):
    requests, _ = tick()

    # The landing zone starts on March 1st: the months before it are not "missing".
    assert daily_ranges(requests) == [(FIRST_DAY.isoformat(), LAST_DAY.isoformat())]
    (snapshots,) = snapshot_requests(requests)
    assert snapshots.tags.get(RANGE_START) is None
    assert len(requests) == 2
    assert len({r.run_key for r in requests}) == 2


def test_a_second_tick_with_the_returned_cursor_requests_nothing(replayed_home):
    _, cursor = tick()
    requests, next_cursor = tick(cursor)
    assert requests == []
    assert json.loads(next_cursor) == json.loads(cursor)


def test_rewritten_files_are_requested_in_one_run_per_contiguous_range(replayed_home):
    first_requests, cursor = tick()
    landing = replayed_home.landing
    for day in (D(2013, 3, 2), D(2013, 3, 3), D(2013, 3, 7)):
        replay(USECASE, landing, day, day, fault="duplicate_rows", fault_date=day)

    requests, _ = tick(cursor)

    assert daily_ranges(requests) == [("2013-03-02", "2013-03-03"), ("2013-03-07", "2013-03-07")]
    assert snapshot_requests(requests) == [], "replaying left the identical snapshots alone"
    assert not {r.run_key for r in requests} & {r.run_key for r in first_requests}


def test_rewriting_one_day_requests_only_that_day(replayed_home):
    _, cursor = tick()
    day = D(2013, 3, 5)
    report = replay(USECASE, replayed_home.landing, day, day, fault="null_spike", fault_date=day)
    assert report.written == ["flights/2013-03-05.csv"]

    requests, cursor = tick(cursor)
    assert daily_ranges(requests) == [("2013-03-05", "2013-03-05")]
    assert len(requests) == 1
    assert tick(cursor)[0] == []


def test_a_missing_day_is_requested_once_and_again_when_it_lands(replayed_home, tmp_path):
    landing, held = replayed_home.landing, tmp_path / "held"
    late, later = D(2013, 3, 9), [D(2013, 3, 10), D(2013, 3, 11), D(2013, 3, 12)]
    hold_back(landing, [late, *later], held)
    requests, cursor = tick()
    assert daily_ranges(requests) == [(FIRST_DAY.isoformat(), "2013-03-08")]

    # Later days arrive before 2013-03-09: the missing day is requested with them.
    deliver(landing, later, held)
    requests, cursor = tick(cursor)
    assert daily_ranges(requests) == [("2013-03-09", "2013-03-12")]
    assert "2013-03-09" in json.loads(cursor)["missing"]

    # Still missing on the next tick: not requested again.
    requests, cursor = tick(cursor)
    assert requests == []

    deliver(landing, [late], held)
    requests, cursor = tick(cursor)
    assert daily_ranges(requests) == [("2013-03-09", "2013-03-09")]
    assert "2013-03-09" not in json.loads(cursor)["missing"]
    assert tick(cursor)[0] == []


def test_a_changed_snapshot_requests_only_the_snapshot_job(replayed_home):
    _, cursor = tick()
    planes = replayed_home.landing / "planes" / "planes.csv"
    lines = planes.read_bytes().splitlines(keepends=True)
    planes.write_bytes(b"".join(lines[:-10]))

    requests, cursor = tick(cursor)
    assert [r.job_name for r in requests] == ["ingest_snapshots"]
    assert RANGE_START not in requests[0].tags
    assert tick(cursor)[0] == []


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ([], []),
        ([D(2013, 3, 1)], [(D(2013, 3, 1), D(2013, 3, 1))]),
        ([D(2013, 3, 3), D(2013, 3, 1), D(2013, 3, 2)], [(D(2013, 3, 1), D(2013, 3, 3))]),
        ([D(2013, 3, 1), D(2013, 3, 3)], [(D(2013, 3, 1), D(2013, 3, 1)), (D(2013, 3, 3), D(2013, 3, 3))]),
        ([D(2013, 3, 2), D(2013, 3, 2), D(2013, 3, 3)], [(D(2013, 3, 2), D(2013, 3, 3))]),
        ([D(2013, 2, 28), D(2013, 3, 1), D(2013, 12, 31)],
         [(D(2013, 2, 28), D(2013, 3, 1)), (D(2013, 12, 31), D(2013, 12, 31))]),
    ],
    ids=["none", "one", "unsorted-run", "gap", "duplicates", "month-boundary"],
)
def test_contiguous_ranges_merge_consecutive_days_only(days, expected):
    assert contiguous_ranges(days) == expected


def files_for(days: list[dt.date], version: str = "v1", snapshot: str | None = "s1") -> dict:
    files = {f"flights/{d.isoformat()}.csv": (version, d) for d in days}
    if snapshot:
        files["planes/planes.csv"] = (snapshot, None)
    return files


START = D(2013, 3, 1)
WEEK = [START + dt.timedelta(days=i) for i in range(7)]


@pytest.mark.parametrize(
    ("files", "cursor", "ranges", "snapshots", "missing"),
    [
        pytest.param(files_for(WEEK), {}, [(WEEK[0], WEEK[-1])], True, [], id="all-new"),
        pytest.param(
            files_for(WEEK), {"files": {p: v for p, (v, _) in files_for(WEEK).items()}},
            [], False, [], id="nothing-changed",
        ),
        pytest.param(
            {**files_for(WEEK), "flights/2013-03-04.csv": ("v2", WEEK[3])},
            {"files": {p: v for p, (v, _) in files_for(WEEK).items()}},
            [(WEEK[3], WEEK[3])], False, [], id="one-day-rewritten",
        ),
        pytest.param(
            files_for(WEEK, snapshot="s2"), {"files": {p: v for p, (v, _) in files_for(WEEK).items()}},
            [], True, [], id="snapshot-changed",
        ),
        pytest.param(
            files_for([WEEK[0], WEEK[1], WEEK[4]]), {},
            [(WEEK[0], WEEK[4])], True, ["2013-03-03", "2013-03-04"], id="gap-requested-as-missing",
        ),
        pytest.param(
            files_for([WEEK[0], WEEK[1], WEEK[4], WEEK[6]]),
            {"files": {p: v for p, (v, _) in files_for([WEEK[0], WEEK[1]]).items()},
             "missing": ["2013-03-03", "2013-03-04"]},
            [(WEEK[4], WEEK[6])], False, ["2013-03-03", "2013-03-04", "2013-03-06"],
            id="new-gap-only",
        ),
        pytest.param(
            files_for([WEEK[0], WEEK[1], WEEK[4], WEEK[6]]),
            {"files": {p: v for p, (v, _) in files_for([WEEK[0], WEEK[1], WEEK[4]]).items()},
             "missing": ["2013-03-03", "2013-03-04"]},
            [(WEEK[5], WEEK[6])], False, ["2013-03-03", "2013-03-04", "2013-03-06"],
            id="reported-missing-not-again",
        ),
        pytest.param(
            files_for([WEEK[0], WEEK[1], WEEK[3], WEEK[4]]),
            {"files": {p: v for p, (v, _) in files_for([WEEK[0], WEEK[1], WEEK[4]]).items()},
             "missing": ["2013-03-03", "2013-03-04"]},
            [(WEEK[3], WEEK[3])], False, ["2013-03-03"], id="late-day-lands",
        ),
    ],
)
def test_plan_runs_requests_changed_and_newly_missing_days(files, cursor, ranges, snapshots, missing):
    planned, snapshots_changed, new_cursor = plan_runs(files, cursor, START)
    assert planned == ranges
    assert snapshots_changed is snapshots
    assert new_cursor["missing"] == missing
    assert new_cursor["files"] == {path: version for path, (version, _) in files.items()}


def launch(pipeline, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run a requested job in process, tagged with its run key as the daemon tags it."""
    return pipeline.run_job(request.job_name, {**request.tags, RUN_KEY_TAG: request.run_key})


def test_a_run_that_crashed_is_requested_again_but_a_gated_one_is_not(replayed_home, pipeline):
    # Regression: the cursor advanced past files whose ingestion crashed, so they were never
    # requested again until they changed.
    requests, cursor = tick(instance=pipeline.instance)
    (daily,) = [r for r in requests if r.job_name == "ingest_daily"]
    replayed_home.warehouse.mkdir(parents=True)  # a warehouse nobody can open: the run crashes
    crashed = launch(pipeline, daily)
    assert not crashed.success and not crashed.get_asset_check_evaluations()
    replayed_home.warehouse.rmdir()

    requests, cursor = tick(cursor, pipeline.instance)
    (retry,) = [r for r in requests if r.job_name == "ingest_daily"]
    assert retry.run_key == f"{daily.run_key}:retry1"
    assert (retry.tags[RANGE_START], retry.tags[RANGE_END]) == (FIRST_DAY.isoformat(), LAST_DAY.isoformat())
    assert [r.job_name for r in requests] == ["ingest_daily"], "the snapshot run never ran: still pending"
    assert launch(pipeline, retry).success
    assert pipeline.query("select count(distinct partition_date) from raw._files where table_name = 'flights'") == [(12,)]

    # A rewritten day that fails its gates is ingested: its verdict stands, no retry.
    day = D(2013, 3, 6)
    replay(USECASE, replayed_home.landing, day, day, fault="missing_column", fault_date=day)
    requests, cursor = tick(cursor, pipeline.instance)
    (rewritten,) = [r for r in requests if r.job_name == "ingest_daily"]
    assert (rewritten.tags[RANGE_START], rewritten.tags[RANGE_END]) == (day.isoformat(), day.isoformat())
    gated = launch(pipeline, rewritten)
    assert not gated.success and pipeline.gate_status()[("flights", day)][0] is False
    requests, cursor = tick(cursor, pipeline.instance)
    assert [r.job_name for r in requests] == []
    assert [key for key in json.loads(cursor)["pending"] if key.startswith("days:")] == []


def test_plan_retries_waits_for_the_run_and_gives_up_after_the_last_attempt():
    files = {"flights/2013-03-01.csv": ("v1", D(2013, 3, 1))}
    request = {"job": "ingest_daily", "tags": {}, "files": {"flights/2013-03-01.csv": "v1"}, "attempt": 0}
    pending = {"days:a": request}

    assert plan_retries(pending, files, {}, set()) == ({}, pending, []), "still running"
    assert plan_retries(pending, files, None, {"days:a"}) == ({}, pending, []), "warehouse busy"
    assert plan_retries(pending, files, {"flights/2013-03-01.csv": "v1"}, {"days:a"}) == ({}, {}, [])
    rewritten = {"flights/2013-03-01.csv": ("v2", D(2013, 3, 1))}
    assert plan_retries(pending, rewritten, {}, {"days:a"}) == ({}, {}, []), "the new version has its own request"
    retries, keep, _ = plan_retries(pending, files, {}, {"days:a"})
    assert retries == {"days:a:retry1": {**request, "attempt": 1}} and keep == {}
    last = {"days:a:retry3": {**request, "attempt": MAX_RETRIES}}
    assert plan_retries(last, files, {}, {"days:a:retry3"}) == ({}, {}, ["days:a:retry3"])
