"""The staged rollout's decisions as Dagster sees them: ``rollout/decisions``.

Every transition of a rollout (start, each advance, abort) is recorded in the registry as it
happens (``keel.registry.rollout``); this asset copies the decisions the warehouse does not
hold yet into ``audit.rollout_decisions`` and lists exactly those in its materialization, so
that each decision appears once in the asset's history, with who decided, when, from which
stage to which, why and on what evidence. Materializing it again lists nothing new.
"""

import dagster as dg

from keel.registry import rollout
from keel.registry.promotion import registered_names
from keel.registry.rollout_log import record
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

DECISIONS_KEY = dg.AssetKey(["rollout", "decisions"])


@dg.asset(key=DECISIONS_KEY, group_name="rollout", kinds={"mlflow", "duckdb"})
def rollout_decisions(context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """Each decision of the staged rollouts (start, advance, abort) with its actor, time, stages,
    shares, reason and evidence, kept in audit.rollout_decisions; the materialization lists the new ones."""
    names = registered_names(keel.usecase.name)
    found, active = [], None
    if mlflow.location.exists():
        registry = mlflow.open()
        recovered = rollout.recover(registry, names)
        if recovered:
            context.log.warning(recovered)
        found, active = rollout.decisions(registry, names), rollout.active_rollout(registry, names)
    with keel.warehouse() as con:
        new = record(con, found, context.run.run_id)
    for decision in new:
        context.log.info(f"rollout {decision.rollout_id}: {decision.action} {decision.from_stage or '-'} -> "
                         f"{decision.to_stage} ({decision.to_share:g}) by {decision.actor}: {decision.reason}")
    return dg.MaterializeResult(metadata={
        "new_decisions": dg.MetadataValue.json([d.to_dict() for d in new]),
        "new_decision_count": len(new),
        "decisions_recorded": len(found),
        "active_rollout": dg.MetadataValue.json(active.to_dict() if active is not None else {}),
        "stage": active.stage if active is not None else "none",
    })


rollout_assets = [rollout_decisions]
