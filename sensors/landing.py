"""The landing-zone sensor: every new or rewritten file is ingested exactly once.

The cursor records the version (size and modification time) of every file it has handed to
a run, and the days it has reported missing. New and changed days are requested in
contiguous ranges, each a single run; a day that is missing while later days have landed is
requested once so that its ``landed_on_time`` gate fails where people look, and requested
again when its file finally arrives.
"""


import datetime as dt
import hashlib
import json

import dagster as dg
import duckdb

from sensors.jobs import ingest_daily_job, ingest_snapshots_job
from keel.landing import scan
from keel.settings import range_tags
from keel.warehouse import connect
from resources.keel_state import KeelState



def contiguous_ranges(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if ranges and day - ranges[-1][1] == dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def plan_runs(
    files: dict[str, tuple[str, dt.date | None]],
    cursor: dict,
    calendar_start: dt.date,
) -> tuple[list[tuple[dt.date, dt.date]], bool, dict]:
    """Decide which day ranges and whether the snapshots need a run; return the new cursor.

    ``files`` maps each landed file's relative path to (version, day or None for snapshots).
    """
    seen: dict[str, str] = cursor.get("files", {})
    reported_missing: set[str] = set(cursor.get("missing", []))
    changed = {path for path, (version, _) in files.items() if seen.get(path) != version}
    days = {files[p][1] for p in changed if files[p][1] is not None}
    snapshots_changed = any(files[p][1] is None for p in changed)

    landed_days = {day for _, day in files.values() if day is not None}
    missing_now: set[str] = set()
    if landed_days:
        # Gaps count from the first day that landed: a deployment that starts mid-year is
        # not missing the months before it.
        day = max(calendar_start, min(landed_days))
        while day < max(landed_days):
            if day not in landed_days:
                missing_now.add(day.isoformat())
            day += dt.timedelta(days=1)
    days |= {dt.date.fromisoformat(d) for d in missing_now - reported_missing}

    new_cursor = {
        "files": {path: version for path, (version, _) in files.items()},
        "missing": sorted(missing_now),
    }
    return contiguous_ranges(list(days)), snapshots_changed, new_cursor


def _loaded_versions(keel: KeelState) -> dict[str, str]:
    """File versions the warehouse already holds, so a fresh sensor does not reload them."""
    if not keel.paths.warehouse.exists():
        return {}
    try:
        with connect(keel.paths.warehouse, read_only=True) as con:
            return dict(con.execute(
                "select source_file, file_version from raw._files where file_present and file_version is not null"
            ).fetchall())
    except duckdb.Error:
        # Busy (a run is writing) or not created yet: start from nothing; loads are idempotent.
        return {}


@dg.sensor(
    jobs=[ingest_daily_job, ingest_snapshots_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests ingestion runs for landing files that arrived or changed, and for missing days.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, keel: KeelState) -> dg.SensorResult:
    usecase = keel.usecase
    landing = keel.paths.landing
    # A day counts as landed when any of its daily tables landed; each table's own
    # landed_on_time gate then reports which of its files is missing.
    files = {
        f.relative_to(landing): (f.version, f.partition)
        for f in scan(landing, list(usecase.tables))
    }
    cursor = json.loads(context.cursor) if context.cursor else {"files": _loaded_versions(keel)}
    ranges, snapshots_changed, new_cursor = plan_runs(files, cursor, usecase.start)
    requests = []
    if snapshots_changed:
        versions = sorted(v for v, day in files.values() if day is None)
        requests.append(
            dg.RunRequest(
                job_name=ingest_snapshots_job.name,
                run_key="snapshots:" + hashlib.sha256("|".join(versions).encode()).hexdigest()[:16],
            )
        )
    for first, last in ranges:
        versions = sorted(
            f"{path}={version}" for path, (version, day) in files.items()
            if day is not None and first <= day <= last
        )
        digest = hashlib.sha256("|".join(versions).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                job_name=ingest_daily_job.name,
                run_key=f"days:{first}:{last}:{digest}",
                tags=range_tags(first, last),
            )
        )
    if requests:
        context.log.info(f"requesting {len(requests)} run(s): {[r.run_key for r in requests]}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor))
