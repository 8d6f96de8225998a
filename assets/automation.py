"""When assets refresh by themselves: Keel's declarative automation conditions.

Ingestion is started by the landing sensor when a file lands. Everything below it that is
cut by day (the dbt feature mart, the predictions, the monitoring) refreshes the day whose
upstream partitions were updated. Training is not automated here: the retraining trigger
sensor (``sensors/retrain.py``) decides when to retrain.

How the gates still hold: the conditions do not use ``all_deps_blocking_checks_passed``,
because Keel's gates are per-partition checks, whose results Dagster's conditions do not
read yet (1.13: every day would look unchecked and nothing would ever run). Instead a day
that failed a data gate never reaches the features, because the dbt staging models admit
only the days whose latest verdict in ``audit.gate_status`` is passed; and one tick requests
a day's whole chain (features, predictions, monitoring) together, so it runs as one run in
which the blocking feature checks stop the steps below them.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

AC = dg.AutomationCondition

# How far back a day still refreshes by itself. Days that land late (a held-back file, a
# backlog after an outage) flow if they are within this window of the latest day; older
# history is left as it was served and is rebuilt deliberately (keel run, a backfill).
CATCH_UP = dt.timedelta(days=60)


def daily_refresh(ignore: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """Eager for a day-partitioned asset, over the catch-up window rather than only the latest
    day.

    ``ignore`` names upstream assets whose updates must not refresh old days: a new champion
    scores the days to come, it does not rewrite what was served before it.
    """
    condition = (
        AC.in_latest_time_window(CATCH_UP)
        & (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("daily_refresh")
    return condition.ignore(ignore) if ignore is not None else condition


def on_upstream_change(ignore: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """Eager for an unpartitioned asset; ``ignore`` names upstream assets (such as daily
    tables) whose every new day must not rebuild it."""
    condition = AC.eager()
    return condition.ignore(ignore) if ignore is not None else condition


def while_missing_or_upstream_change() -> dg.AutomationCondition:
    """Eager for an unpartitioned asset that must exist whenever its upstream does (a
    champion's monitoring reference): built when its upstream updates, and also on any tick
    that finds it missing, such as the first tick after a deployment trained its first model
    before automation was switched on. A failed build is not retried until upstream changes."""
    missing = (
        AC.missing() & ~AC.any_deps_missing() & ~AC.in_progress() & ~AC.execution_failed()
    ).with_label("missing")
    return (AC.eager() | missing).with_label("while_missing_or_upstream_change")
