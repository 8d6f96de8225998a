"""The landing zone: where upstream files arrive, one file per table per day.

Layout: ``<landing>/<table>/<YYYY-MM-DD>.csv`` for daily tables and
``<landing>/<table>/<table>.csv`` for snapshot (reference) tables.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from keel.core.spec import TableSpec


@dataclass(frozen=True)
class LandedFile:
    table: str
    partition: dt.date | None
    path: Path
    size: int
    mtime_ns: int

    @property
    def version(self) -> str:
        """Changes whenever the file is rewritten; the landing sensor's cursor keys on it."""
        return f"{self.size}:{self.mtime_ns}"

    def relative_to(self, landing: Path) -> str:
        return self.path.relative_to(landing).as_posix()


def file_for(landing: Path, table: TableSpec, partition: dt.date | None) -> Path:
    if table.partitioned:
        if partition is None:
            raise ValueError(f"{table.name} is daily: a partition date is required")
        return landing / table.name / f"{partition.isoformat()}.csv"
    return landing / table.name / f"{table.name}.csv"


def _stat(table: str, partition: dt.date | None, path: Path) -> LandedFile | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return LandedFile(table, partition, path, st.st_size, st.st_mtime_ns)


def scan(landing: Path, tables: list[TableSpec]) -> list[LandedFile]:
    """Every landed file of the given tables; names that are not a valid day are ignored."""
    found: list[LandedFile] = []
    for table in tables:
        folder = landing / table.name
        if not folder.is_dir():
            continue
        if not table.partitioned:
            landed = _stat(table.name, None, file_for(landing, table, None))
            if landed:
                found.append(landed)
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if not name.endswith(".csv"):
                continue
            try:
                day = dt.date.fromisoformat(name[: -len(".csv")])
            except ValueError:
                continue
            landed = _stat(table.name, day, Path(entry.path))
            if landed:
                found.append(landed)
    return sorted(found, key=lambda f: (f.table, f.partition or dt.date.min))


def write_atomically(path: Path, content: bytes) -> bool:
    """Write ``content`` so that readers never see half a file; skip identical rewrites.

    Returns whether the file changed. Leaving an identical file alone keeps its version,
    so replaying a day twice does not make the sensor reprocess it.
    """
    if path.exists() and path.stat().st_size == len(content) and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
