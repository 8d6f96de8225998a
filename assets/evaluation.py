"""Evaluation and promotion: the challenger's report, its gates, and the champion.

``models/evaluation_report`` scores the challenger beside the champion, the fallback and the
baseline on the same holdout (the training set's test weeks) and carries the promotion gates
as blocking asset checks (``keel.registry.promotion``). A failed gate stops ``models/champion`` in the
same run, and is recorded on the model version, so that no later approval can promote it.

``models/champion`` applies the promotion policy: ``auto`` promotes a challenger whose gates
all passed; ``manual`` waits for a person, who approves a version by materializing this asset
with ``approve_version`` (or ``keel approve``); ``staged`` starts a rollout of it in shadow
(``keel.registry.rollout``; the rollout sensor or ``keel rollout advance`` take it on). ``rollback: true`` (or ``keel rollback``)
restores the previous champion set. Promotion moves the primary model with the fallback and
baseline trained beside it, as one recorded transaction (``keel.registry.model_set``): the
former set stays as ``previous``, and a move a killed run left halfway is finished before
anything else happens here.
"""


import getpass
import json
from typing import Any

import dagster as dg

from assets.checks import record as record_checks
from assets.training import (
    GROUP, baseline_model, fallback_model, load_training_set, model_spec, primary_model, registered_in_run,
)
from keel.registry import rollout
from keel.registry.model_set import candidate_versions, champion_set, load_candidates, promote_set, recover, rollback_set
from keel.registry.promotion import (
    GATE_DESCRIPTIONS,
    GATES,
    alias_or_none,
    evaluate_gates,
    gate_verdict,
    record_verdicts,
    registered_names,
)
from keel.core.policies import POLICIES
from keel.ml.report import build_report, report_markdown, thumbnail_data_uri, write_report
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry

REPORT_KEY = dg.AssetKey(["models", "evaluation_report"])


@dg.asset(
    key=REPORT_KEY,
    group_name=GROUP,
    kinds={"mlflow", "matplotlib"},
    deps=[primary_model, fallback_model, baseline_model],
    check_specs=[
        dg.AssetCheckSpec(gate, asset=REPORT_KEY, blocking=True, description=GATE_DESCRIPTIONS[gate])
        for gate in GATES
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry
) -> dg.MaterializeResult:
    """The challenger beside the champion, the fallback and the baseline on the same holdout:
    ROC AUC, PR AUC, log loss, Brier, calibration (curve, ECE), precision and recall per class
    at the threshold chosen on validation, the same per slice, and scoring latency. Plots and
    tables are stored with the challenger's MLflow run; the promotion gates are its checks."""
    spec = model_spec(keel)
    registry = mlflow.open()
    names = registered_names(keel.usecase.name)
    promotion = keel.deployment.promotion
    gates = promotion.gates
    # The versions this run registered; the challenger alias only when the report is
    # materialized on its own, after a run that trained.
    dagster_run = context.run.run_id
    challenger = registered_in_run(registry, names["primary"], dagster_run) or alias_or_none(
        registry, names["primary"], registry.CHALLENGER)
    if challenger is None:
        raise dg.Failure(f"{names['primary']} has no challenger: materialize models/primary_model first")
    versions = candidate_versions(registry, names, challenger)
    for kind in ("fallback", "baseline"):
        versions[kind] = registered_in_run(registry, names[kind], dagster_run) or versions[kind]
    models, errors = load_candidates(registry, names, versions)
    for error in errors.values():
        context.log.error(error)

    training = load_training_set(context, keel)
    split = training.split(spec)
    report, predictions = build_report(
        split, spec, models, versions, slice_min_rows=gates.slice_min_rows, errors=errors
    )
    report["policy"] = {"gates": gates.to_dict(), "promotion": promotion.policy}
    results = evaluate_gates(report, gates)
    record_verdicts(registry, names["primary"], challenger, results, versions["champion"])

    directory = keel.paths.models / "reports" / f"{names['primary']}-v{challenger}"
    y_test = split.test[spec.label].to_numpy(dtype=float)
    files = write_report(report, predictions, y_test, results, directory)
    run_id = registry.client().get_model_version(names["primary"], str(challenger)).run_id
    registry.client().log_artifacts(run_id, str(directory), "evaluation")

    for result in results:
        log = context.log.info if result.passed else context.log.error
        log(f"gate {result.name}: {'passed' if result.passed else 'FAILED'}: {result.message}")
    image = thumbnail_data_uri(report, predictions, y_test)
    candidates = report["candidates"]
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.md(report_markdown(report, results, image=image)),
        "challenger_version": challenger,
        "champion_version": versions["champion"] if versions["champion"] is not None else "none",
        "holdout": f"{report['holdout']['start']}..{report['holdout']['end']}",
        "holdout_rows": report["holdout"]["rows"],
        "gates_passed": all(r.passed for r in results),
        "report_dir": dg.MetadataValue.path(str(directory)),
        "calibration_plot": dg.MetadataValue.path(str(files["calibration_png"])),
        "roc_pr_plot": dg.MetadataValue.path(str(files["roc_pr_png"])),
        "slices_plot": dg.MetadataValue.path(str(files["slices_png"])),
        "mlflow_run_id": run_id,
    }
    for candidate, result in candidates.items():
        if result["roc_auc"] is not None:
            metadata[f"{candidate}_roc_auc"] = result["roc_auc"]
    metadata["challenger_ece"] = candidates["challenger"]["ece"]
    metadata["challenger_single_row_us_p95"] = report["latency"]["challenger"]["single_row_us_p95"]
    gates = [
        dg.AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=result.message,
            metadata={"message": result.message, "details": dg.MetadataValue.json(_json(result.metadata))},
        )
        for result in results
    ]
    record_checks(keel, context, "promotion", gates, asset=REPORT_KEY, blocking=True)
    return dg.MaterializeResult(metadata=metadata, check_results=gates)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ChampionConfig(dg.Config):
    policy: str = ""  # "auto", "manual" or "staged" for this run; empty: the deployment's ([promotion] policy)
    approve_version: int = 0  # promote this primary version now (its gates must have passed)
    rollback: bool = False  # restore the previous champion instead
    actor: str = ""  # who approves or rolls back; empty: the OS user
    note: str = ""  # why


@dg.asset(
    key=["models", "champion"],
    group_name=GROUP,
    kinds={"mlflow"},
    deps=[evaluation_report],
)
def champion(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    keel: KeelState,
    mlflow: MlflowRegistry,
) -> dg.MaterializeResult:
    """The model set serving uses: the committed champion set, the primary model with the
    fallback and baseline trained beside it. Applies the promotion policy (auto: promote a challenger that
    passed every gate; manual: wait for approve_version; staged: start its rollout in shadow); rollback restores
    the previous one."""
    registry = mlflow.open()
    names = registered_names(keel.usecase.name)
    policy = config.policy or keel.deployment.promotion.policy
    if policy not in POLICIES:
        raise dg.Failure(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    actor = config.actor or getpass.getuser()
    recovered = recover(registry, names)
    if recovered:
        context.log.warning(recovered)
    before = champion_set(registry, names)
    challenger = registered_in_run(registry, names["primary"], context.run.run_id) or alias_or_none(
        registry, names["primary"], registry.CHALLENGER)
    moved = None
    if config.rollback:
        try:
            moved = rollback_set(registry, names, actor=actor, note=config.note or "rollback")
        except LookupError as exc:
            raise dg.Failure(str(exc)) from None
        decision = f"rolled back from v{before.primary} to v{moved.primary} by {actor}: {config.note}"
    elif config.approve_version:
        try:
            moved = promote_set(registry, names, config.approve_version, actor=actor,
                                note=config.note or "approved")
        except (PermissionError, ValueError) as exc:
            raise dg.Failure(str(exc)) from None
        decision = f"v{config.approve_version} approved by {actor}: {config.note or 'approved'}"
    elif challenger is None:
        decision = "no challenger waiting"
    else:
        verdict, per_gate = gate_verdict(registry, names["primary"], challenger)
        if verdict != "passed":
            failed = "; ".join(f"{g}: {t}" for g, t in per_gate.items() if not t.startswith("passed"))
            raise dg.Failure(
                f"challenger v{challenger} is not promotable: "
                + (failed or "its gates were never evaluated (materialize models/evaluation_report)")
            )
        if policy == "staged" and before is not None:
            decision = _stage(context, registry, names, challenger)
        elif policy == "manual":
            decision = (f"v{challenger} passed every gate; manual policy: waiting for approval "
                        f"(keel approve {challenger} --note ...)")
        else:
            moved = promote_set(
                registry, names, challenger, actor=f"keel auto-promotion (dagster run {context.run.run_id[:8]})",
                note="every promotion gate passed",
            )
            decision = f"v{challenger} promoted automatically: every gate passed"
    context.log.info(decision)
    after = champion_set(registry, names)
    return dg.MaterializeResult(
        metadata={
            "policy": policy,
            "decision": decision,
            "promoted": moved is not None and not config.rollback,
            "rolled_back": bool(config.rollback),
            "champion_version": after.primary if after is not None else "none",
            "previous_version": _or_none((after.previous or {}).get("primary") if after is not None else None),
            "challenger_version": _or_none(alias_or_none(registry, names["primary"], registry.CHALLENGER)),
            "actor": actor if (config.rollback or config.approve_version) else "policy",
            "note": config.note,
            "model_set": dg.MetadataValue.json(after.versions if after is not None else {}),
            "recovered": recovered or "",
            "rollout": dg.MetadataValue.json(_rollout_doc(registry, names)),
        }
    )


def _stage(context: dg.AssetExecutionContext, registry, names, challenger: int) -> str:
    """Under the staged policy a gated challenger starts a rollout in shadow; one already rolling
    out is left where it is, and one beside another active rollout waits for it to end. The
    first model of a registry has no champion to shadow: it is promoted as under auto."""
    last = rollout.last_rollout(registry, names)
    active = last if last is not None and last.active else None
    if last is not None and last.stage == "aborted" and last.primary == challenger:
        return (f"v{challenger} was rolled back (rollout {last.id} aborted): not restarted; "
                f"keel rollout start {challenger} tries it again")
    if active is not None:
        if active.primary == challenger:
            return f"v{challenger} is already rolling out (rollout {active.id}, {active.stage})"
        return (f"v{challenger} passed every gate; staged policy: waiting for rollout {active.id} of "
                f"v{active.primary} ({active.stage}) to end")
    started = rollout.start(
        registry, names, challenger, actor=f"keel staged promotion (dagster run {context.run.run_id[:8]})",
        reason="every promotion gate passed", evidence={"gates": gate_verdict(registry, names["primary"], challenger)[1]},
    )
    return f"v{challenger} passed every gate; staged policy: rollout {started.id} started in shadow"


def _rollout_doc(registry, names) -> dict:
    active = rollout.active_rollout(registry, names)
    return active.to_dict() if active is not None else {}


def _or_none(value: int | None) -> int | str:
    return "none" if value is None else value


evaluation_assets = [evaluation_report, champion]
