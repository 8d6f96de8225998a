"""The daily partitions every day-by-day asset shares, from the deployment's calendar."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from keel.settings import load_usecase

USECASE = load_usecase()

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=USECASE.start.isoformat(),
    end_date=(USECASE.end + dt.timedelta(days=1)).isoformat(),
    timezone=USECASE.timezone,
)


def partition_dates(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> list[dt.date]:
    """The days a run covers: one day, or a range in a single-run backfill."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]

