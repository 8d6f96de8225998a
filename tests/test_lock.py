"""One writer at a time per Keel home (keel.core.lock), across real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import query

from keel.core.lock import HomeBusy, busy, hold, held_here, lock_path
from resources.keel_state import KeelState

HOLDER = textwrap.dedent("""
    import sys, time
    from keel.core.lock import hold
    with hold(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
""")


def _holder_process(home: Path, command: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), command, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_gives_up_at_once_naming_the_holder(tmp_path):
    # Regression: two keel run on one home met DuckDB's lock error mid-run, as a traceback.
    home = tmp_path / "keel"
    proc = _holder_process(home, "keel run 2013-03-01..2013-03-14", 30)
    try:
        holder = busy(home)
        assert holder is not None and holder.pid == proc.pid and holder.command.startswith("keel run")
        on_disk = json.loads(lock_path(home).read_text())
        assert set(on_disk) == {"command", "pid", "host", "since"} and on_disk["pid"] == proc.pid
        with pytest.raises(HomeBusy) as caught:
            with hold(home, "keel approve 2", timeout=0):
                pytest.fail("a second writer entered")
        message = str(caught.value)
        assert "keel run 2013-03-01..2013-03-14" in message and f"pid {proc.pid}" in message
        assert "since " in message and "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_a_writer_waits_for_the_holder_saying_for_whom_then_goes_on(tmp_path):
    home = tmp_path / "keel"
    proc = _holder_process(home, "dagster run 1a2b3c4d (ingest_daily)", 1.5)
    said = []
    started = time.monotonic()
    with hold(home, "keel run", timeout=30, on_wait=said.append) as me:
        waited = time.monotonic() - started
        assert proc.poll() is not None, "entered while the holder was still running"
        assert me.pid == os.getpid() and held_here(home)
    proc.wait()
    assert 0.5 < waited < 30  # it waited for the holder, and no longer than its own timeout
    assert len(said) == 1 and "dagster run 1a2b3c4d (ingest_daily)" in said[0] and "waiting up to 30 s" in said[0]
    # Released and cleared: the file names nobody once its holder has gone.
    assert busy(home) is None and lock_path(home).read_text() == ""


def test_the_lock_is_reentrant_within_a_process_and_seen_from_another(tmp_path):
    home = tmp_path / "keel"
    with hold(home, "keel run") as outer:
        with hold(home, "dagster run (in process)", timeout=0) as inner:
            assert inner == outer
        assert held_here(home)
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from keel.core.lock import busy; h = busy(sys.argv[1]); "
             "print(h.command, h.pid)", str(home)], capture_output=True, text=True, check=True)
        assert probe.stdout.split() == ["keel", "run", str(os.getpid())]
    assert not held_here(home) and busy(home) is None


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    home = tmp_path / "keel"
    proc = _holder_process(home, "keel run", 60)
    assert busy(home) is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with hold(home, "keel run", timeout=0):
        assert held_here(home)


def test_a_run_holds_the_home_and_a_sensor_does_not(keel_home, monkeypatch):
    seen = {}

    @dg.asset
    def writes_the_warehouse(keel: KeelState) -> None:
        seen["held"] = held_here(keel.paths.home)
        seen["holder"] = json.loads(lock_path(keel.paths.home).read_text())["command"]

    result = dg.materialize([writes_the_warehouse], resources={"keel": KeelState()})
    assert result.success and seen["held"] is True
    assert seen["holder"].startswith("dagster run ") and "__ephemeral_asset_job__" in seen["holder"]
    assert busy(keel_home.home) is None and not held_here(keel_home.home)

    with dg.build_sensor_context(resources={"keel": KeelState()}) as context:
        state = context.resources.keel
        assert not held_here(state.paths.home)


def test_a_run_launched_while_another_process_writes_waits_then_fails_naming_it(keel_home, monkeypatch):
    monkeypatch.setenv("KEEL_LOCK_TIMEOUT", "1")
    proc = _holder_process(keel_home.home, "keel run 2013-03-01..2013-03-14", 30)
    try:
        @dg.asset
        def writes_the_warehouse(keel: KeelState) -> None:
            pytest.fail("ran beside another writer")

        result = dg.materialize([writes_the_warehouse], resources={"keel": KeelState()}, raise_on_error=False)
        assert not result.success
        errors = [e.event_specific_data.error for e in result.all_events if e.is_failure]
        text = " ".join(str(e.message) + str(e.cause.message if e.cause else "") for e in errors if e)
        assert "keel run 2013-03-01..2013-03-14" in text and f"pid {proc.pid}" in text
    finally:
        proc.kill()
        proc.wait()


def test_the_landing_sensor_skips_its_tick_while_keel_run_writes(replayed_home):
    # Regression: the landing sensor of keel dev requested runs for the files keel run was
    # landing and ingesting itself, and its runs met keel run's DuckDB lock.
    from sensors.landing import landing_zone_sensor

    proc = _holder_process(replayed_home.home, "keel run 2013-03-01..2013-03-12", 30)
    try:
        with dg.build_sensor_context(resources={"keel": KeelState()}, instance=dg.DagsterInstance.ephemeral()) as ctx:
            skipped = landing_zone_sensor(ctx)
        assert isinstance(skipped, dg.SkipReason)
        assert "keel run 2013-03-01..2013-03-12" in skipped.skip_message and f"pid {proc.pid}" in skipped.skip_message
    finally:
        proc.kill()
        proc.wait()
    with dg.build_sensor_context(resources={"keel": KeelState()}, instance=dg.DagsterInstance.ephemeral()) as ctx:
        result = landing_zone_sensor(ctx)
    assert len(result.run_requests) == 2  # the snapshots and the twelve days, once the home is free


@pytest.mark.slow
def test_two_keel_run_at_once_on_one_home_one_waits_and_both_report_the_same(replayed_home):
    # Regression: two keel run on one KEEL_HOME met DuckDB's lock error as a traceback.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "DAGSTER_"))}
    env.update(KEEL_HOME=str(replayed_home.home), DAGSTER_HOME=str(replayed_home.dagster_home))
    keel = str(Path(sys.executable).with_name("keel"))
    argv = [keel, "run", "--start", "2013-03-01", "--end", "2013-03-04"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=1200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    for _, err in outputs:
        assert "Traceback" not in err and "Could not set lock" not in err
    waited = [i for i, (_, err) in enumerate(outputs) if "keel run: waiting up to 600 s for keel run" in err]
    assert len(waited) == 1, "exactly one of the two waited for the other"
    assert f"(pid {procs[1 - waited[0]].pid} on " in outputs[waited[0]][1]

    def summary(out: str) -> list[str]:
        lines = out[out.index("\nKeel flight_disruption: "):].splitlines()
        # Each run writes its own log file and names it; everything else must agree.
        return [line for line in lines if not line.startswith(("UI: ", "logs: "))]

    assert summary(outputs[0][0]) == summary(outputs[1][0])
    (rows, distinct), = query(replayed_home.warehouse,
                              "select count(*), count(distinct (_source_file, _source_row)) from validated.flights")
    assert rows == distinct > 0, "the second run replaced the first one's rows, it did not add to them"
    assert busy(replayed_home.home) is None
