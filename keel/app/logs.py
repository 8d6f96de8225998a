"""Where the logs of one ``keel`` command go: Dagster's events, dbt's and MLflow's output.

Each invocation writes one file, ``$KEEL_HOME/logs/<command>-<UTC time>.log``; the terminal
shows Keel's own stage lines and summary. ``--verbose`` shows the logs on the terminal too,
as well as in the file. The runs' events stay in the Dagster instance either way (the UI).

Everything the libraries print goes to the file, whichever way they print it: Dagster's
console logger and dbt's lines (dagster-dbt re-emits them on ``sys.stdout``) through the
Python streams, and output written straight to the process's file descriptors (LightGBM's
C library, subprocesses, log handlers bound to the original streams at import) through the
descriptors. Dagster's compute-log capture keeps working: it redirects whichever
descriptor ``sys.stdout`` has, here the log file's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# Dagster's console logger at DEBUG writes every run event (step starts, materializations,
# check evaluations) to the log file, as the UI shows them.
DAGSTER_LOG_LEVEL = "DEBUG"


def log_path(home: Path, command: str, now: dt.datetime | None = None) -> Path:
    """A new file for this invocation: ``logs/run-20130301T060000Z.log`` (``-2``, ``-3``...
    when one already exists for that second)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    folder = home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{command}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    path, n = folder / f"{stem}.log", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.log"
    return path


@dataclass
class CommandLog:
    """The streams of one command: ``out``/``err`` reach the terminal, ``file`` the log."""

    path: Path
    out: TextIO
    err: TextIO
    file: TextIO
    verbose: bool

    def say(self, line: str = "", error: bool = False) -> None:
        """A line for the person at the terminal, also kept in the log file."""
        stream = self.err if error else self.out
        print(line, file=stream, flush=True)
        if not self.verbose:  # with --verbose the file already receives what the terminal shows
            print(line, file=self.file, flush=True)


class _Tee(io.TextIOBase):
    """A stream that writes to the terminal and to the log file (``--verbose``)."""

    def __init__(self, first: TextIO, second: TextIO):
        self._first, self._second = first, second

    def write(self, text: str) -> int:
        self._first.write(text)
        self._second.write(text)
        return len(text)

    def flush(self) -> None:
        self._first.flush()
        self._second.flush()

    def fileno(self) -> int:
        # Dagster's compute-log capture redirects this descriptor; the terminal's keeps the
        # captured output on the screen (the file receives the Python-level copy).
        return self._first.fileno()

    def isatty(self) -> bool:
        return self._first.isatty()


def _fd(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def routed(home: Path, command: str, verbose: bool = False, out: TextIO | None = None,
           lines_to_stderr: bool = False) -> Iterator[CommandLog]:
    """Send the libraries' output of this command to its log file (and, with ``verbose``,
    to the terminal as well); yield the streams Keel's own lines go to: ``out`` when given,
    the terminal's standard error with ``lines_to_stderr`` (standard output then carries a
    document of its own, such as ``--json``), else its standard output."""
    path = log_path(home, command)
    original_out, original_err = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8", buffering=1) as file:
        if verbose:
            lines = out or (original_err if lines_to_stderr else original_out)
            log = CommandLog(path, lines, original_err, file, verbose=True)
            with contextlib.redirect_stdout(_Tee(original_out, file)), \
                    contextlib.redirect_stderr(_Tee(original_err, file)):
                yield log
            return
        original_out.flush()
        original_err.flush()
        saved = {}
        terminal = {}
        for target, stream in ((1, original_out), (2, original_err)):
            fd = _fd(stream)
            if fd is not None:
                # The terminal keeps a descriptor of its own before fd 1/2 point at the file.
                terminal[target] = open(os.dup(fd), "w", encoding="utf-8", buffering=1, closefd=True)
            saved[target] = os.dup(target)
        err = terminal.get(2, original_err)
        out = out or (err if lines_to_stderr else terminal.get(1, original_out))
        try:
            for target in (1, 2):
                os.dup2(file.fileno(), target)
            with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
                yield CommandLog(path, out, err, file, verbose=False)
        finally:
            file.flush()
            for target, fd in saved.items():
                os.dup2(fd, target)
                os.close(fd)
            for stream in terminal.values():
                stream.close()
