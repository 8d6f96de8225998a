"""What a killed process left behind, repaired at the start of every ``keel`` command.

Three things can be left halfway by a kill -9:

* a move of the champion model set (``keel.registry.model_set``): its intent is recorded
  first, so it is completed or undone here;
* a transition of a staged rollout (``keel.registry.rollout``): its intent (the decision) is
  recorded first, so it is completed here;
* a Dagster run whose process died: Dagster's default run launcher cannot see that, so the
  run would stay STARTED and hold the one run slot. A STARTED run whose process is gone
  (``keel.core.process``; the process id comes from Keel's run tags, else from the run's own
  "process (pid: N)" event) is reported failed here, saying why.

Both start with a look at the local SQLite files that costs milliseconds, and load MLflow or
Dagster (seconds) only when there is something to repair or the stores are not Keel's local
files. Nothing is created: a home that does not exist has nothing to recover.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from keel.core import config, env, process
from keel.core.settings import KeelPaths, dagster_yaml_is_keels
from keel.registry.model_set import INTENT_TAG
from keel.registry.rollout import INTENT_TAG as ROLLOUT_INTENT_TAG


def recover(paths: KeelPaths, usecase_name: str) -> list[str]:
    """Repair what a killed process left in this home; one line per repair."""
    lines = []
    intent = recover_model_set(paths, usecase_name)
    if intent:
        lines.append(intent)
    lines += fail_dead_runs(_dagster_home(paths))
    return lines


def _dagster_home(paths: KeelPaths) -> Path:
    return Path(env.get(env.DAGSTER_HOME) or paths.dagster_home)


# --------------------------------------------------------------------------------------------
# The champion model set


def _intent_may_be_pending(store: Path, tags: tuple[str, ...] = (INTENT_TAG, ROLLOUT_INTENT_TAG)) -> bool:
    """False only when the local MLflow store certainly holds no intent (or no store)."""
    if not store.exists():
        return False
    try:
        con = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)
        try:
            return con.execute(f"select count(*) from registered_model_tags where key in ({', '.join('?' * len(tags))})",
                               list(tags)).fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return True  # not a store this look understands: open it properly


def recover_model_set(paths: KeelPaths, usecase_name: str) -> str | None:
    where = config.at(paths.home).tracking
    if where.local_store is not None and not _intent_may_be_pending(where.local_store):
        return None
    if not where.exists():
        return None
    # MLflow takes seconds to load; only a store that may need repair pays for it.
    from keel.registry import model_set, rollout
    from keel.registry.promotion import registered_names
    from keel.registry.tracking import open_registry

    registry, names = open_registry(where), registered_names(usecase_name)
    lines = [line for line in (model_set.recover(registry, names), rollout.recover(registry, names)) if line]
    return "; ".join(lines) or None


# --------------------------------------------------------------------------------------------
# Dagster runs of dead processes


def _started_runs_possible(dagster_home: Path) -> bool:
    """False only when the instance's default run storage certainly holds no STARTED run."""
    config = dagster_home / "dagster.yaml"
    if config.exists() and not dagster_yaml_is_keels(config) and "storage" in config.read_text(errors="replace"):
        return True  # runs are stored elsewhere: ask Dagster
    runs = dagster_home / "history" / "runs.db"
    if not runs.exists():
        return False
    try:
        con = sqlite3.connect(f"{runs.as_uri()}?mode=ro", uri=True)
        try:
            return con.execute("select count(*) from runs where status = 'STARTED'").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return True


def fail_dead_runs(dagster_home: Path) -> list[str]:
    """Report failed every STARTED run of this instance whose process is gone."""
    if not _started_runs_possible(dagster_home):
        return []
    # Dagster takes seconds to load; only an instance with a STARTED run pays for it.
    import dagster as dg

    previous = env.get(env.DAGSTER_HOME)
    env.set_value(env.DAGSTER_HOME, str(dagster_home))
    try:
        instance = dg.DagsterInstance.get()
        lines = []
        records = instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        for record in records:
            why = _why_dead(instance, record)
            if why is None:
                continue
            run = record.dagster_run
            instance.report_run_failed(run, message=f"Keel marked this run failed: {why}")
            lines.append(f"run {run.run_id[:8]} of {run.job_name} was left STARTED; {why}: marked failed")
        return lines
    finally:
        if previous is None:
            env.unset(env.DAGSTER_HOME)
        else:
            env.set_value(env.DAGSTER_HOME, previous)


def _why_dead(instance, record) -> str | None:
    """Why the process of a STARTED run is known to be gone; None while it may be alive."""
    tags = record.dagster_run.tags
    if process.PID_TAG in tags:
        if tags.get(process.HOST_TAG) != process.this_host():
            return None  # another machine's process: not ours to judge
        pid = int(tags[process.PID_TAG])
        started = float(tags[process.STARTED_TAG]) if process.STARTED_TAG in tags else None
        return None if process.alive(pid, started) else f"its process {pid} is gone"
    pid = _worker_pid(instance, record.dagster_run.run_id)
    if pid is None:
        return None
    begun = record.start_time or record.create_timestamp.timestamp()
    return None if process.alive(pid, not_after=begun) else f"its process {pid} is gone"


def _worker_pid(instance, run_id: str) -> int | None:
    """The process id a run's own engine event names (Dagster's run worker and in-process
    executor both record it)."""
    # Dagster is loaded by the caller already; this names its event type.
    import dagster as dg

    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            return int(pid.value)
    return None
