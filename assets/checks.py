"""The latest result of every asset check, kept in the warehouse for ``keel status``.

The data gates write ``audit.check_results`` themselves; the other checks (dbt tests,
feature_skew, the promotion gates, the monitoring checks) hand their results here as they
yield them, wherever the run was launched (``keel run``, the sensors, the UI).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg

from keel.core.warehouse import record_checks
from resources.keel_state import KeelState

CheckResult = dg.AssetCheckResult | dg.AssetCheckEvaluation


def _run_partition(context) -> str | None:
    """The partition Dagster gives a plain check result: the run's, when it is one day."""
    op_context = getattr(context, "op_execution_context", context)
    return op_context.partition_key if op_context.has_partition_key else None


def check_rows(context, kind: str, results: Iterable[CheckResult], asset: dg.AssetKey | None = None,
               blocking: bool | None = None) -> list[tuple]:
    """Rows of ``audit.asset_checks`` for ``results`` (``asset``: the key of results that
    name none, as inside a ``MaterializeResult``; ``blocking``: the specs' setting)."""
    op_context = getattr(context, "op_execution_context", context)
    specs = {}
    if blocking is None and op_context.has_assets_def:
        specs = {spec.key: spec.blocking for spec in op_context.assets_def.check_specs}
    rows = []
    partition = None
    for result in results:
        key = result.asset_key or asset
        if isinstance(result, dg.AssetCheckEvaluation):
            day, is_blocking = result.partition, result.blocking
        else:
            if partition is None:
                partition = _run_partition(context) or ""
            day = partition or None
            is_blocking = blocking if blocking is not None else specs.get(dg.AssetCheckKey(key, result.check_name), False)
        severity = result.severity.value if result.severity is not None else "ERROR"
        rows.append((key.to_user_string(), day, result.check_name, kind, bool(result.passed), severity,
                     bool(is_blocking), result.description or "", op_context.run_id))
    return rows


def record(keel: KeelState, context, kind: str, results: Iterable[CheckResult],
           asset: dg.AssetKey | None = None, blocking: bool | None = None) -> None:
    rows = check_rows(context, kind, results, asset, blocking)
    if rows:
        with keel.warehouse() as con:
            record_checks(con, rows)


def recorded(keel: KeelState, context, kind: str, events: Iterable[Any], blocking: bool | None = None) -> Iterator[Any]:
    """``events`` unchanged, their check results recorded once the stream ends (a dbt build
    holds the warehouse until then)."""
    results: list[CheckResult] = []
    try:
        for event in events:
            if isinstance(event, (dg.AssetCheckResult, dg.AssetCheckEvaluation)):
                results.append(event)
            yield event
    finally:
        record(keel, context, kind, results, blocking=blocking)
