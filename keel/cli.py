"""The ``keel`` command: replay upstream data, run the pipeline, report its state."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from keel.settings import PROJECT_ROOT, load_usecase, prepare_environment

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


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


def run_pipeline(start: dt.date, end: dt.date, out=None) -> int:
    """The main job: land what is missing, then ingest, validate and gate ``start..end``."""
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
            tags={RANGE_START: days[0].isoformat(), RANGE_END: days[-1].isoformat()},
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
            tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()},
        ))
    failed_checks = [
        e for r in results for e in r.get_asset_check_evaluations() if not e.passed and e.blocking
    ]
    downstream_checks = [
        e for r in results[2:] for e in r.get_asset_check_evaluations()
    ]
    failed_downstream = [
        e for e in downstream_checks if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    # A run that failed only because a gate blocked is not a crash; any other step failure is.
    crashed = [
        r for r in results
        if any(
            e.is_step_failure and "DagsterAssetCheckFailedError" not in (e.event_specific_data.error.cls_name or "")
            for e in r.all_events
        )
    ]

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
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    prepare_environment()
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    os.chdir(PROJECT_ROOT)
    os.execvp(command[0], command)
    return 0


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
