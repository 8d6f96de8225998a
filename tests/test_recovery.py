"""Runs whose process was killed, and the dagster.yaml Keel writes.

The runs are real: a subprocess executes a small Dagster job against the test home's instance
and blocks inside its op until it is SIGKILLed, exactly as a killed ``keel run`` leaves its run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from keel.app.recovery import fail_dead_runs
from keel.core import process
from keel.core.settings import PROJECT_ROOT, prepare_environment

_STUCK_RUN = r"""
import os, time
from pathlib import Path
import dagster as dg
from keel.core.process import run_tags

marker = Path(os.environ["STUCK_MARKER"])

@dg.op
def wait_forever():
    marker.write_text(str(os.getpid()))
    time.sleep(600)

@dg.job
def stuck():
    wait_forever()

tags = run_tags() if os.environ["STUCK_TAGGED"] == "1" else {}
stuck.execute_in_process(instance=dg.DagsterInstance.get(), tags=tags)
"""


def start_stuck_run(dagster_home: Path, marker: Path, tagged: bool) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_RUN], cwd=PROJECT_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(dagster_home), "STUCK_MARKER": str(marker),
             "STUCK_TAGGED": "1" if tagged else "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its op started: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the run never reached its op"
        time.sleep(0.2)
    return proc


def runs_by_status(instance: dg.DagsterInstance) -> dict[str, str]:
    return {r.dagster_run.run_id: r.dagster_run.status.value for r in instance.get_run_records()}


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_a_run_whose_process_was_killed_is_marked_failed_and_frees_the_slot(keel_home, tmp_path):
    # Regression: a run whose process was killed stayed STARTED for good and held the one
    # run slot of Keel's instance, so the daemon never launched another run.
    dagster_home = keel_home.dagster_home
    tagged = start_stuck_run(dagster_home, tmp_path / "tagged", tagged=True)
    untagged = start_stuck_run(dagster_home, tmp_path / "untagged", tagged=False)
    instance = dg.DagsterInstance.get()
    try:
        started = runs_by_status(instance)
        assert sorted(started.values()) == ["STARTED", "STARTED"]
        tags = {r.dagster_run.run_id: r.dagster_run.tags for r in instance.get_run_records()}
        assert sorted(t.get(process.PID_TAG, "untagged") for t in tags.values()) == sorted(["untagged", str(tagged.pid)])

        assert fail_dead_runs(dagster_home) == [], "a live run's process is left alone"
        assert sorted(runs_by_status(instance).values()) == ["STARTED", "STARTED"]
    finally:
        kill(tagged)
        kill(untagged)

    lines = fail_dead_runs(dagster_home)

    assert len(lines) == 2
    assert {f"its process {tagged.pid} is gone", f"its process {untagged.pid} is gone"} == {
        line.split("; ")[1].removesuffix(": marked failed") for line in lines}
    assert sorted(runs_by_status(instance).values()) == ["FAILURE", "FAILURE"]
    in_progress = instance.get_run_records(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.QUEUED]))
    assert in_progress == []
    for run_id in started:
        failures = [e for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
        assert len(failures) == 1 and "Keel marked this run failed: its process" in failures[0].message
    assert fail_dead_runs(dagster_home) == []


def test_the_next_keel_command_fails_a_killed_run_and_says_so(keel_home, tmp_path):
    stuck = start_stuck_run(keel_home.dagster_home, tmp_path / "stuck", tagged=True)
    kill(stuck)

    done = subprocess.run([sys.executable, "-m", "keel", "replay", "--list-faults"], cwd=PROJECT_ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr
    assert f"keel: recovered: run " in done.stderr
    assert f"of stuck was left STARTED; its process {stuck.pid} is gone: marked failed" in done.stderr
    assert list(runs_by_status(dg.DagsterInstance.get()).values()) == ["FAILURE"]


def test_a_process_id_taken_over_by_a_younger_process_is_not_the_runs():
    me = os.getpid()
    started = process.started_at(me)
    assert process.alive(me, started)
    assert not process.alive(me, started - 60), "another process that had this id earlier"
    assert not process.alive(me, not_after=started - 60), "this process started after the run"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while process._state(child.pid) not in ("Z", None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.alive(child.pid), "a zombie (exited, not reaped) is dead"
    child.wait()
    assert not process.alive(child.pid)


# --------------------------------------------------------------------------------------------
# dagster.yaml


def test_keels_dagster_yaml_turns_on_run_monitoring(keel_home):
    # Regression: the dagster.yaml Keel wrote left run monitoring off.
    instance = dg.DagsterInstance.get()
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings == {
        "enabled": True, "start_timeout_seconds": 180, "cancel_timeout_seconds": 180, "poll_interval_seconds": 30}


def test_an_older_keel_dagster_yaml_is_rewritten_and_a_users_own_is_left_alone(keel_home):
    config = keel_home.dagster_home / "dagster.yaml"
    older = ("# Written by Keel. Runs share one DuckDB file, which allows a single writer at a time,\n"
             "# so the run queue admits one run at a time.\ntelemetry:\n  enabled: false\n"
             "run_queue:\n  max_concurrent_runs: 1\n")
    config.write_text(older)
    prepare_environment()
    assert "run_monitoring:\n  enabled: true" in config.read_text()

    users = "telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 4\n"
    config.write_text(users)
    prepare_environment()
    assert config.read_text() == users


@pytest.fixture(autouse=True)
def _no_leftover_scratch(keel_home):
    yield
    assert not list(keel_home.dagster_home.glob(".dagster.yaml.*"))
