"""Exit codes mean one thing each: 0 all passed, 1 a gate blocked or a check failed, 2 anything
else, always with one readable line on stderr and no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keel.app.cli import main

HOLDER = textwrap.dedent("""
    import sys, time
    import duckdb
    from keel.core.lock import hold
    with hold(sys.argv[1], "keel run 2013-03-01..2013-03-12"):
        con = duckdb.connect(sys.argv[1] + "/warehouse.duckdb")
        con.execute("create table if not exists t (x int)")
        print("held", flush=True)
        time.sleep(60)
""")


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def writer(keel_home):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(keel_home.home)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("argv", [["status"], ["run", "--start", "2013-03-01", "--end", "2013-03-02"]])
def test_a_keel_home_that_is_a_file_exits_2_with_one_line(tmp_path, monkeypatch, capsys, argv):
    # Regression: a KEEL_HOME that is a file exited 1, the code of a gate that blocked.
    home = tmp_path / "keel"
    home.write_text("not a folder")
    monkeypatch.setenv("KEEL_HOME", str(home))
    assert main(argv) == 2
    assert f"KEEL_HOME {home} is a file" in _one_line(capsys.readouterr().err)


def test_status_under_a_mistyped_home_creates_nothing(tmp_path, monkeypatch, capsys):
    # Regression: keel status created landing/, dagster/ and mlflow/ under a mistyped KEEL_HOME.
    home = tmp_path / "kele"
    monkeypatch.setenv("KEEL_HOME", str(home))
    assert main(["status", "--json"]) == 2
    assert f"no Keel home at {home}" in _one_line(capsys.readouterr().err)
    assert not home.exists()


def test_status_beside_a_writer_retries_then_says_so_in_one_line(keel_home, writer, capsys):
    # Regression: keel status on a locked warehouse printed a raw DuckDB traceback: its retry
    # wrapped the creation of the connection's context manager, not its entry.
    assert main(["status", "--json"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("keel status: the warehouse ") and "is being written by keel run 2013-03-01..2013-03-12" in line
    assert f"pid {writer.pid}" in line and "waited 5 s" in line


def test_run_beside_another_writer_refuses_with_exit_2_naming_it(keel_home, writer, monkeypatch, capsys):
    # Regression: a lock error exited 1, which scripts read as a data-quality verdict.
    monkeypatch.setenv("KEEL_LOCK_TIMEOUT", "0")
    assert main(["run", "--start", "2013-03-01", "--end", "2013-03-02"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("keel run: the Keel home ") and f"pid {writer.pid}" in line
    assert list(keel_home.landing.rglob("*.csv")) == [], "nothing lands while another process writes"


def test_an_unexpected_error_is_one_line_with_exit_2_and_verbose_shows_the_traceback(keel_home, monkeypatch, capsys):
    monkeypatch.setenv("KEEL_LOCK_TIMEOUT", "soon")
    assert main(["run", "--start", "2013-03-01", "--end", "2013-03-02"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == ("keel run: ValueError: KEEL_LOCK_TIMEOUT must be a number of seconds, got 'soon' "
                    "(run again with --verbose for the traceback)")
    assert main(["--verbose", "run", "--start", "2013-03-01", "--end", "2013-03-02"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_the_installed_command_exits_2_not_1_on_a_crash(tmp_path):
    home = tmp_path / "keel"
    home.write_text("")
    keel = Path(sys.executable).with_name("keel")
    done = subprocess.run([str(keel), "status"], capture_output=True, text=True, env={"KEEL_HOME": str(home), "PATH": ""})
    assert done.returncode == 2 and _one_line(done.stderr).startswith("keel status: KEEL_HOME ")
