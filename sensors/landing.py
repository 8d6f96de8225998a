"""The landing-zone sensor: every new or rewritten file is ingested exactly once.

The cursor records the version (size and modification time) of every file it has handed to
a run, and the days it has reported missing. New and changed days are requested in
contiguous ranges, each a single run; a day that is missing while later days have landed is
requested once so that its ``landed_on_time`` gate fails where people look, and requested
again when its file finally arrives.

A run that ends without ingesting its files (it crashed, or was killed) is requested again on
a later tick, up to ``MAX_RETRIES`` times: the cursor keeps each request until the warehouse
holds its files at the requested version with their gates evaluated. A file that was
ingested and failed a gate is not requested again; its verdict stands until it changes.
"""


import datetime as dt
import hashlib
import json

import dagster as dg
import duckdb

from sensors.jobs import ingest_daily_job, ingest_snapshots_job
from keel.data.landing import scan
from keel.core.dates import contiguous_ranges
from keel.core.lock import busy
from keel.core.settings import range_tags
from keel.core.warehouse import READER, WarehouseBusy, connect_for_reading
from resources.keel_state import RUN_HOLDER, KeelState

MAX_RETRIES = 3
# The tag Dagster gives every run a sensor requests, naming the request's run key.
RUN_KEY_TAG = "dagster/run_key"


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


def plan_retries(
    pending: dict[str, dict],
    files: dict[str, tuple[str, dt.date | None]],
    ingested: dict[str, str] | None,
    finished: set[str],
) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Which earlier requests to make again: (retries by new run key, still pending, given up).

    ``pending`` maps a run key to its request (``job``, ``tags``, ``files`` {path: version},
    ``attempt``); ``ingested`` maps each file the warehouse holds, gated, to its version (None
    when the warehouse is busy: decide on a later tick); ``finished`` holds the run keys whose
    run has ended. A file rewritten since its request is left to the request for its new version.
    """
    if ingested is None:
        return {}, pending, []
    retries, keep, gave_up = {}, {}, []
    for key, request in pending.items():
        waiting = {
            path: version for path, version in request["files"].items()
            if path in files and files[path][0] == version and ingested.get(path) != version
        }
        if not waiting:
            continue
        if key not in finished:
            keep[key] = request
        elif request["attempt"] >= MAX_RETRIES:
            gave_up.append(key)
        else:
            attempt = request["attempt"] + 1
            retries[f"{key.split(':retry')[0]}:retry{attempt}"] = {**request, "attempt": attempt}
    return retries, keep, gave_up


def _ingested_versions(keel: KeelState) -> dict[str, str] | None:
    """Per landed file, the version the warehouse holds with its gates evaluated since it was
    loaded; None when the warehouse cannot be read now (a run is writing it)."""
    if not keel.paths.warehouse.exists():
        return {}
    try:
        with connect_for_reading(keel.paths.warehouse, wait_s=1) as con:
            return dict(con.execute(
                "select f.source_file, f.file_version from raw._files f "
                "where f.file_present and f.file_version is not null and exists ("
                "select 1 from audit.gate_status g where g.table_name = f.table_name "
                "and g.partition_date is not distinct from f.partition_date and g.evaluated_at >= f.loaded_at)"
            ).fetchall())
    except (WarehouseBusy, duckdb.Error):
        return None


def _finished_runs(instance: dg.DagsterInstance, run_keys: list[str]) -> set[str]:
    finished = set()
    for key in run_keys:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key}), limit=1)
        if runs and runs[0].is_finished:
            finished.add(key)
    return finished


@dg.sensor(
    jobs=[ingest_daily_job, ingest_snapshots_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests ingestion runs for landing files that arrived or changed, and for missing days.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, keel: KeelState) -> dg.SensorResult | dg.SkipReason:
    holder = busy(keel.paths.home)
    if holder is not None and not holder.command.startswith((RUN_HOLDER, READER)):
        # keel run lands and ingests its own files; files seen now would be ingested twice.
        # A run of the daemon itself is no reason to wait (the runs requested now queue behind
        # it), nor is a reader.
        return dg.SkipReason(f"{holder.describe()} is writing the Keel home; looking again next tick")
    usecase = keel.usecase
    landing = keel.paths.landing
    # A day counts as landed when any of its daily tables landed; each table's own
    # landed_on_time gate then reports which of its files is missing.
    files = {
        f.relative_to(landing): (f.version, f.partition)
        for f in scan(landing, list(usecase.tables))
    }
    ingested = _ingested_versions(keel)
    # Busy (a run is writing) or not created yet: start from nothing; loads are idempotent.
    cursor = json.loads(context.cursor) if context.cursor else {"files": ingested or {}}
    ranges, snapshots_changed, new_cursor = plan_runs(files, cursor, usecase.start)
    pending = cursor.get("pending", {})
    retries, pending, gave_up = plan_retries(
        pending, files, ingested, _finished_runs(context.instance, list(pending))
    )
    for key in gave_up:
        context.log.error(
            f"run {key} ended {MAX_RETRIES + 1} times without ingesting its files; not retrying. "
            "Rewrite the files or run `keel run` over their days to try again."
        )
    requested: dict[str, dict] = {}
    if snapshots_changed:
        snapshot_files = {path: v for path, (v, day) in files.items() if day is None}
        digest = hashlib.sha256("|".join(sorted(snapshot_files.values())).encode()).hexdigest()[:16]
        requested["snapshots:" + digest] = {
            "job": ingest_snapshots_job.name, "tags": {}, "files": snapshot_files, "attempt": 0,
        }
    for first, last in ranges:
        day_files = {
            path: version for path, (version, day) in files.items()
            if day is not None and first <= day <= last
        }
        digest = hashlib.sha256("|".join(sorted(f"{p}={v}" for p, v in day_files.items())).encode()).hexdigest()[:16]
        requested[f"days:{first}:{last}:{digest}"] = {
            "job": ingest_daily_job.name, "tags": range_tags(first, last), "files": day_files, "attempt": 0,
        }
    if retries:
        context.log.warning(f"requesting again run(s) that ended without ingesting their files: {sorted(retries)}")
    requested.update(retries)
    requests = [
        dg.RunRequest(job_name=r["job"], run_key=key, tags=r["tags"] or None) for key, r in requested.items()
    ]
    if requests:
        context.log.info(f"requesting {len(requests)} run(s): {[r.run_key for r in requests]}")
    new_cursor["pending"] = {**pending, **{key: r for key, r in requested.items() if r["files"]}}
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor))
