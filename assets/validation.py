"""Validation assets and the gates: the data contract applied to every landed row.

``validated/<table>`` holds the rows that pass the table's pandera contract, typed;
``quarantine/<table>`` holds every rejected row with the rules it broke and its source file
and line. The gates are blocking asset checks on ``validated/<table>``, evaluated for every
partition a run covers: a day that fails any of them does not reach features, training or
scoring.

Each gate reports one evaluation per run. Day-by-day runs (the landing sensor's) therefore
get one evaluation per day; a backfill's evaluation lists every failing day, and the result
of every day is kept in ``audit.check_results``. Emitting one Dagster evaluation per day and
gate instead costs about 25 s of event-log writes per table for a year-long backfill.
"""


import datetime as dt
from collections.abc import Iterator

import dagster as dg

from assets.ingestion import raw_key
from assets.partitions import USECASE, daily_partitions, partition_dates, run_partition_dates
from keel.contract import validate_partitions
from keel.gates import DAILY_GATES, GATE_DESCRIPTIONS, SNAPSHOT_GATES, evaluate_partitions
from keel.spec import TableSpec
from resources.keel_state import KeelState


def validated_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["validated", table])


def quarantine_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["quarantine", table])


def build_validation_asset(spec: TableSpec) -> dg.AssetsDefinition:
    partitions = daily_partitions if spec.partitioned else None

    @dg.multi_asset(
        name=f"validate_{spec.name}",
        specs=[
            dg.AssetSpec(
                validated_key(spec.name),
                deps=[raw_key(spec.name)],
                description=f"{spec.description} Typed rows that passed the data contract.",
                group_name="validation",
                kinds={"duckdb", "pandera"},
                code_version="1",
            ),
            dg.AssetSpec(
                quarantine_key(spec.name),
                deps=[raw_key(spec.name)],
                description=(
                    f"Rows of {spec.name} rejected by the data contract, each with the rules it "
                    "broke, its source file and line, and the record as it landed."
                ),
                group_name="validation",
                kinds={"duckdb"},
                code_version="1",
            ),
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run() if spec.partitioned else None,
    )
    def validate(context: dg.AssetExecutionContext, keel: KeelState) -> Iterator[dg.MaterializeResult]:
        days = partition_dates(context) if spec.partitioned else [None]
        with keel.warehouse() as con:
            stats = validate_partitions(con, keel.usecase, spec, days)
        landed = sum(s.landed for s in stats.values())
        valid = sum(s.valid for s in stats.values())
        quarantined = sum(s.quarantined for s in stats.values())
        rules: dict[str, int] = {}
        for s in stats.values():
            for rule, n in s.rule_counts.items():
                rules[rule] = rules.get(rule, 0) + n
        context.log.info(f"{spec.name}: {landed} rows landed, {valid} valid, {quarantined} quarantined")
        yield dg.MaterializeResult(
            asset_key=validated_key(spec.name),
            metadata={
                "rows_landed": landed,
                "rows_valid": valid,
                "rows_quarantined": quarantined,
                "partitions": len(days),
                "dagster/row_count": valid,
            },
        )
        yield dg.MaterializeResult(
            asset_key=quarantine_key(spec.name),
            metadata={
                "rows_quarantined": quarantined,
                "rules": dg.MetadataValue.json(rules),
                "dagster/row_count": quarantined,
            },
        )

    return validate


def build_gate_checks(spec: TableSpec) -> dg.AssetChecksDefinition:
    gates = DAILY_GATES if spec.partitioned else SNAPSHOT_GATES
    partitions = daily_partitions if spec.partitioned else None
    target = validated_key(spec.name)

    @dg.multi_asset_check(
        name=f"{spec.name}_gates",
        specs=[
            dg.AssetCheckSpec(
                gate,
                asset=target,
                blocking=True,
                description=GATE_DESCRIPTIONS[gate],
                metadata={"thresholds": dg.MetadataValue.json(_thresholds(spec))},
            )
            for gate in gates
        ],
        can_subset=True,
    )
    def gate_checks(
        context: dg.AssetCheckExecutionContext, keel: KeelState
    ) -> Iterator[dg.AssetCheckEvaluation]:
        op_context = context.op_execution_context
        days = run_partition_dates(op_context) if spec.partitioned else [None]
        selected = {key.name for key in context.selected_asset_check_keys}
        with keel.warehouse() as con:
            results = evaluate_partitions(con, spec, days, run_id=op_context.run_id)
        for gate in gates:
            if gate not in selected:
                continue
            by_day = {day: next(r for r in rs if r.name == gate) for day, rs in results.items()}
            failed = {day: r for day, r in by_day.items() if not r.passed}
            for day, result in failed.items():
                context.log.error(f"{spec.name} {day or ''} {gate}: {result.message}")
            if len(by_day) == 1:
                (day, only), = by_day.items()
                description = only.message
                details = only.metadata
            elif failed:
                description = f"failed on {len(failed)} of {len(by_day)} days: " + "; ".join(
                    f"{day}: {r.message}" for day, r in list(failed.items())[:3]
                )
                details = {str(day): {"message": r.message, **r.metadata} for day, r in failed.items()}
            else:
                description = f"passed on all {len(by_day)} days"
                details = {}
            yield dg.AssetCheckEvaluation(
                asset_key=target,
                check_name=gate,
                passed=not failed,
                description=description,
                blocking=True,
                metadata={
                    "message": description,
                    "days_checked": len(by_day),
                    "days_failed": dg.MetadataValue.json(sorted(str(d) for d in failed)),
                    "details": dg.MetadataValue.json(details),
                },
            )

    return gate_checks


def _thresholds(spec: TableSpec) -> dict:
    g = spec.gates
    return {
        "max_quarantine_rate": g.max_quarantine_rate,
        "volume_ratio": [g.volume_min_ratio, g.volume_max_ratio],
        "volume_weeks": g.volume_weeks,
        "null_rate_max_increase": g.null_rate_max_increase,
        "null_rate_window_days": g.null_rate_window_days,
        "null_rate_overrides": dict(g.null_rate_overrides),
        "type_change_share": g.type_change_share,
    }


validation_assets = [build_validation_asset(spec) for spec in USECASE.tables]
gate_checks = [build_gate_checks(spec) for spec in USECASE.tables]
