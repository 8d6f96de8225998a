"""Validation assets and the gates: the data contract applied to every landed row.

``validated/<table>`` holds the rows that pass the table's pandera contract, typed;
``quarantine/<table>`` holds every rejected row with the rules it broke and its source file
and line. The gates are blocking asset checks on ``validated/<table>``, evaluated for every
partition a run covers: a day that fails any of them does not reach features, training or
scoring.

Gates are partitioned checks: every day gets its own evaluation of every gate, so the UI
shows which days failed and declarative automation can refresh downstream partitions whose
gates passed while holding back the ones that failed. Within one run, a failed gate fails
the run's gate step and so stops the run's downstream steps for every day it covers; ``keel
run`` therefore builds downstream assets in separate runs over the days whose gates passed.
The price of per-day evaluations is Dagster event-log writes: about 20 s per table for a
year-long backfill (see bench/bench_ingest.py).
"""


from collections.abc import Iterator

import dagster as dg

from assets.ingestion import raw_key
from assets.partitions import USECASE, daily_partitions, partition_dates
from keel.data.contract import validate_partitions
from keel.data.gates import DAILY_GATES, GATE_DESCRIPTIONS, SNAPSHOT_GATES, evaluate_partitions, gate_thresholds
from keel.core.spec import TableSpec
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
        usecase = keel.usecase  # the deployment's: its tables carry the effective thresholds
        with keel.warehouse() as con:
            stats = validate_partitions(con, usecase, usecase.table(spec.name), days)
        landed = sum(s.landed for s in stats.values())
        valid = sum(s.valid for s in stats.values())
        quarantined = sum(s.quarantined for s in stats.values())
        unparsed = sum(s.unparsed for s in stats.values())
        rules: dict[str, int] = {}
        for s in stats.values():
            for rule, n in s.rule_counts.items():
                rules[rule] = rules.get(rule, 0) + n
        context.log.info(
            f"{spec.name}: {landed} rows landed, {valid} valid, {quarantined} quarantined, "
            f"{unparsed} lines unparsed"
        )
        yield dg.MaterializeResult(
            asset_key=validated_key(spec.name),
            metadata={
                # lines = header_lines + rows_valid + rows_quarantined + continued_lines + lines_unparsed
                "lines": sum(s.lines for s in stats.values()),
                "header_lines": sum(s.header_lines for s in stats.values()),
                "rows_landed": landed,
                "rows_valid": valid,
                "rows_quarantined": quarantined,
                "continued_lines": sum(s.continued_lines for s in stats.values()),
                "lines_unparsed": unparsed,
                "blank_lines": sum(s.blank_lines for s in stats.values()),
                "partitions": len(days),
                "dagster/row_count": valid,
            },
        )
        yield dg.MaterializeResult(
            asset_key=quarantine_key(spec.name),
            metadata={
                "rows_quarantined": quarantined,
                "lines_unparsed": unparsed,
                "unparsed_lines_table": "quarantine._unparsed",
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
                partitions_def=partitions,
                metadata={"thresholds": dg.MetadataValue.json(gate_thresholds(spec))},
            )
            for gate in gates
        ],
        can_subset=True,
    )
    def gate_checks(
        context: dg.AssetCheckExecutionContext, keel: KeelState
    ) -> Iterator[dg.AssetCheckResult | dg.AssetCheckEvaluation]:
        op_context = context.op_execution_context
        days = partition_dates(op_context) if spec.partitioned else [None]
        selected = {key.name for key in context.selected_asset_check_keys}
        # The deployment's thresholds as they are now (keel.toml may have changed them).
        effective = keel.usecase.table(spec.name)
        with keel.warehouse() as con:
            results = evaluate_partitions(con, effective, days, run_id=op_context.run_id)
        single = len(results) == 1
        for day, gate_results in results.items():
            for result in gate_results:
                if result.name not in selected:
                    continue
                if not result.passed:
                    context.log.error(f"{spec.name} {day or ''} {result.name}: {result.message}")
                metadata = {
                    "message": result.message,
                    "details": dg.MetadataValue.json(result.metadata),
                }
                if single:
                    # One partition: a plain result, which Dagster ties to the step's partition.
                    yield dg.AssetCheckResult(
                        asset_key=target, check_name=result.name, passed=result.passed,
                        description=result.message, metadata=metadata,
                    )
                else:
                    yield dg.AssetCheckEvaluation(
                        asset_key=target, check_name=result.name, passed=result.passed,
                        description=result.message, blocking=True, metadata=metadata,
                        partition=day.isoformat() if day else None,
                    )

    return gate_checks


validation_assets = [build_validation_asset(spec) for spec in USECASE.tables]
gate_checks = [build_gate_checks(spec) for spec in USECASE.tables]

# Written by the gate checks, read by the dbt staging models: only days that passed every
# gate reach the features. Declared here so the graph shows where it comes from.
gate_status = dg.AssetSpec(
    dg.AssetKey(["audit", "gate_status"]),
    description=(
        "One row per gated table and day with the verdict of its blocking gates; the dbt "
        "staging models admit a day only when its latest verdict is passed."
    ),
    group_name="validation",
    kinds={"duckdb"},
    deps=[validated_key(spec.name) for spec in USECASE.tables],
)
