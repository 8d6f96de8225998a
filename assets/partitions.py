"""The daily partitions every day-by-day asset shares, from the deployment's calendar."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from keel.core.config import current
from keel.core.spec import UseCase

# The partitions are part of the graph, which Dagster reads once per process: the calendar is
# the deployment's when the definitions load.
USECASE = current().usecase


def partitions_for(usecase: UseCase) -> dg.DailyPartitionsDefinition:
    """One partition per day of the use case's calendar. An open-ended calendar has no end
    date: its partitions run up to today (local), the day in progress included, as
    ``UseCase.days`` does (Dagster's default would stop at the last finished day)."""
    if usecase.end is None:
        return dg.DailyPartitionsDefinition(
            start_date=usecase.start.isoformat(), timezone=usecase.timezone, end_offset=1,
        )
    return dg.DailyPartitionsDefinition(
        start_date=usecase.start.isoformat(),
        end_date=(usecase.end + dt.timedelta(days=1)).isoformat(),
        timezone=usecase.timezone,
    )


daily_partitions = partitions_for(USECASE)


def partition_dates(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> list[dt.date]:
    """The days a run covers: one day, or a range in a single-run backfill."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]
