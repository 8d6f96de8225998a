"""Appending to a log file so that what was acknowledged survives a crash."""
from __future__ import annotations

import os
from pathlib import Path


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) and fsync it before returning: a
    ``kill -9`` or a power loss after this call loses none of it."""
    created = not os.path.exists(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:  # the new file's name is durable once its folder is
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
