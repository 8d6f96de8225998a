"""One writer at a time per Keel home: an advisory lock on ``$KEEL_HOME/.keel.lock``.

DuckDB lets one process hold its file for writing, and a Keel home is written by several
kinds of process: ``keel run``, ``keel approve``/``rollback``/``replay``, and the runs and
the retraining trigger of the daemon that ``keel dev`` starts. Without a lock of its own a
second writer meets DuckDB's ``Could not set lock on file`` in the middle of its work. With
this one it either waits for the holder (bounded) or gives up before it starts, and in both
cases says who holds the home: the lock file records the holder's command, process id,
host and since when.

The lock is ``fcntl.flock`` on the file: the kernel releases it when the holder's process
ends, however it ends (a ``kill -9`` leaves no stale lock). It is re-entrant within a
process: ``keel run`` holds it and the Dagster runs it executes in process take it again.
Readers (``keel status``, the sensors' reads) never take it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from keel.core import env

LOCK_FILE = ".keel.lock"
TIMEOUT_ENV = env.KEEL_LOCK_TIMEOUT
# How long a writer waits for the holder by default: a day's run under the daemon takes
# seconds to a minute, a full-year keel run about four minutes.
DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.2


@dataclass(frozen=True)
class Holder:
    """Who holds a Keel home."""

    command: str
    pid: int
    host: str
    since: str  # ISO 8601, UTC, to the second

    def describe(self) -> str:
        return f"{self.command} (pid {self.pid} on {self.host}, since {self.since})"


class HomeBusy(RuntimeError):
    """Another process holds the Keel home for writing."""

    def __init__(self, home: Path, holder: Holder | None, waited_s: float):
        self.home, self.holder, self.waited_s = home, holder, waited_s
        who = holder.describe() if holder else "another process (it has not recorded its name yet)"
        waited = f" after waiting {waited_s:.0f} s" if waited_s > 0 else ""
        super().__init__(f"the Keel home {home} is being written by {who}{waited}; try again when it ends")


@dataclass
class _Held:
    fd: int
    depth: int
    holder: Holder


_held: dict[Path, _Held] = {}
_guard = threading.RLock()


def lock_path(home: Path) -> Path:
    return Path(home) / LOCK_FILE


def default_timeout() -> float:
    """``KEEL_LOCK_TIMEOUT`` seconds (0: give up at once), else ``DEFAULT_TIMEOUT_S``."""
    text = (env.get(TIMEOUT_ENV) or "").strip()
    try:
        return max(float(text), 0.0) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


def _read_holder(fd: int) -> Holder | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        return Holder(**json.loads(text)) if text else None
    except (OSError, ValueError, TypeError):
        return None


def _open(home: Path) -> int:
    home = Path(home)
    if home.exists() and not home.is_dir():
        raise NotADirectoryError(f"KEEL_HOME {home} is a file, not a folder")
    home.mkdir(parents=True, exist_ok=True)
    return os.open(lock_path(home), os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def hold(
    home: Path, command: str, timeout: float | None = None, on_wait: Callable[[str], None] | None = None,
) -> Iterator[Holder]:
    """Hold ``home`` for writing as ``command`` while the block runs.

    Waits up to ``timeout`` seconds (default: :func:`default_timeout`) for another holder,
    telling ``on_wait`` once whom it waits for, then raises :class:`HomeBusy`. Re-entrant
    within this process."""
    key = Path(home).resolve()
    with _guard:
        held = _held.get(key)
        if held is not None:
            held.depth += 1
    if held is not None:
        try:
            yield held.holder
        finally:
            with _guard:
                held.depth -= 1
        return

    fd = _open(key)
    try:
        limit = default_timeout() if timeout is None else timeout
        started = time.monotonic()
        told = False
        while not _try_lock(fd):
            waited = time.monotonic() - started
            if waited >= limit:
                raise HomeBusy(key, _read_holder(fd), waited)
            if on_wait is not None and not told:
                holder = _read_holder(fd)
                who = holder.describe() if holder else "another process"
                on_wait(f"waiting up to {limit:.0f} s for {who}, which is writing the Keel home {key}")
                told = True
            time.sleep(_POLL_S)
        holder = Holder(command=command, pid=os.getpid(), host=socket.gethostname(),
                        since=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    held = _Held(fd, 1, holder)
    with _guard:
        _held[key] = held
    try:
        yield holder
    finally:
        with _guard:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _held[key]
        if last:
            # Cleared before it is released, so the file never names a holder that has gone.
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)


def busy(home: Path) -> Holder | None:
    """The holder of ``home`` when another process holds it; None when it is free or held
    by this process. Creates nothing under a home that does not exist."""
    key = Path(home).resolve()
    with _guard:
        if key in _held:
            return None
    path = lock_path(key)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read_holder(fd) or Holder("another process", 0, "?", "?")
    finally:
        os.close(fd)


def held_here(home: Path) -> bool:
    """Whether this process holds ``home``."""
    with _guard:
        return Path(home).resolve() in _held
