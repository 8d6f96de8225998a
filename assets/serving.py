"""Serving assets: the online snapshot the API loads, and the predictions it served.

``serving/online_snapshot`` freezes the warehouse's online feature tables into an immutable,
versioned file (``keel.serving.snapshot``): the API swaps it in within its reload interval,
without ever opening the warehouse. ``serving/online_predictions`` loads the API's prediction
log into ``serving.online_predictions`` by request date, and ``serving_skew`` holds every
feature vector the API served to the mart's row of the same key.

Both refresh under automation once a day's mart is built (``daily_refresh``): the snapshot
then holds that day's trailing rates for the days to come, and the day's served answers are
loaded and held to the mart's rows of that very build. ``keel run`` loads the log of every
day of its range that has one. ``serving/online_shadow_predictions`` loads the shadow log (a
rollout's candidate scoring live requests beside the champion) into its own table.
"""

import dagster as dg

from assets.automation import daily_refresh, with_its_asset
from assets.partitions import USECASE, daily_partitions, partition_dates
from assets.training import FEATURES_KEY
from keel.render.tables import frame_table
from keel.serving.logs import read_log
from keel.serving.served import load_served, load_shadow, served_skew
from keel.serving.snapshot import export_snapshot, snapshots_root
from resources.keel_state import KeelState

GROUP = "serving"


@dg.asset(
    key=["serving", "online_snapshot"],
    group_name=GROUP,
    kinds={"duckdb"},
    deps=[FEATURES_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=daily_refresh(),
)
def online_snapshot(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
    """The online feature tables as an immutable, versioned snapshot the API serves from."""
    with keel.warehouse() as con:
        snapshot = export_snapshot(con, snapshots_root(keel.paths.home), keel.usecase.serving.snapshot_schema)
    context.log.info(f"online snapshot {snapshot.version} (features through {snapshot.as_of}) is current")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(snapshot.version),
        metadata={
            "snapshot_version": snapshot.version,
            "features_as_of": snapshot.as_of,
            "path": dg.MetadataValue.path(str(snapshot.path)),
            "rows_per_table": dg.MetadataValue.json(snapshot.tables),
            "dagster/row_count": sum(snapshot.tables.values()),
        },
    )


@dg.asset(
    key=["serving", "online_predictions"],
    group_name=GROUP,
    kinds={"duckdb"},
    # The mart's day: serving_skew compares with it, so the day is loaded once it is built.
    deps=[FEATURES_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=daily_refresh(),
)
def online_predictions(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
    """Every answer the real-time API logged for the day's requests (serving.online_predictions)."""
    days = partition_dates(context)
    records = read_log(keel.paths.home / "serving" / "predictions")
    with keel.warehouse() as con:
        written = load_served(con, keel.usecase.model, records, days)
    tiers: dict[str, int] = {}
    wanted = {d.isoformat() for d in days}
    for record in records:
        if record["date"] in wanted:
            tiers[record["tier"]] = tiers.get(record["tier"], 0) + 1
    return dg.MaterializeResult(metadata={
        "dagster/row_count": written,
        "rows_per_tier": dg.MetadataValue.json(tiers),
        "log_records_read": len(records),
    })


@dg.asset_check(asset=online_predictions, blocking=True, name="serving_skew", partitions_def=daily_partitions,
                automation_condition=with_its_asset(),
                description="Every served feature vector equals the feature mart's row of the same key.")
def serving_skew(context: dg.AssetCheckExecutionContext, keel: KeelState) -> dg.AssetCheckResult:
    days = partition_dates(context.op_execution_context)
    compared, differences, rows = 0, 0, []
    with keel.warehouse() as con:
        for day in days:
            n, mismatches = served_skew(con, keel.usecase.model, day)
            compared += n
            differences += len(mismatches)
            rows.append(mismatches)
    examples = next((m for m in rows if len(m)), None)
    features = sorted({f for m in rows for f in m["feature"].dropna()})
    missing = sum(int((m["kind"] == "missing_row").sum()) for m in rows)
    passed = differences == 0
    return dg.AssetCheckResult(
        passed=passed,
        description=(f"{compared} served answers: every feature equal to the mart" if passed else
                     f"{differences} differences over {compared} served answers; features: "
                     f"{', '.join(features) or 'none'}; keys not in the mart: {missing}"),
        metadata={
            "answers_compared": compared,
            "differences": differences,
            "features_differing": dg.MetadataValue.json(features),
            "examples": dg.MetadataValue.md(frame_table(examples.head(10)) if examples is not None else "none"),
        },
    )


@dg.asset(
    key=["serving", "online_shadow_predictions"],
    group_name=GROUP,
    kinds={"duckdb"},
    deps=[FEATURES_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=daily_refresh(),
)
def online_shadow_predictions(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
    """Every score a rollout's shadow candidate gave the day's requests, beside the champion's
    answer (serving.online_shadow_predictions); never an answer."""
    days = partition_dates(context)
    records = read_log(keel.paths.home / "serving" / "shadow")
    with keel.warehouse() as con:
        written = load_shadow(con, keel.usecase.model, records, days)
    wanted = {d.isoformat() for d in days}
    of_the_days = [r for r in records if r["date"] in wanted]
    per_rollout: dict[str, dict[str, int]] = {}
    for record in of_the_days:
        counts = per_rollout.setdefault(record["rollout_id"], {"rows": 0, "errors": 0})
        counts["rows"] += 1
        counts["errors"] += bool(record["error"])
    return dg.MaterializeResult(metadata={
        "dagster/row_count": written,
        "per_rollout": dg.MetadataValue.json(per_rollout),
        "log_records_read": len(records),
    })


# A use case without a real-time API (UseCase.serving None) has no online snapshot to serve.
serving_assets = ([online_snapshot, online_predictions, online_shadow_predictions]
                  if USECASE.serving and FEATURES_KEY else [])
serving_checks = [serving_skew] if serving_assets else []
