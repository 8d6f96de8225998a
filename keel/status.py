"""What Keel's state holds: counts per table and partition, and gate results."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from keel.warehouse import connect

TIERS = ("primary", "fallback", "baseline")

UNPARTITIONED = "unpartitioned"


def _read_only(path: Path, attempts: int = 20):
    for attempt in range(attempts):
        try:
            return connect(path, read_only=True)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise RuntimeError(
                    f"the warehouse {path} is held by a running job; try again when it ends"
                ) from exc
            time.sleep(0.5)
    raise AssertionError("unreachable")


def collect(warehouse: Path, start=None, end=None) -> dict:
    """The ``keel status --json`` document (other stages add their own keys; the models come
    from the registry, see :func:`collect_models`)."""
    doc: dict = {"tables": {}, "checks": [], "predictions": {}, "monitoring": {}, "retraining": []}
    if not warehouse.exists():
        return doc
    ctx = _read_only(warehouse)
    with ctx as con:
        tables = {r[0] for r in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables").fetchall()}
        if "audit.partition_stats" not in tables:
            return doc
        window = "(? is null or partition_date >= ?) and (? is null or partition_date <= ?)"
        params = [start, start, end, end]
        for table, partition, landed, valid, quarantined in con.execute(
            "select table_name, partition_date, landed, valid, quarantined from audit.partition_stats "
            f"where partition_date is null or ({window}) order by table_name, partition_date",
            params,
        ).fetchall():
            key = partition.isoformat() if partition else UNPARTITIONED
            doc["tables"].setdefault(table, {})[key] = {
                "landed": landed, "valid": valid, "quarantined": quarantined,
            }
        for table, partition, name, passed, blocking, message in con.execute(
            "select table_name, partition_date, check_name, passed, blocking, message "
            f"from audit.check_results where partition_date is null or ({window}) "
            "order by table_name, partition_date, check_name",
            params,
        ).fetchall():
            doc["checks"].append({
                "asset": f"validated/{table}",
                "partition": partition.isoformat() if partition else None,
                "name": name,
                "passed": bool(passed),
                "blocking": bool(blocking),
                "message": message,
            })
        if "serving.predictions" in tables:
            for day, tier, rows in con.execute(
                "select flight_date, tier, count(*) from serving.predictions "
                "where (? is null or flight_date >= ?) and (? is null or flight_date <= ?) "
                "group by all order by all",
                params,
            ).fetchall():
                counts = doc["predictions"].setdefault(day.isoformat(), {t: 0 for t in TIERS})
                counts[tier] = int(rows)
        if {"monitoring.drift_daily", "monitoring.performance"} <= tables:
            for day, version, share, important, calibrated, drifted, auc, trailing_auc, trailing_rows in con.execute(
                "select coalesce(d.day, p.day), d.model_version, d.share_drifted, d.important_drift_share, "
                "d.calibrated_drift_share, "
                "d.drifted_features, p.roc_auc, p.trailing_roc_auc, p.trailing_rows "
                "from monitoring.drift_daily d full join monitoring.performance p on p.day = d.day "
                "where (? is null or coalesce(d.day, p.day) >= ?) and (? is null or coalesce(d.day, p.day) <= ?) "
                "order by 1",
                params,
            ).fetchall():
                doc["monitoring"][day.isoformat()] = {
                    "model_version": version,
                    "share_drifted": share,
                    "important_drift_share": important,
                    "calibrated_drift_share": calibrated,
                    "drifted_features": json.loads(drifted) if drifted else [],
                    "roc_auc": auc,
                    "trailing_roc_auc": trailing_auc,
                    "trailing_rows": trailing_rows,
                }
        if "audit.retrain_decisions" in tables:
            from keel.retraining import decisions

            doc["retraining"] = [
                {k: d[k] for k in ("day", "retrain", "fired", "blocked_by_cooldown", "reasons",
                                   "champion_version", "training_window")}
                for d in decisions(con, start, end)
            ]
    return doc


KEY_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")


def collect_models(registry, names: Sequence[str]) -> dict:
    """Per registered model: its aliases and versions, oldest first, each with its version,
    run id, creation time (UTC), aliases, test-set metrics (``KEY_METRICS``, None when
    undefined) and gate verdict. ``registry`` is a configured keel.registry."""
    from mlflow.exceptions import MlflowException

    client = registry.client()
    models: dict = {}
    for name in names:
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            continue
        aliases_of: dict[int, list[str]] = {}
        for alias, version in registered.aliases.items():
            aliases_of.setdefault(int(version), []).append(alias)
        versions = []
        # The registry's own filter language; the name comes from the configuration.
        for mv in sorted(client.search_model_versions(filter_string=f"name = '{name}'"), key=lambda v: int(v.version)):
            metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            versions.append({
                "version": int(mv.version),
                "run_id": mv.run_id,
                "created": dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.timezone.utc)
                .isoformat(timespec="seconds"),
                "aliases": sorted(aliases_of.get(int(mv.version), [])),
                **{m: metrics.get(f"test.{m}") for m in KEY_METRICS},
                "gates": mv.tags.get("keel.gates"),
            })
        models[name] = {
            "aliases": {alias: int(v) for alias, v in sorted(registered.aliases.items())},
            "versions": versions,
        }
    return models
