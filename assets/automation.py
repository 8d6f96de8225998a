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

import dagster as dg

AC = dg.AutomationCondition


def daily_refresh(ignore: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """Eager for a day-partitioned asset, on every day of the calendar whose upstream day
    was updated, however late it landed.

    No time window: Dagster measures ``in_latest_time_window`` from the partitions' last
    window (or the clock), not from the newest day that landed, so a calendar of past days
    (2013 in the demo) never qualified under the real daemon and a landed day stopped at
    ingestion. Old days refresh only when their own upstream day changes: ``ignore`` names
    upstream assets whose updates must not refresh every day (a new champion scores the days
    to come, it does not rewrite what was served before it; a rebuilt view does not rebuild
    the history that read it).
    """
    condition = (
        (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("daily_refresh")
    return condition.ignore(ignore) if ignore is not None else condition


def with_its_asset() -> dg.AutomationCondition:
    """For an asset check: requested whenever automation requests its asset, so it runs in
    the same run (a blocking check still stops the steps below it), and never on its own.

    Without a condition of its own a check is left out of the runs that automation launches
    for one partition: under the daemon a day that landed alone was built, scored and
    monitored without one feature check, dbt test or skew check."""
    return AC.any_deps_match(AC.will_be_requested()).with_label("with_its_asset")


def checked_with_its_asset(spec: dg.AssetCheckSpec) -> dg.AssetCheckSpec:
    """``spec`` with the ``with_its_asset`` condition (for specs built elsewhere, such as dbt's)."""
    return dg.AssetCheckSpec(
        spec.name, asset=spec.asset_key, description=spec.description,
        additional_deps=spec.additional_deps, blocking=spec.blocking, metadata=spec.metadata,
        automation_condition=with_its_asset(), partitions_def=spec.partitions_def,
    )


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
