"""The ``keel`` command: replay upstream data, run the pipeline, report its state.

The command line is kept in one piece: every command's arguments, messages and exit codes
read side by side, and its one error boundary (``main``) covers them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import getpass
import traceback

import numpy as np

from keel.app.feedback import add_parser as add_feedback_parser
from keel.app.rollout import add_parser as add_rollout_parser
from keel.app.rollout import status_doc as rollout_status
from keel.app.logs import routed
from keel.app.recovery import recover
from keel.app.status import check_titles, checks_by_kind, collect, collect_models, degraded_lines
from keel.core.config import current
from keel.core.lock import HomeBusy, hold
from keel.core.process import run_tags
from keel.core.settings import PROJECT_ROOT, keel_home, prepare_environment
from keel.core.settings import paths as settings_paths
from keel.core.warehouse import WarehouseBusy, connect
from keel.data.feedback import counts as feedback_counts
from keel.data.feedback import read_log as read_feedback
from keel.data.landing import scan
from keel.data.replay import FAULT_KINDS, replay
from keel.ml.lineage import LINEAGE_FIELDS
from keel.registry.promotion import registered_names
from keel.registry.tracking import registry_or_none
from keel.render.terminal import failed_check_lines, simulation_lines
from keel.render.text import version_text


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def _replay_live(args: argparse.Namespace) -> int:
    """``keel replay --live``: one day as live traffic to a running API."""
    # The client side of serving: the other commands never pay for httpx and the live plan.
    import httpx

    from keel.serving.live import play

    usecase = current().usecase
    if usecase.serving is None or usecase.serving.live_plan is None:
        print(f"keel replay: use case {usecase.name!r} has no live traffic (ServingSpec.live_plan)", file=sys.stderr)
        return 2
    if args.date is None or not usecase.start <= args.date <= usecase.last_day():
        print(f"keel replay: --live needs --date, a day in {usecase.calendar_text()}", file=sys.stderr)
        return 2
    if args.speed <= 0:
        print("keel replay: --speed must be positive", file=sys.stderr)
        return 2
    items = usecase.serving.live_plan(usecase, args.date)
    try:
        report = play(items, args.url, args.speed)
    except httpx.TransportError as exc:
        print(f"keel replay: no answer from the API at {args.url}: {type(exc).__name__}: {exc} "
              "(is keel serve running there?)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        tiers = ", ".join(f"{tier} {n:,}" for tier, n in report.answered.items()) or "none"
        print(f"replayed {args.date} live to {args.url} at {args.speed:g}x in {report.seconds:.1f} s: "
              f"{report.events_sent:,} events ({report.events_accepted:,} accepted, {report.events_rejected:,} "
              f"rejected), {report.requests_sent:,} prediction requests (answered by tier: {tiers}), "
              f"{len(report.errors):,} errors, {report.late:,} sent over a second late")
        for error in report.errors[:10]:
            print(f"  {error}")
    return 1 if report.errors else 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.list_faults:
        width = max(map(len, FAULT_KINDS))
        for kind, text in FAULT_KINDS.items():
            print(f"{kind:<{width}}  {text}")
        return 0
    if args.live:
        return _replay_live(args)
    usecase = current().usecase
    if usecase.source is None:
        print(f"keel replay: use case {usecase.name!r} has no replay source (UseCase.source): its upstream "
              f"system writes the landing zone ({settings_paths().landing}) itself; keel run ingests what is there",
              file=sys.stderr)
        return 2
    paths = prepare_environment()
    start, end = args.start or usecase.start, args.end or args.start or usecase.last_day()
    if (args.fault is None) != (args.fault_date is None):
        print("keel replay: --fault and --fault-date go together", file=sys.stderr)
        return 2
    try:
        with hold(paths.home, f"keel replay {start}..{end}", on_wait=_waiting("replay")):
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


def _run_end(usecase, start: dt.date) -> dt.date:
    """The last day ``keel run`` covers without ``--end``: the calendar's last; on an
    open-ended calendar today, or, for a use case without a replay source (nothing can be
    landed), the last day that landed. Raises ValueError when there is none."""
    if usecase.end is not None or usecase.source is not None:
        return usecase.last_day()
    landing = settings_paths().landing
    today = usecase.today()
    landed = [f.partition for f in scan(landing, usecase.partitioned_tables)
              if f.partition is not None and start <= f.partition <= today]
    if not landed:
        raise ValueError(
            f"use case {usecase.name!r} has no replay source and its landing zone {landing} holds no daily "
            f"file from {start} to today ({today}); its upstream system writes them there "
            f"(<table>/YYYY-MM-DD.csv), or give --end"
        )
    return max(landed)


def cmd_run(args: argparse.Namespace) -> int:
    usecase = current().usecase
    start = args.start or usecase.start
    try:
        end = args.end or _run_end(usecase, start)
        usecase.days(start, end)
    except ValueError as exc:
        print(f"keel run: {exc}", file=sys.stderr)
        return 2
    # The main job loads Dagster (about 1.5 s, and the definitions 4 s more when it runs).
    from keel.app.pipeline import run_pipeline

    return run_pipeline(start, end, verbose=args.verbose)


def cmd_status(args: argparse.Namespace) -> int:

    home = keel_home()
    if not home.is_dir():
        # A reader creates nothing: a mistyped KEEL_HOME must not become an empty home.
        print(f"keel status: no Keel home at {home} (set KEEL_HOME, or run: keel run)", file=sys.stderr)
        return 2
    paths = prepare_environment()
    try:
        doc = collect(paths.warehouse, args.start, args.end)
    except RuntimeError as exc:
        print(f"keel status: {exc}", file=sys.stderr)
        return 2
    doc["models"] = _models_status(paths)
    doc["rollout"] = rollout_status(registry_or_none(current().tracking), registered_names(current().usecase.name))
    doc["deployment"] = current().to_dict()
    doc["feedback"] = feedback_counts(read_feedback(paths.home))
    if args.json:
        print(json.dumps(doc, indent=None if args.compact else 2))
        return 0
    deployment, retrain = doc["deployment"], doc["deployment"]["retraining"]
    print(f"deployment: {deployment['usecase']} configured by {deployment['config_file'] or 'the defaults'}; promotion "
          f"{deployment['promotion']['policy']}; retrain on drift share {retrain['calibrated_drift_share']:.2f} or AUC below {retrain['min_auc']:.2f}")
    if not doc["tables"]:
        print(f"nothing ingested yet under {paths.home}; run: keel run")
        return 0
    for table, partitions in doc["tables"].items():
        landed = sum(p["landed"] for p in partitions.values())
        valid = sum(p["valid"] for p in partitions.values())
        quarantined = sum(p["quarantined"] for p in partitions.values())
        unparsed = sum(p["unparsed"] or 0 for p in partitions.values())
        print(f"{table:<10} partitions {len(partitions):>4}  landed {landed:>9,}  valid {valid:>9,}  "
              f"quarantined {quarantined:>6,}  unparsed lines {unparsed:>4,}")
    print("checks (the latest result of each, per partition):")
    for kind, counts in checks_by_kind(doc["checks"]).items():
        print(f"  {kind:<13} {counts['passed']:>6,} passed  {counts['warned']:>4,} warned  {counts['failed']:>4,} failed")
    failed = [c for c in doc["checks"] if not c["passed"]]
    for line in failed_check_lines(failed, check_titles() if failed else {}):
        print(line)
    for name, model in doc["models"].items():
        aliases = ", ".join(f"{a} v{v}" for a, v in model["aliases"].items()) or "no aliases"
        latest = model["versions"][-1] if model["versions"] else None
        auc = latest and latest["roc_auc"]
        print(f"{name:<28} {len(model['versions'])} version(s); {aliases}"
              + (f"; latest v{latest['version']} test AUC {auc:.4f}" if auc is not None else ""))
    if doc["rollout"]["active"]:
        active = doc["rollout"]["active"]
        print(f"rollout {active['id']} of v{active['set']['primary']}: {active['stage']} at {active['share']:.0%} "
              f"of keys since {active['stage_since']} (keel rollout status)")
    if doc["predictions"]:
        totals = {}
        for counts in doc["predictions"].values():
            for tier, n in counts.items():
                totals[tier] = totals.get(tier, 0) + n
        print(f"predictions: {sum(totals.values()):,} rows over {len(doc['predictions'])} days: "
              + ", ".join(f"{tier} {n:,}" for tier, n in totals.items()))
    for line in degraded_lines(doc["degraded"]):
        print(line)
    if doc["monitoring"]:
        bar = doc["deployment"]["retraining"]["calibrated_drift_share"]
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
    registry = registry_or_none(current().tracking)
    if registry is None:
        return {}
    return collect_models(registry, list(registered_names(current().usecase.name).values()))


def _model_ref(text: str, names: dict[str, str]) -> tuple[str, str]:
    """``3``, ``champion``, ``NAME/3``, ``NAME@champion`` or ``KIND/3`` (primary, fallback,
    baseline) as (registered name, version or alias); a bare reference is the primary model."""
    for sep in ("@", "/"):
        if sep in text:
            name, ref = text.split(sep, 1)
            return names.get(name, name), ref
    return names["primary"], text


def _open_registry(paths, command: str):
    registry = registry_or_none(current().tracking)
    if registry is None:
        print(f"keel {command}: no model registry at {current().tracking.tracking_uri} yet; run: keel run",
              file=sys.stderr)
    return registry


def cmd_lineage(args: argparse.Namespace) -> int:
    paths = prepare_environment()
    usecase = current().usecase
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

    # Training code (LightGBM, pandas) costs about 2 s to import; only this command needs it.
    from keel.ml import modeling
    from keel.ml.datasets import build_training_set

    paths = prepare_environment()
    usecase = current().usecase
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
                # The corrections the model learned with, not those received since.
                feedback_as_of=config.get("feedback_as_of"),
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
    # Dagster and the definitions take about 5 s to load; the read-only commands need neither.
    import dagster as dg

    from definitions import defs

    result = defs.resolve_job_def("promote_champion").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False, tags=run_tags(),
        run_config={"ops": {"models__champion": {"config": config}}},
    )
    if result.success:
        meta = {k: v.value for k, v in result.asset_materializations_for_node("models__champion")[0].metadata.items()}
        return 0, (f"{meta['decision']} (champion: v{meta['champion_version']}, "
                   f"previous: {version_text(meta['previous_version'])})")
    errors = [e.event_specific_data.error for e in result.all_events if e.is_step_failure]
    # A refusal (dg.Failure: gates failed, already the champion, nothing to roll back) is 1.
    refused = [e for e in errors if e.cls_name == "Failure"]
    message = "; ".join(_first_line(e.message) for e in errors) or "the run failed"
    return (1 if refused and len(refused) == len(errors) else 2), message


def _first_line(message: str | None) -> str:
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    prefix = "dagster._core.definitions.events.Failure: "
    return line[len(prefix):] if line.startswith(prefix) else line


def cmd_approve(args: argparse.Namespace) -> int:
    paths = prepare_environment()
    if _open_registry(paths, "approve") is None:
        return 2
    if not args.model_version.isdigit():
        print("keel approve: give the primary model's version number", file=sys.stderr)
        return 2
    with hold(paths.home, f"keel approve {args.model_version}", on_wait=_waiting("approve")):
        code, message = _run_champion_job({
            "approve_version": int(args.model_version), "note": args.note, "actor": args.actor or getpass.getuser(),
        })
    print(message if code == 0 else f"keel approve: {message}", file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_rollback(args: argparse.Namespace) -> int:
    paths = prepare_environment()
    if _open_registry(paths, "rollback") is None:
        return 2
    with hold(paths.home, "keel rollback", on_wait=_waiting("rollback")):
        code, message = _run_champion_job({"rollback": True, "note": args.note, "actor": args.actor or getpass.getuser()})
    print(message if code == 0 else f"keel rollback: {message}", file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    # The serving modules load FastAPI, uvicorn and MLflow; only this command needs them.
    from keel.serving.runtime import ServeOptions, ensure_snapshot, is_loopback, serve

    paths = prepare_environment()
    usecase = current().usecase
    if usecase.serving is None:
        print(f"keel serve: use case {usecase.name!r} configures no serving", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("keel serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(f"keel serve: warning: bound to {args.host}, reachable from other machines; the API has "
              "no authentication", file=sys.stderr)
    try:
        version = ensure_snapshot(paths, usecase)
    except (FileNotFoundError, LookupError) as exc:
        print(f"keel serve: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. the warehouse locked by a running pipeline
        print(f"keel serve: cannot export the online snapshot: {exc}", file=sys.stderr)
        return 2
    print(f"keel serve: http://{args.host}:{args.port} (snapshot {version}, {args.workers} worker(s))",
          file=sys.stderr, flush=True)
    serve(ServeOptions(home=str(paths.home), reload_seconds=args.reload_seconds,
                       shadow_sample=args.shadow_sample),
          args.host, args.port, args.workers)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    prepare_environment()
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    os.chdir(PROJECT_ROOT)
    os.execvp(command[0], command)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    # The replay loads Dagster and the definitions (about 5 s).
    from keel.app.pipeline import training_threads
    from keel.app.simulate import SimulationConfig, simulate

    usecase = current().usecase
    if usecase.source is None:
        print(f"keel simulate: use case {usecase.name!r} has no replay source (UseCase.source) to replay a "
              "period from", file=sys.stderr)
        return 2
    start = args.start or usecase.start
    end = args.end or usecase.last_day()
    warmup_end = args.warmup_end or min(end - dt.timedelta(days=1), _month_end(start, 3))
    home = Path(args.home) if args.home else keel_home() / "simulations" / f"{start}_{end}_{args.step}"
    try:
        usecase.days(start, end)
        config = SimulationConfig(
            start=start, end=end, warmup_end=warmup_end, home=home, step=args.step,
            tick_days=args.tick_days, evidently_html=args.evidently, threads=training_threads(args.threads),
        )
    except ValueError as exc:
        print(f"keel simulate: {exc}", file=sys.stderr)
        return 2
    # Only the JSON document goes to stdout with --json: Keel's lines go to stderr then, and
    # Dagster's, dbt's and MLflow's logs to $KEEL_HOME/logs/simulate-*.log (also shown with
    # --verbose).
    with routed(keel_home(), "simulate", verbose=args.verbose, lines_to_stderr=args.json) as log:
        result = simulate(config, out=log.say, log=log)
    if args.json:
        print(json.dumps(result, indent=None if args.compact else 2))
    else:
        for line in simulation_lines(result):
            print(line)
    return 0


def _month_end(start: dt.date, months: int) -> dt.date:
    """The last day of the ``months``-th month counted from ``start``'s."""
    year, month = divmod(start.month - 1 + months, 12)
    return dt.date(start.year + year, month + 1, 1) - dt.timedelta(days=1)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: when absent it must not reset the global --verbose (keel --verbose run).
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Dagster's, dbt's and MLflow's logs here too (they always go to $KEEL_HOME/logs/), "
                        "and the traceback of an unexpected error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description=__doc__)
    # One --verbose, before or after the command; the commands' own default to SUPPRESS so that
    # they never reset this one.
    parser.add_argument("--verbose", action="store_true",
                        help="print the traceback of an unexpected error (and, for run and simulate, the libraries' logs)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="write upstream files for some days into the landing zone")
    p.add_argument("--start", type=_date)
    p.add_argument("--end", type=_date)
    p.add_argument("--fault", help="write the fault day's file with this upstream failure")
    p.add_argument("--fault-date", type=_date)
    p.add_argument("--fault-table", help="which daily table the fault hits (default: the use case's)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--list-faults", action="store_true", help="list the fault kinds")
    p.add_argument("--live", action="store_true",
                   help="play one day as live traffic to a running API instead: events, then each "
                        "target's prediction request at its prediction moment")
    p.add_argument("--date", type=_date, help="the day --live plays")
    p.add_argument("--speed", type=float, default=60.0, help="--live: times real time (default 60)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="--live: the API (default http://127.0.0.1:8000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="the main job: land missing days, ingest, validate, gate")
    p.add_argument("--start", type=_date, help="first day (default: the calendar's first)")
    p.add_argument("--end", type=_date,
                   help="last day (default: the calendar's last; on an open-ended calendar today, or the last "
                        "landed day when the use case has no replay source)")
    _add_verbose(p)
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
    p.add_argument("--threads", type=int, help="LightGBM threads (default: the deployment's [training] threads, else 1)")
    p.add_argument("--home", help="the replay's Keel home (default: $KEEL_HOME/simulations/START_END_STEP)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--compact", action="store_true", help="with --json: one line")
    _add_verbose(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("serve", help="the real-time prediction API (POST /v1/predict)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reload-seconds", type=float, default=5.0,
                   help="how often the champions and the snapshot are checked for a new set")
    p.add_argument("--shadow-sample", type=float, default=1.0,
                   help="during a shadow rollout, the share of keys the candidate scores (default: all)")
    p.set_defaults(func=cmd_serve)

    add_feedback_parser(sub)
    add_rollout_parser(sub)
    p = sub.add_parser("dev", help="open the Dagster UI on this deployment (dagster dev)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_dev)
    return parser


def _recover() -> None:
    """Finish or undo what a killed process left halfway in this home (a move of the
    champion model set, a run still marked STARTED), saying so on stderr."""
    home = keel_home()
    if not home.is_dir():
        return
    try:
        lines = recover(settings_paths(), current().usecase.name)
    except Exception as exc:  # the command itself says what is wrong with the stores
        print(f"keel: could not check {home} for interrupted work: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return
    for line in lines:
        print(f"keel: recovered: {line}", file=sys.stderr)


def _waiting(command: str):
    return lambda line: print(f"keel {command}: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 all passed, 1 a gate blocked or a check failed, 2 anything else, with
    one line on stderr that says what (``--verbose`` adds the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = f"keel {args.command}"
    home = keel_home()
    if home.exists() and not home.is_dir():
        print(f"{command}: KEEL_HOME {home} is a file, not a folder; point KEEL_HOME at a folder", file=sys.stderr)
        return 2
    try:
        _recover()
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 2
    except (HomeBusy, WarehouseBusy) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the one place every unexpected failure becomes exit 2 and one line
        if args.verbose:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = "" if args.verbose else " (run again with --verbose for the traceback)"
        print(f"{command}: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
