"""Which process runs a Dagster run, and whether that process still lives.

Keel tags every run it launches with its process id, its host and the process's start time.
Dagster's default run launcher has no health check of a run's worker, so a run whose process
was killed stays STARTED (and holds the one run slot) until someone says it died:
``keel.app.recovery`` does, at the start of every ``keel`` command, for runs whose process is
gone. The start time guards against a recycled process id.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PID_TAG, HOST_TAG, STARTED_TAG = "keel/pid", "keel/host", "keel/process_started"


def run_tags() -> dict[str, str]:
    """Tags naming this process, for a run this process executes in process."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    started = started_at(os.getpid())
    if started is not None:
        tags[STARTED_TAG] = f"{started:.2f}"
    return tags


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (Unix time), from ``/proc``; None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, IndexError, StopIteration):
        return None
    # Field 22 of stat (the 20th after the command name): start time in clock ticks since boot.
    return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: float | None = None, *, not_after: float | None = None) -> bool:
    """Whether process ``pid`` is running and is the one meant: the one that started at
    ``started`` (within a second), or one that started no later than ``not_after``. A zombie
    (killed, not yet reaped) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if _state(pid) in ("Z", "X"):
        return False
    now_started = started_at(pid)
    if now_started is None:
        return True
    if started is not None and abs(now_started - started) > 1.0:
        return False
    if not_after is not None and now_started > not_after + 1.0:
        return False
    return True


def this_host() -> str:
    return socket.gethostname()
