"""The ``keel`` command: replay upstream data, run the pipeline, report its state."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from keel.settings import PROJECT_ROOT, load_usecase, prepare_environment, range_tags



def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def cmd_replay(args: argparse.Namespace) -> int:
    from keel.replay import FAULT_KINDS, replay

    if args.list_faults:
        width = max(map(len, FAULT_KINDS))
        for kind, text in FAULT_KINDS.items():
            print(f"{kind:<{width}}  {text}")
        return 0
    paths = prepare_environment()
    usecase = load_usecase()
    start, end = args.start or usecase.start, args.end or args.start or usecase.end
    if (args.fault is None) != (args.fault_date is None):
        print("keel replay: --fault and --fault-date go together", file=sys.stderr)
        return 2
    try:
        report = replay(usecase, paths.landing, start, end, fault=args.fault,
                        fault_date=args.fault_date, fault_table=args.fault_table, seed=args.seed)
    except ValueError as exc:
        print(f"keel replay: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(f"replayed {start}..{end} into {paths.landing}: {len(report.written)} file(s) written, "
              f"{len(report.unchanged)} unchanged")
        if report.fault_file:
            print(f"fault {report.fault!r} written to {report.fault_file}")
        for held in report.held_back:
            print(f"held back {held}: deliver it later with keel replay --start/--end on that day")
    return 0


def _missing_days(usecase, landing: Path, days: list[dt.date]) -> list[dt.date]:
    from keel.landing import file_for

    return [d for d in days if not all(file_for(landing, t, d).exists() for t in usecase.partitioned_tables)]


def run_pipeline(start: dt.date, end: dt.date, out=None, train_threads: int | None = None) -> int:
    """The main job: land what is missing, then ingest, validate and gate ``start..end``,
    build the features of the days that passed, train and gate the models on those days,
    and score them with the champion.

    Exit codes: 0 when every blocking check passed, 1 when a blocking check of ERROR severity
    failed (a data gate held back a day, a dbt test failed, or a promotion gate rejected the
    challenger: the rest still flowed and scoring used the current champion), 2 when a step
    failed for any other reason."""
    out = sys.stdout if out is None else out  # the stream of the call, not of the import
    paths = prepare_environment()
    usecase = load_usecase()
    days = usecase.days(start, end)

    from keel.landing import file_for
    from keel.replay import ReplayReport, replay, write_snapshots
    from sensors.landing import contiguous_ranges

    missing = _missing_days(usecase, paths.landing, days)
    for first, last in contiguous_ranges(missing):
        report = replay(usecase, paths.landing, first, last)
        print(f"landed {first}..{last}: {len(report.written)} file(s) written", file=out)
    if any(not file_for(paths.landing, t, None).exists() for t in usecase.snapshot_tables):
        write_snapshots(usecase, paths.landing, ReplayReport())

    import dagster as dg

    from definitions import defs

    instance = dg.DagsterInstance.get()
    results = [
        defs.resolve_job_def("ingest_snapshots").execute_in_process(instance=instance, raise_on_error=False),
        defs.resolve_job_def("ingest_daily").execute_in_process(
            instance=instance, raise_on_error=False,
            tags=range_tags(days[0], days[-1]),
        ),
    ]

    # Downstream of the gates, each run covers only days whose every daily table passed:
    # within one run a failed gate would stop the downstream steps of every day it covers.
    days_passed = _days_that_passed(paths.warehouse, usecase, days)
    if days_passed:
        results.append(defs.resolve_job_def("build_feature_views").execute_in_process(
            instance=instance, raise_on_error=False))
    for first, last in contiguous_ranges(days_passed):
        results.append(defs.resolve_job_def("build_daily_features").execute_in_process(
            instance=instance, raise_on_error=False,
            tags=range_tags(first, last),
        ))
    feature_results = results[2:]
    models = None
    if days_passed and usecase.model is not None and not _crashed(results):
        models = _run_models(defs, instance, paths, usecase, days, days_passed, train_threads)
        results += models.results

    failed_checks = [
        e for r in results for e in r.get_asset_check_evaluations() if not e.passed and e.blocking
    ]
    downstream_checks = [
        e for r in feature_results for e in r.get_asset_check_evaluations()
    ]
    failed_downstream = [
        e for e in downstream_checks if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    crashed = _crashed(results)

    from keel.status import collect

    doc = collect(paths.warehouse, days[0], days[-1])
    print(f"\nKeel {usecase.name}: {days[0]}..{days[-1]} (KEEL_HOME={paths.home})", file=out)
    for table, partitions in doc["tables"].items():
        landed = sum(p["landed"] for p in partitions.values())
        valid = sum(p["valid"] for p in partitions.values())
        quarantined = sum(p["quarantined"] for p in partitions.values())
        scope = "snapshot" if "unpartitioned" in partitions else f"{len(partitions)} days"
        print(f"  {table:<10} {scope:>9}  landed {landed:>9,}  valid {valid:>9,}  "
              f"quarantined {quarantined:>6,}", file=out)
    passed = sum(c["passed"] for c in doc["checks"])
    print(f"checks: {passed:,} passed, {len(doc['checks']) - passed:,} failed", file=out)
    for check in doc["checks"]:
        if not check["passed"]:
            print(f"  BLOCKED {check['asset']} {check['partition'] or ''} {check['name']}: "
                  f"{check['message']}", file=out)
    if downstream_checks:
        warned = [e for e in downstream_checks if not e.passed and e.severity != dg.AssetCheckSeverity.ERROR]
        print(f"feature checks (dbt tests, feature_skew): "
              f"{len(downstream_checks) - len(failed_downstream) - len(warned):,} passed, "
              f"{len(warned):,} warned, {len(failed_downstream):,} failed", file=out)
        for e in [*failed_downstream, *warned][:20]:
            label = "FAILED" if e in failed_downstream else "WARNED"
            print(f"  {label} {e.asset_key.to_user_string()} {e.partition or ''} {e.check_name}: "
                  f"{e.description or ''}", file=out)
    skipped = sorted(set(days) - set(days_passed))
    if skipped:
        print(f"held back from features: {', '.join(map(str, skipped[:10]))}"
              f"{' ...' if len(skipped) > 10 else ''}", file=out)
    for line in _feature_counts(paths.warehouse, days):
        print(line, file=out)
    if models is not None:
        for line in models.lines:
            print(line, file=out)
    print(f"UI: keel dev, then open http://127.0.0.1:3000 (runs are recorded in {paths.dagster_home})",
          file=out)
    if crashed:
        for r in crashed:
            for event in r.all_events:
                if event.is_step_failure:
                    print(f"error in {event.step_key}: {event.event_specific_data.error.message.strip()}",
                          file=sys.stderr)
        return 2
    return 1 if failed_checks or failed_downstream else 0


def _crashed(results) -> list:
    """Runs with a step that failed for another reason than a blocking check."""
    return [
        r for r in results
        if any(
            e.is_step_failure and "DagsterAssetCheckFailedError" not in (e.event_specific_data.error.cls_name or "")
            for e in r.all_events
        )
    ]


@dataclass
class _ModelRuns:
    """The training and scoring runs of ``keel run``, and the lines that report them."""

    results: list = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _train_threads(requested: int | None) -> int:
    """LightGBM threads for ``keel run``: ``KEEL_TRAIN_THREADS``, else one. Two threads train
    the full year 40% faster on an idle 2-core machine, but measured here 3.7x slower than
    one when both cores were busy elsewhere (OpenMP threads spin at every barrier), and one
    59-day run took 7 minutes instead of 4 s; the model is the same to the bit either way."""
    if requested:
        return requested
    return int(os.environ.get("KEEL_TRAIN_THREADS") or 1)


def _run_models(defs, instance, paths, usecase, days, days_passed, train_threads) -> _ModelRuns:
    """Train on every gated, labelled day of the run's range, then score the gated days."""
    from keel.datasets import labelled_days, split_weeks
    from keel.promotion import alias_or_none, registered_names
    from keel.warehouse import connect
    from sensors.landing import contiguous_ranges

    runs = _ModelRuns()
    spec = usecase.model
    with connect(paths.warehouse, read_only=True) as con:
        labelled = labelled_days(con, spec, days[0], days[-1])
    weeks = split_weeks(labelled)
    names = registered_names(usecase.name)
    runs.lines.append("models:")
    if weeks is None:
        runs.lines.append(f"  training skipped: {labelled} labelled day(s) in {days[0]}..{days[-1]}; "
                          "at least 28 are needed (train, validation and test weeks)")
    elif (same := _champion_trained_on_the_same(paths, spec, names, days, weeks)) is not None:
        runs.lines.append(
            f"  training skipped: champion v{same} was trained on these very rows with this code "
            "(same training-set hash, dbt manifest, lock file and commit)"
        )
    else:
        threads = _train_threads(train_threads)
        run_config = {"ops": {
            "models__training_set": {"config": {
                "start": days[0].isoformat(), "end": days[-1].isoformat(),
                "valid_weeks": weeks, "test_weeks": weeks,
            }},
            "models__primary_model": {"config": {"num_threads": threads}},
            "models__fallback_model": {"config": {"num_threads": threads}},
        }}
        training = defs.resolve_job_def("train_models").execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config,
        )
        runs.results.append(training)
        runs.lines += _training_summary(training)

    registry = _registry_or_none(paths)
    champion = None if registry is None else alias_or_none(registry, names["primary"], registry.CHAMPION)
    if champion is None:
        runs.lines.append("  scoring skipped: no champion model yet")
        return runs
    scored = []
    for first, last in contiguous_ranges(days_passed):
        result = defs.resolve_job_def("score_daily").execute_in_process(
            instance=instance, raise_on_error=False,
            tags=range_tags(first, last),
        )
        runs.results.append(result)
        scored.append(result)
    per_tier: dict[str, int] = {}
    for result in scored:
        for event in result.get_asset_materialization_events():
            meta = event.materialization.metadata
            if "rows_per_tier" in meta:
                for tier, n in meta["rows_per_tier"].value.items():
                    per_tier[tier] = per_tier.get(tier, 0) + n
                break  # one materialization per partition, each with the run's totals
    total = sum(per_tier.values())
    runs.lines.append(
        f"  predictions {total:>9,} rows over {len(days_passed)} days (champion v{champion}): "
        + ", ".join(f"{tier} {n:,}" for tier, n in per_tier.items())
    )
    return runs


def _champion_trained_on_the_same(paths, spec, names, days, weeks) -> int | None:
    """The champion's version when it was trained on exactly what ``keel run`` would train on
    now (the same window, split and rows, from the same clean commit, dbt manifest and lock
    file), so that running ``keel run`` again registers no new, identical model."""
    from keel.datasets import build_training_set
    from keel.lineage import code_lineage
    from keel.promotion import alias_or_none
    from keel.warehouse import connect

    registry = _registry_or_none(paths)
    if registry is None:
        return None
    champion = alias_or_none(registry, names["primary"], registry.CHAMPION)
    if champion is None:
        return None
    lineage = registry.lineage(names["primary"], champion)
    code = code_lineage()
    config = lineage.get("training_config", {})
    if (
        code["git_dirty"] is not False or lineage.get("git_dirty") is not False
        or any(lineage.get(key) != value for key, value in code.items())
        or (config.get("start"), config.get("end")) != (days[0].isoformat(), days[-1].isoformat())
        or (config.get("valid_weeks"), config.get("test_weeks")) != (weeks, weeks)
        or config.get("label_corruption", "none") != "none"
    ):
        return None
    with connect(paths.warehouse, read_only=True) as con:
        training = build_training_set(con, spec, days[0], days[-1], valid_weeks=weeks, test_weeks=weeks)
    return champion if training.meta["training_set_hash"] == lineage.get("training_set_hash") else None


def _training_summary(result) -> list[str]:
    """The training run's models, gate verdicts and promotion decision, as report lines."""
    lines = []
    for node, label in (("models__primary_model", "primary"), ("models__fallback_model", "fallback"),
                        ("models__baseline_model", "baseline")):
        for event in result.asset_materializations_for_node(node):
            meta = {k: v.value for k, v in event.metadata.items()}
            auc = meta.get("test_roc_auc")
            line = f"  {label:<9} {meta['registered_model']:<28} v{meta['model_version']:<4}"
            lines.append(f"{line} test AUC {auc:.4f}" if auc is not None else f"{line} test AUC undefined")
    for event in result.asset_materializations_for_node("models__training_set"):
        meta = {k: v.value for k, v in event.metadata.items()}
        lines.insert(0, f"  trained on {meta['window']}: {meta['rows']:,} rows over {meta['days']} days")
    for event in result.asset_materializations_for_node("models__evaluation_report"):
        meta = {k: v.value for k, v in event.metadata.items()}
        lines.append(f"  holdout {meta['holdout']} ({meta['holdout_rows']:,} rows): "
                     + ", ".join(f"{c} AUC {meta[f'{c}_roc_auc']:.4f}" for c in
                                 ("challenger", "champion", "fallback", "baseline") if f"{c}_roc_auc" in meta))
    checks = result.get_asset_check_evaluations()
    if checks:
        failed = [e for e in checks if not e.passed]
        lines.append(f"promotion gates: {len(checks) - len(failed)} passed, {len(failed)} failed")
        for e in checks:
            lines.append(f"  {'passed ' if e.passed else 'BLOCKED'} {e.check_name}: {e.description or ''}")
    decisions = [
        {k: v.value for k, v in event.metadata.items()}
        for event in result.asset_materializations_for_node("models__champion")
    ]
    if decisions:
        lines.append(f"promotion: {decisions[-1]['decision']} "
                     f"(champion: {_version_text(decisions[-1]['champion_version'])})")
    elif checks:
        lines.append("promotion: not promoted (a gate blocked the challenger; the champion is unchanged)")
    for event in result.all_events:
        if event.is_step_failure and "DagsterAssetCheckFailedError" not in (event.event_specific_data.error.cls_name or ""):
            lines.append(f"  training failed in {event.step_key}: {event.event_specific_data.error.message.strip()[:500]}")
    return lines


def _days_that_passed(warehouse: Path, usecase, days: list[dt.date]) -> list[dt.date]:
    from keel.warehouse import connect

    with connect(warehouse, read_only=True) as con:
        rows = con.execute(
            "select partition_date from audit.gate_status where partition_date between ? and ? "
            "group by partition_date having count(*) filter (where passed) = ?",
            [days[0], days[-1], len(usecase.partitioned_tables)],
        ).fetchall()
    return sorted(r[0] for r in rows)


def _feature_counts(warehouse: Path, days: list[dt.date]) -> list[str]:
    from keel.warehouse import connect

    with connect(warehouse, read_only=True) as con:
        tables = {r[0] for r in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables").fetchall()}
        lines = []
        for relation, column in (("marts.flight_features", "flight_date"), ("marts.flight_labels", "flight_date")):
            if relation in tables:
                (n, d) = con.execute(
                    f"select count(*), count(distinct {column}) from {relation} where {column} between ? and ?",
                    [days[0], days[-1]],
                ).fetchone()
                lines.append(f"  {relation:<22} {n:>9,} rows over {d} days")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    usecase = load_usecase()
    try:
        usecase.days(args.start or usecase.start, args.end or usecase.end)
    except ValueError as exc:
        print(f"keel run: {exc}", file=sys.stderr)
        return 2
    return run_pipeline(args.start or usecase.start, args.end or usecase.end)


def cmd_status(args: argparse.Namespace) -> int:
    from keel.status import collect

    paths = prepare_environment()
    try:
        doc = collect(paths.warehouse, args.start, args.end)
    except RuntimeError as exc:
        print(f"keel status: {exc}", file=sys.stderr)
        return 2
    doc["models"] = _models_status(paths)
    if args.json:
        print(json.dumps(doc, indent=None if args.compact else 2))
        return 0
    if not doc["tables"]:
        print(f"nothing ingested yet under {paths.home}; run: keel run")
        return 0
    for table, partitions in doc["tables"].items():
        landed = sum(p["landed"] for p in partitions.values())
        valid = sum(p["valid"] for p in partitions.values())
        print(f"{table:<10} partitions {len(partitions):>4}  landed {landed:>9,}  valid {valid:>9,}  "
              f"quarantined {landed - valid:>6,}")
    failed = [c for c in doc["checks"] if not c["passed"]]
    print(f"checks: {len(doc['checks']) - len(failed):,} passed, {len(failed):,} failed")
    for c in failed:
        print(f"  {c['asset']} {c['partition'] or ''} {c['name']}: {c['message']}")
    for name, model in doc["models"].items():
        aliases = ", ".join(f"{a} v{v}" for a, v in model["aliases"].items()) or "no aliases"
        latest = model["versions"][-1] if model["versions"] else None
        auc = latest and latest["roc_auc"]
        print(f"{name:<28} {len(model['versions'])} version(s); {aliases}"
              + (f"; latest v{latest['version']} test AUC {auc:.4f}" if auc is not None else ""))
    if doc["predictions"]:
        totals = {}
        for counts in doc["predictions"].values():
            for tier, n in counts.items():
                totals[tier] = totals.get(tier, 0) + n
        print(f"predictions: {sum(totals.values()):,} rows over {len(doc['predictions'])} days: "
              + ", ".join(f"{tier} {n:,}" for tier, n in totals.items()))
    if doc["monitoring"]:
        from keel.monitoring import TriggerPolicy

        bar = TriggerPolicy().calibrated_drift_share
        days = doc["monitoring"]
        drifted = [d for d, m in days.items() if (m["calibrated_drift_share"] or 0) >= bar]
        last_day, last = max(days.items())
        auc = last["trailing_roc_auc"]
        print(f"monitoring: {len(days)} days, {len(drifted)} drifted beyond their ordinary-day bars; "
              f"{last_day}: trailing 7-day AUC " + ("-" if auc is None else f"{auc:.4f}"))
    if doc["retraining"]:
        requests = [d for d in doc["retraining"] if d["retrain"]]
        print(f"retraining trigger: {len(doc['retraining'])} daily decisions, {len(requests)} retrain(s) requested")
        for d in requests[-5:]:
            print(f"  {d['day']} retrain ({', '.join(d['fired'])}): {d['reasons'][0]}")
    return 0


def _models_status(paths) -> dict:
    from keel.promotion import registered_names
    from keel.status import collect_models

    registry = _registry_or_none(paths)
    if registry is None:
        return {}
    return collect_models(registry, list(registered_names(load_usecase().name).values()))


def _model_ref(text: str, names: dict[str, str]) -> tuple[str, str]:
    """``3``, ``champion``, ``NAME/3``, ``NAME@champion`` or ``KIND/3`` (primary, fallback,
    baseline) as (registered name, version or alias); a bare reference is the primary model."""
    for sep in ("@", "/"):
        if sep in text:
            name, ref = text.split(sep, 1)
            return names.get(name, name), ref
    return names["primary"], text


def _registry_or_none(paths):
    """``keel.registry`` on the configured store, or None while no model was ever registered
    there (opening a local store would create it)."""
    from keel.tracking import location, open_registry

    where = location(paths)
    return open_registry(where) if where.exists() else None


def _open_registry(paths, command: str):
    registry = _registry_or_none(paths)
    if registry is None:
        from keel.tracking import location

        print(f"keel {command}: no model registry at {location(paths).tracking_uri} yet; run: keel run",
              file=sys.stderr)
    return registry


def cmd_lineage(args: argparse.Namespace) -> int:
    from keel.lineage import LINEAGE_FIELDS
    from keel.promotion import registered_names

    paths = prepare_environment()
    usecase = load_usecase()
    registry = _open_registry(paths, "lineage")
    if registry is None:
        return 2
    name, ref = _model_ref(args.model_version, registered_names(usecase.name))
    try:
        version = registry.resolve_version(name, ref)
        record = registry.lineage(name, version)
    except Exception as exc:
        print(f"keel lineage: {name} {ref}: {exc}", file=sys.stderr)
        return 2
    model_version = registry.client().get_model_version(name, str(version))
    doc = {"registered_model": name, "version": version, "mlflow_run_id": model_version.run_id,
           **{key: record.get(key) for key in LINEAGE_FIELDS}}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    width = max(map(len, doc))
    for key, value in doc.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        print(f"{key:<{width}}  {text}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Retrain a registered version from its lineage and compare it with the registered one."""
    import numpy as np

    from keel import modeling
    from keel.datasets import build_training_set
    from keel.promotion import registered_names
    from keel.warehouse import connect

    paths = prepare_environment()
    usecase = load_usecase()
    spec = usecase.model
    registry = _open_registry(paths, "reproduce")
    if registry is None or spec is None:
        return 2
    name, ref = _model_ref(args.model_version, registered_names(usecase.name))
    try:
        version = registry.resolve_version(name, ref)
        record = registry.lineage(name, version)
        registered = registry.load(name, version)
    except Exception as exc:
        print(f"keel reproduce: {name} {ref}: {exc}", file=sys.stderr)
        return 2
    config = record["training_config"]
    print(f"{name} v{version}: {record['model_kind']} model trained on {config['start']}..{config['end']} "
          f"(run {record['dagster_run_id']}, commit {record['git_commit'][:12]})")
    with connect(paths.warehouse, read_only=True) as con:
        try:
            training = build_training_set(
                con, spec, dt.date.fromisoformat(config["start"]), dt.date.fromisoformat(config["end"]),
                valid_weeks=config["valid_weeks"], test_weeks=config["test_weeks"],
                label_corruption=record.get("label_corruption", "none"),
            )
        except ValueError as exc:
            print(f"keel reproduce: the training window cannot be read again: {exc}", file=sys.stderr)
            return 1
    split = training.split(spec)
    same_data = training.meta["training_set_hash"] == record["training_set_hash"]
    if same_data:
        print(f"training set: same rows as recorded (sha256 {record['training_set_hash'][:16]}..., "
              f"{split.rows['train']:,} training rows)")
    else:
        print(f"training set: THE DATA CHANGED: recorded sha256 {record['training_set_hash'][:16]}..., "
              f"now {training.meta['training_set_hash'][:16]}... ({record['rows']['train']:,} rows then, "
              f"{split.rows['train']:,} now)")
    params = record["params"]
    if record["model_kind"] == "primary":
        model = modeling.train_primary(split, spec, params=params, seed=int(params["seed"]))
    elif record["model_kind"] == "fallback":
        model = modeling.train_fallback(split, spec, seed=int(params["seed"]),
                                        num_threads=int(params.get("num_threads", 1)))
    else:
        model = modeling.train_baseline(split, spec)
    then, now = registered.predict(split.test), model.predict(split.test)
    identical = then.shape == now.shape and then.tobytes() == now.tobytes()
    difference = float(np.max(np.abs(then - now))) if then.shape == now.shape else float("inf")
    print(f"predictions on the test set ({split.windows['test'][0]}..{split.windows['test'][1]}, "
          f"{len(now):,} rows): max abs difference {difference:.3g}; "
          f"{'identical' if identical else 'NOT identical'}")
    if model.booster is not None:
        same_text = model.booster.model_to_string() == registered.booster.model_to_string()
        print(f"model text: {'identical' if same_text else 'differs'} ({model.best_iteration} trees)")
    ok = identical and same_data
    print("reproduced: the same model" if ok else "not reproduced")
    return 0 if ok else 1


def _run_champion_job(config: dict) -> tuple[int, str]:
    """Materialize models/champion with ``config``: (exit code, decision or error)."""
    import dagster as dg

    from definitions import defs

    result = defs.resolve_job_def("promote_champion").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False,
        run_config={"ops": {"models__champion": {"config": config}}},
    )
    if result.success:
        meta = {k: v.value for k, v in result.asset_materializations_for_node("models__champion")[0].metadata.items()}
        return 0, (f"{meta['decision']} (champion: v{meta['champion_version']}, "
                   f"previous: {_version_text(meta['previous_version'])})")
    errors = [e.event_specific_data.error for e in result.all_events if e.is_step_failure]
    # A refusal (dg.Failure: gates failed, already the champion, nothing to roll back) is 1.
    refused = [e for e in errors if e.cls_name == "Failure"]
    message = "; ".join(_first_line(e.message) for e in errors) or "the run failed"
    return (1 if refused and len(refused) == len(errors) else 2), message


def _version_text(version) -> str:
    return "none" if version in (None, "none") else f"v{version}"


def _first_line(message: str | None) -> str:
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    prefix = "dagster._core.definitions.events.Failure: "
    return line[len(prefix):] if line.startswith(prefix) else line


def cmd_approve(args: argparse.Namespace) -> int:
    import getpass

    paths = prepare_environment()
    if _open_registry(paths, "approve") is None:
        return 2
    if not args.model_version.isdigit():
        print("keel approve: give the primary model's version number", file=sys.stderr)
        return 2
    code, message = _run_champion_job({
        "approve_version": int(args.model_version), "note": args.note, "actor": args.actor or getpass.getuser(),
    })
    print(message if code == 0 else f"keel approve: {message}", file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_rollback(args: argparse.Namespace) -> int:
    import getpass

    paths = prepare_environment()
    if _open_registry(paths, "rollback") is None:
        return 2
    code, message = _run_champion_job({"rollback": True, "note": args.note, "actor": args.actor or getpass.getuser()})
    print(message if code == 0 else f"keel rollback: {message}", file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_dev(args: argparse.Namespace) -> int:
    prepare_environment()
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    os.chdir(PROJECT_ROOT)
    os.execvp(command[0], command)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from keel.settings import keel_home
    from keel.simulate import SimulationConfig, report_lines, simulate

    usecase = load_usecase()
    start = args.start or usecase.start
    end = args.end or usecase.end
    warmup_end = args.warmup_end or min(end - dt.timedelta(days=1), _month_end(start, 3))
    home = Path(args.home) if args.home else keel_home() / "simulations" / f"{start}_{end}_{args.step}"
    try:
        usecase.days(start, end)
        config = SimulationConfig(
            start=start, end=end, warmup_end=warmup_end, home=home, step=args.step,
            tick_days=args.tick_days, evidently_html=args.evidently, threads=_train_threads(args.threads),
        )
    except ValueError as exc:
        print(f"keel simulate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        # Only the JSON document goes to stdout; every log line of the replay (Dagster, dbt,
        # MLflow, the timeline) goes to stderr, whoever writes it.
        import contextlib

        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = simulate(config, out=lambda line: print(line, file=sys.stderr))
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
    else:
        result = simulate(config)
    if args.json:
        print(json.dumps(result, indent=None if args.compact else 2))
    else:
        for line in report_lines(result):
            print(line)
    return 0


def _month_end(start: dt.date, months: int) -> dt.date:
    """The last day of the ``months``-th month counted from ``start``'s."""
    year, month = divmod(start.month - 1 + months, 12)
    return dt.date(start.year + year, month + 1, 1) - dt.timedelta(days=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="write upstream files for some days into the landing zone")
    p.add_argument("--start", type=_date)
    p.add_argument("--end", type=_date)
    p.add_argument("--fault", help="write the fault day's file with this upstream failure")
    p.add_argument("--fault-date", type=_date)
    p.add_argument("--fault-table", help="which daily table the fault hits (default: the use case's)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--list-faults", action="store_true", help="list the fault kinds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="the main job: land missing days, ingest, validate, gate")
    p.add_argument("--start", type=_date)
    p.add_argument("--end", type=_date)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="counts per table and partition, and check results")
    p.add_argument("--json", action="store_true")
    p.add_argument("--compact", action="store_true", help="with --json: one line")
    p.add_argument("--start", type=_date)
    p.add_argument("--end", type=_date)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("lineage", help="what a model version was trained from")
    p.add_argument("model_version", metavar="MODEL_VERSION",
                   help="a version of the primary model (3, champion) or NAME/3, NAME@alias, fallback/3")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("reproduce", help="retrain a model version from its lineage and compare")
    p.add_argument("model_version", metavar="MODEL_VERSION")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("approve", help="promote a challenger whose gates passed (manual policy)")
    p.add_argument("model_version", metavar="MODEL_VERSION", help="version of the primary model")
    p.add_argument("--note", required=True, help="why")
    p.add_argument("--actor", help="who approves (default: the OS user)")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("rollback", help="restore the previous champion")
    p.add_argument("--note", default="rollback", help="why")
    p.add_argument("--actor", help="who rolls back (default: the OS user)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("simulate", help="replay a period through the sensors and automation on a fast clock")
    p.add_argument("--start", type=_date, help="first day (default: the calendar's first)")
    p.add_argument("--end", type=_date, help="last day (default: the calendar's last)")
    p.add_argument("--step", choices=("day", "week"), default="day",
                   help="files land one day (or week) per clock step; with week the trigger decides weekly")
    p.add_argument("--warmup-end", type=_date,
                   help="last day of the warm-up that trains the first (static) model (default: 3 months)")
    p.add_argument("--tick-days", type=int, default=28,
                   help="simulated days between daemon ticks; changes the replay's speed, not its decisions")
    p.add_argument("--evidently", choices=("always", "drifted", "never"), default="drifted",
                   help="write Evidently's HTML drift report for every day, drifted days only, or never")
    p.add_argument("--threads", type=int, help="LightGBM threads (default: KEEL_TRAIN_THREADS, else 1)")
    p.add_argument("--home", help="the replay's Keel home (default: $KEEL_HOME/simulations/START_END_STEP)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--compact", action="store_true", help="with --json: one line")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("dev", help="open the Dagster UI on this deployment (dagster dev)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
