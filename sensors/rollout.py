"""The rollout sensor: moves an active staged rollout on by itself, or rolls it back.

Each tick reads the active rollout, asks the evidence provider for each arm's counts since
the stage began (the shared contract's ``arm_evidence`` shape) and lets
``keel.rollout.guardrails.decide`` say what to do: a breached guardrail aborts the rollout at
once (the champion keeps serving every key), a stage that baked its hours with passing
guardrails advances (the last step makes it the champion), anything else holds. Every
transition is a decision recorded with its evidence (``keel.registry.rollout``); whenever the
registry holds decisions this sensor has not handed on, it requests ``rollout/decisions``
(run key: the last decision's id), which copies them into the warehouse and lists them.

The evidence comes from the real-time API's logs (:func:`serving_evidence`): each arm's counts
and, under the key ``"quality"``, each arm's scores on keys whose labels have matured in the
warehouse (``keel.serving.quality_evidence.matured_scores``), which ``decide`` compares with
the always-valid quality test (a canary found worse is rolled back). A provider that returns no
``"quality"`` key leaves quality unjudged. The evidence
provider and the clock are arguments of :func:`build_rollout_sensor`, so that a replay's clock
and tests' constructed evidence drive the same code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
from mlflow.exceptions import MlflowException

from keel.core.lock import HomeBusy, hold
from keel.core.warehouse import WarehouseBusy
from keel.registry import rollout
from keel.monitoring.reference import operating_threshold
from keel.registry.model_set import champion_version
from keel.registry.promotion import registered_names
from keel.registry.rollout import Rollout
from keel.rollout.guardrails import ErrorTest, decide
from keel.registry.tracking import registry_or_none
from keel.rollout.sequential import error_rate_breach
from keel.serving.evidence import arm_evidence
from keel.serving.quality_evidence import matured_scores
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry
from sensors.jobs import record_rollout_decisions_job

EvidenceProvider = Callable[[KeelState, Rollout, dt.datetime], Mapping[str, Any] | None]
ACTOR = "keel rollout sensor"
DEFAULT_THRESHOLD = 0.5
QUALITY = "quality"  # the key of an evidence provider's answer that holds the matured labels per arm


def serving_evidence(keel: KeelState, current: Rollout, now: dt.datetime) -> Mapping[str, Any] | None:
    """Each arm's requests, errors, latency p99 and positive rate in the API's logs since the
    rollout's stage began (``keel.serving.evidence.arm_evidence``), the positive rate at the
    champion's operating threshold (0.5 for a version whose run logged none), and under
    ``"quality"`` each arm's scores and labels on the keys it served whose labels had matured
    by ``now`` (``keel.serving.quality_evidence.matured_scores``; absent for a use case
    without a model spec); None while there is no champion to compare with."""
    registry = registry_or_none(keel.deployment.tracking)
    names = registered_names(keel.usecase.name)
    champion = None if registry is None else champion_version(registry, names)
    if champion is None:
        return None
    try:
        threshold, _ = operating_threshold(registry, names["primary"], champion)
    except (LookupError, MlflowException):  # a version registered without its evaluation run
        threshold = DEFAULT_THRESHOLD
    found: dict[str, Any] = dict(arm_evidence(keel.paths, current.id, current.since(), threshold=threshold))
    spec = keel.usecase.model
    if spec is not None:
        try:
            found[QUALITY] = matured_scores(keel.paths, spec, current.id, current.since(), as_of=now)
        except WarehouseBusy:  # a writer kept the warehouse: quality is judged next tick, the rest now
            pass
    return found


def split_evidence(found: Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """A provider's answer as ``(arm counts, matured labels per arm)``."""
    if found is None:
        return None, None
    return {arm: counts for arm, counts in found.items() if arm != QUALITY}, found.get(QUALITY)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def build_rollout_sensor(evidence: EvidenceProvider = serving_evidence, clock: Callable[[], dt.datetime] = _utcnow,
                         error_test: ErrorTest = error_rate_breach, name: str = "rollout_sensor") -> dg.SensorDefinition:
    @dg.sensor(
        name=name,
        job=record_rollout_decisions_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=("Advances an active staged rollout whose stage baked and whose guardrails pass, aborts one "
                     "that breached a guardrail, and records every decision (rollout/decisions)."),
    )
    def _sensor(context: dg.SensorEvaluationContext, keel: KeelState, mlflow: MlflowRegistry):
        if not mlflow.location.exists():
            return dg.SkipReason("no model registered yet: no rollout")
        registry = mlflow.open()
        names = registered_names(keel.usecase.name)
        said = ""
        try:
            with hold(keel.paths.home, "the rollout sensor of keel dev", timeout=0):
                current = rollout.active_rollout(registry, names)
                if current is not None:
                    now = clock()
                    counts, matured = split_evidence(evidence(keel, current, now))
                    decision = decide(current, keel.deployment.rollout, counts, now,
                                      error_test=error_test, quality_evidence=matured)
                    said = f"rollout {current.id} of v{current.primary} ({current.stage}): {decision.action}: {decision.reason}"
                    context.log.info(said)
                    if decision.action == "advance":
                        rollout.advance(registry, names, keel.deployment.rollout, actor=ACTOR,
                                        reason=decision.reason, evidence=decision.evidence, at=now)
                    elif decision.action == "abort":
                        rollout.abort(registry, names, actor=ACTOR, reason=decision.reason,
                                      evidence=decision.evidence, at=now)
        except HomeBusy as exc:  # a run or a command writes the home; the next tick decides
            who = exc.holder.describe() if exc.holder else "another process"
            return dg.SkipReason(f"{who} holds the Keel home; deciding next tick")
        recorded = rollout.decisions(registry, names)
        if recorded and recorded[-1].id != context.cursor:
            last = recorded[-1]
            return dg.SensorResult(
                run_requests=[dg.RunRequest(run_key=f"rollout-decisions:{last.id}",
                                            tags={"keel/rollout": last.rollout_id, "keel/rollout_decision": last.id})],
                cursor=last.id,
            )
        return dg.SkipReason(said or "no active rollout")

    return _sensor


rollout_sensor = build_rollout_sensor()
