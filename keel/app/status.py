"""What Keel's state holds: counts per table and partition, and the latest result of every
asset check (``kind``: gate, dbt_test, feature_skew, promotion, monitoring), per partition
where the check has one."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

from keel.core.warehouse import CHECK_KINDS, connect_for_reading, ident
from keel.ml.lineage import dbt_manifest
from keel.ml.predictions import served_date_column
from keel.ml.scoring import degraded_day_column
from keel.monitoring.outcomes import summary as served_summary
from keel.monitoring.retraining import decisions
from keel.render.terminal import dbt_test_titles

TIERS = ("primary", "fallback", "baseline")

UNPARTITIONED = "unpartitioned"


def collect(warehouse: Path, start=None, end=None) -> dict:
    """The ``keel status --json`` document (other stages add their own keys; the models come
    from the registry, see :func:`collect_models`)."""
    doc: dict = {"tables": {}, "checks": [], "predictions": {}, "degraded": [], "monitoring": {}, "retraining": [],
                 "served_performance": None}
    if not warehouse.exists():
        return doc
    with connect_for_reading(warehouse) as con:
        tables = {r[0] for r in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables").fetchall()}
        if "audit.partition_stats" not in tables:
            return doc
        window = "(? is null or partition_date >= ?) and (? is null or partition_date <= ?)"
        params = [start, start, end, end]
        for table, partition, landed, valid, quarantined, unparsed, lines in con.execute(
            "select table_name, partition_date, landed, valid, quarantined, unparsed, lines "
            "from audit.partition_stats "
            f"where partition_date is null or ({window}) order by table_name, partition_date",
            params,
        ).fetchall():
            key = partition.isoformat() if partition else UNPARTITIONED
            doc["tables"].setdefault(table, {})[key] = {
                "landed": landed, "valid": valid, "quarantined": quarantined,
                "unparsed": unparsed, "lines": lines,
            }
        for table, partition, name, passed, blocking, message in con.execute(
            "select table_name, partition_date, check_name, passed, blocking, message "
            f"from audit.check_results where partition_date is null or ({window}) "
            "order by table_name, partition_date, check_name",
            params,
        ).fetchall():
            doc["checks"].append({
                "kind": "gate",
                "asset": f"validated/{table}",
                "partition": partition.isoformat() if partition else None,
                "name": name,
                "passed": bool(passed),
                "blocking": bool(blocking),
                "severity": "ERROR" if blocking else "WARN",
                "message": message,
            })
        if "audit.asset_checks" in tables:
            for kind, asset, partition, name, passed, blocking, severity, message in con.execute(
                "select kind, asset_key, partition_date, check_name, passed, blocking, severity, message "
                f"from audit.asset_checks where partition_date is null or ({window}) "
                "order by kind, asset_key, partition_date nulls first, check_name",
                params,
            ).fetchall():
                doc["checks"].append({
                    "kind": kind,
                    "asset": asset,
                    "partition": partition.isoformat() if partition else None,
                    "name": name,
                    "passed": bool(passed),
                    "blocking": bool(blocking),
                    "severity": severity,
                    "message": message,
                })
        if "serving.predictions" in tables:
            date = ident(served_date_column(con))
            for day, tier, rows in con.execute(
                f"select {date}, tier, count(*) from serving.predictions "
                f"where (? is null or {date} >= ?) and (? is null or {date} <= ?) "
                "group by all order by all",
                params,
            ).fetchall():
                counts = doc["predictions"].setdefault(day.isoformat(), {t: 0 for t in TIERS})
                counts[tier] = int(rows)
        if "serving.degraded_days" in tables:
            day = ident(degraded_day_column(con))
            doc["degraded"] = [
                {"day": day.isoformat(), "rows": rows, "share_below_primary": share, "reason": reason,
                 "rows_per_tier": dict(zip(TIERS, (primary, fallback, baseline)))}
                for day, rows, primary, fallback, baseline, share, reason in con.execute(
                    f"select {day}, rows, rows_primary, rows_fallback, rows_baseline, share_below_primary, "
                    "reason from serving.degraded_days "
                    f"where (? is null or {day} >= ?) and (? is null or {day} <= ?) order by 1",
                    params,
                ).fetchall()
            ]
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
        if "monitoring.served_performance" in tables:
            doc["served_performance"] = served_summary(con, start, end)
        if "audit.retrain_decisions" in tables:
            doc["retraining"] = [
                {k: d[k] for k in ("day", "retrain", "fired", "blocked_by_cooldown", "reasons",
                                   "champion_version", "training_window")}
                for d in decisions(con, start, end)
            ]
    return doc


def degraded_lines(degraded: list[dict], limit: int = 5) -> list[str]:
    """The days scored below the primary tier, and why (``keel status --json``'s degraded)."""
    if not degraded:
        return []
    rows = sum(d["rows"] for d in degraded)
    below = sum(d["rows"] - d["rows_per_tier"]["primary"] for d in degraded)
    lines = [f"DEGRADED: {len(degraded)} day(s) scored below the primary tier ({below:,} of their {rows:,} rows)"]
    for d in degraded[:limit]:
        tiers = ", ".join(f"{t} {n:,}" for t, n in d["rows_per_tier"].items() if n)
        lines.append(f"  {d['day']} {d['share_below_primary']:.0%} below primary ({tiers}): {d['reason']}")
    if len(degraded) > limit:
        lines.append(f"  ... and {len(degraded) - limit} more day(s): keel status --json")
    return lines


def checks_by_kind(checks: Sequence[dict]) -> dict[str, dict[str, int]]:
    """passed / warned / failed per kind, in ``CHECK_KINDS`` order: a failed check of WARN
    severity warns."""
    summary: dict[str, dict[str, int]] = {}
    for kind in CHECK_KINDS:
        chosen = [c for c in checks if c["kind"] == kind]
        if chosen:
            warned = sum(not c["passed"] and c["severity"] != "ERROR" for c in chosen)
            failed = sum(not c["passed"] and c["severity"] == "ERROR" for c in chosen)
            summary[kind] = {"passed": len(chosen) - warned - failed, "warned": warned, "failed": failed}
    return summary


def check_titles(manifest: Path | None = None) -> dict[str, str]:
    """A person's name for every dbt test, by its check name (empty without a manifest)."""
    manifest = manifest or dbt_manifest()
    if not manifest.exists():
        return {}
    return dbt_test_titles(json.loads(manifest.read_text()))


KEY_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")


def collect_models(registry, names: Sequence[str]) -> dict:
    """Per registered model: its aliases and versions, oldest first, each with its version,
    run id, creation time (UTC), aliases, test-set metrics (``KEY_METRICS``, None when
    undefined) and gate verdict. ``registry`` is a configured keel.registry.store."""
    # MLflow loads only when a registry exists (about a second that `keel status` on a new home skips).
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
