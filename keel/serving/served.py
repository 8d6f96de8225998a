"""Served predictions in the warehouse, and the skew between what was served and the mart.

``serving.online_predictions`` holds one row per answer the API logged (``keel.serving.logs``):
the request id, the key and date columns of the deployment's ``ModelSpec``, score, tier and
versions, latency, and the feature vector as served (JSON). Loading a day replaces that day.

``serving.online_shadow_predictions`` holds, the same way, one row per score a rollout's shadow
candidate logged (``serving/shadow/``): never an answer, always beside the champion's answer
to the same request.

``served_skew`` compares each served feature vector with the feature mart's row for the same
key, feature by feature: numbers within ``rel_tol`` (floating-point noise), everything else
exactly, null equal to null. A served key the mart does not hold is reported as such.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from keel.core.spec import ModelSpec
from keel.core.warehouse import ident, replace_rows

MISMATCH_COLUMNS = ("request_id", "key", "feature", "kind", "served", "mart")


def _ddl(spec: ModelSpec) -> list[str]:
    return [
        "create schema if not exists serving",
        f"""create table if not exists serving.online_predictions (
            request_id varchar, {ident(spec.key)} varchar, {ident(spec.date_column)} date, score double,
            tier varchar, model_name varchar, model_version integer, snapshot_version varchar,
            features_as_of varchar, latency_us double, served_at timestamp, features json)""",
    ]


def load_served(con: duckdb.DuckDBPyConnection, spec: ModelSpec, records: Sequence[dict[str, Any]],
                days: Sequence[dt.date]) -> int:
    """Replace ``days`` of serving.online_predictions with the logged ``records`` of those days;
    returns the rows written."""
    for statement in _ddl(spec):
        con.execute(statement)
    wanted = {d.isoformat() for d in days}
    rows = [r for r in records if r["date"] in wanted]
    frame = pd.DataFrame({
        "request_id": [r["request_id"] for r in rows],
        "key": [r["key"] for r in rows],
        "day": pd.to_datetime(pd.Series([r["date"] for r in rows], dtype=object)).dt.date,
        "score": np.array([r["score"] for r in rows], dtype=np.float64),
        "tier": [r["tier"] for r in rows],
        "model_name": [r["model_name"] for r in rows],
        "model_version": pd.array([r["model_version"] for r in rows], dtype="Int32"),
        "snapshot_version": [r["snapshot_version"] for r in rows],
        "features_as_of": [r["features_as_of"] for r in rows],
        "latency_us": np.array([r["latency_us"] for r in rows], dtype=np.float64),
        "served_at": pd.to_datetime(pd.Series([r["served_at"] for r in rows], dtype=object), utc=True).dt.tz_convert(None),
        "features": [json.dumps(r["features"], sort_keys=True) for r in rows],
    })
    return replace_rows(
        con, "serving.online_predictions",
        "request_id, key, day, score, tier, model_name, model_version, snapshot_version, features_as_of, "
        "latency_us, served_at, features",
        frame, f"{ident(spec.date_column)} between ? and ?", [min(days), max(days)],
    )


def _shadow_ddl(spec: ModelSpec) -> list[str]:
    return [
        "create schema if not exists serving",
        f"""create table if not exists serving.online_shadow_predictions (
            request_id varchar, {ident(spec.key)} varchar, {ident(spec.date_column)} date, rollout_id varchar,
            score double, tier varchar, model_name varchar, model_version integer, error boolean,
            failures json, latency_us double, champion_score double, champion_tier varchar,
            champion_latency_us double, served_at timestamp, scored_at timestamp)""",
    ]


def load_shadow(con: duckdb.DuckDBPyConnection, spec: ModelSpec, records: Sequence[dict[str, Any]],
                days: Sequence[dt.date]) -> int:
    """Replace ``days`` of serving.online_shadow_predictions with the shadow log's ``records``
    of those days; returns the rows written."""
    for statement in _shadow_ddl(spec):
        con.execute(statement)
    wanted = {d.isoformat() for d in days}
    rows = [r for r in records if r["date"] in wanted]

    def moments(field: str) -> pd.Series:
        return pd.to_datetime(pd.Series([r[field] for r in rows], dtype=object), utc=True).dt.tz_convert(None)

    frame = pd.DataFrame({
        "request_id": [r["request_id"] for r in rows],
        "key": [r["key"] for r in rows],
        "day": pd.to_datetime(pd.Series([r["date"] for r in rows], dtype=object)).dt.date,
        "rollout_id": [r["rollout_id"] for r in rows],
        "score": np.array([np.nan if r["score"] is None else r["score"] for r in rows], dtype=np.float64),
        "tier": [r["tier"] for r in rows],
        "model_name": [r["model_name"] for r in rows],
        "model_version": pd.array([r["model_version"] for r in rows], dtype="Int32"),
        "error": [bool(r["error"]) for r in rows],
        "failures": [json.dumps(r["failures"]) for r in rows],
        "latency_us": np.array([r["latency_us"] for r in rows], dtype=np.float64),
        "champion_score": np.array([r["champion_score"] for r in rows], dtype=np.float64),
        "champion_tier": [r["champion_tier"] for r in rows],
        "champion_latency_us": np.array([r["champion_latency_us"] for r in rows], dtype=np.float64),
        "served_at": moments("served_at"),
        "scored_at": moments("scored_at"),
    })
    return replace_rows(
        con, "serving.online_shadow_predictions",
        "request_id, key, day, rollout_id, score, tier, model_name, model_version, error, failures, latency_us, "
        "champion_score, champion_tier, champion_latency_us, served_at, scored_at",
        frame, f"{ident(spec.date_column)} between ? and ?", [min(days), max(days)],
    )


def served_skew(con: duckdb.DuckDBPyConnection, spec: ModelSpec, day: dt.date,
                rel_tol: float = 1e-9) -> tuple[int, pd.DataFrame]:
    """(answers compared, differences) of ``day``'s served feature vectors against the mart."""
    served = con.execute(
        f"select request_id, {ident(spec.key)}, features from serving.online_predictions "
        f"where {ident(spec.date_column)} = ? order by served_at, request_id", [day]).fetchall()
    schema, table = spec.features_relation.split(".")
    mart = con.execute(
        f"select * from {ident(schema)}.{ident(table)} where {ident(spec.date_column)} = ?", [day]
    ).df().set_index(spec.key)
    mismatches = []
    for request_id, key, features in served:
        vector = json.loads(features)
        if key not in mart.index:
            mismatches.append((request_id, key, None, "missing_row", None, None))
            continue
        row = mart.loc[key]
        for feature in spec.features:
            a, b = vector.get(feature), row[feature] if feature in row.index else None
            if not _same(a, b, rel_tol):
                mismatches.append((request_id, key, feature, "value", a, _plain(b)))
    return len(served), pd.DataFrame(mismatches, columns=list(MISMATCH_COLUMNS))


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _same(served: Any, mart: Any, rel_tol: float) -> bool:
    if _missing(served) or _missing(mart):
        return _missing(served) and _missing(mart)
    if isinstance(mart, (int, float, np.integer, np.floating)) and not isinstance(mart, bool):
        if not isinstance(served, (int, float)) or isinstance(served, bool):
            return False
        a, b = float(served), float(mart)
        return a == b or abs(a - b) <= rel_tol * max(abs(a), abs(b))
    return served == mart


def _plain(value: Any) -> Any:
    if _missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value
