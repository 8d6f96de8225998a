"""Evaluation and promotion: the challenger's report, its gates, and the champion.

``models/evaluation_report`` scores the challenger beside the champion, the fallback and the
baseline on the same holdout (the training set's test weeks) and carries the promotion gates
as blocking asset checks (``keel.promotion``). A failed gate stops ``models/champion`` in the
same run, and is recorded on the model version, so that no later approval can promote it.

``models/champion`` applies the promotion policy: ``auto`` promotes a challenger whose gates
all passed; ``manual`` waits for a person, who approves a version by materializing this asset
with ``approve_version`` (or ``keel approve``). ``rollback: true`` (or ``keel rollback``)
restores the previous champion. Promotion moves the ``champion`` alias of the primary model
and of the fallback and baseline trained with it; the former champion stays as ``previous``.
"""


import getpass
import json
from typing import Any

import dagster as dg

from assets.training import GROUP, baseline_model, fallback_model, model_spec, primary_model
from keel.datasets import TrainingSet
from keel.promotion import (
    GATE_DESCRIPTIONS,
    GATES,
    alias_or_none,
    evaluate_gates,
    gate_verdict,
    promote_set,
    record_verdicts,
    registered_names,
    rollback_set,
)
from keel.report import build_report, report_markdown, thumbnail_data_uri, write_report
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry
from resources.promotion import PromotionPolicy

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
    context: dg.AssetExecutionContext, keel: KeelState, mlflow: MlflowRegistry, promotion: PromotionPolicy
) -> dg.MaterializeResult:
    """The challenger beside the champion, the fallback and the baseline on the same holdout:
    ROC AUC, PR AUC, log loss, Brier, calibration (curve, ECE), precision and recall per class
    at the threshold chosen on validation, the same per slice, and scoring latency. Plots and
    tables are stored with the challenger's MLflow run; the promotion gates are its checks."""
    spec = model_spec(keel)
    registry = mlflow.open(keel.paths)
    names = registered_names(keel.usecase.name)
    gates = promotion.gates
    challenger = alias_or_none(registry, names["primary"], registry.CHALLENGER)
    if challenger is None:
        raise dg.Failure(f"{names['primary']} has no challenger: materialize models/primary_model first")
    champion = alias_or_none(registry, names["primary"], registry.CHAMPION)
    versions: dict[str, int | None] = {"challenger": challenger, "champion": champion if champion != challenger else None}
    for kind in ("fallback", "baseline"):
        versions[kind] = alias_or_none(registry, names[kind], registry.CHALLENGER) or alias_or_none(
            registry, names[kind], registry.CHAMPION
        )
    models, errors = {}, {}
    for candidate, version in versions.items():
        if version is None:
            continue
        name = names["primary"] if candidate in ("challenger", "champion") else names[candidate]
        try:
            models[candidate] = registry.load(name, version)
        except Exception as exc:  # a missing reference fails the gates that need it, saying why
            if candidate == "challenger":
                raise
            errors[candidate] = f"{name} v{version} failed to load: {type(exc).__name__}: {exc}"
            context.log.error(errors[candidate])
    if versions["baseline"] is None:
        errors["baseline"] = f"{names['baseline']} has no version: materialize models/baseline_model"

    training = TrainingSet.load(keel.paths.models / "training_set")
    split = training.split(spec)
    report, predictions = build_report(
        split, spec, models, versions, slice_min_rows=gates.slice_min_rows, errors=errors
    )
    report["policy"] = {"gates": gates.to_dict(), "promotion": promotion.resolved_policy}
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
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=result.name,
                passed=result.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=result.message,
                metadata={"message": result.message, "details": dg.MetadataValue.json(_json(result.metadata))},
            )
            for result in results
        ],
    )


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ChampionConfig(dg.Config):
    policy: str = ""  # "auto" or "manual"; empty: the PromotionPolicy resource's
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
    promotion: PromotionPolicy,
) -> dg.MaterializeResult:
    """The model set serving uses: the primary model's champion alias, with the fallback and
    baseline trained beside it. Applies the promotion policy (auto: promote a challenger that
    passed every gate; manual: wait for approve_version); rollback restores the previous one."""
    registry = mlflow.open(keel.paths)
    names = registered_names(keel.usecase.name)
    policy = config.policy or promotion.resolved_policy
    if policy not in ("auto", "manual"):
        raise dg.Failure(f"policy must be auto or manual, got {policy!r}")
    actor = config.actor or getpass.getuser()
    before = alias_or_none(registry, names["primary"], registry.CHAMPION)
    challenger = alias_or_none(registry, names["primary"], registry.CHALLENGER)
    promoted: dict[str, Any] = {}
    if config.rollback:
        try:
            promoted = rollback_set(registry, names, actor=actor, note=config.note or "rollback")
        except LookupError as exc:
            raise dg.Failure(str(exc)) from None
        decision = f"rolled back from v{before} to v{promoted['primary']['version']} by {actor}: {config.note}"
    elif config.approve_version:
        try:
            promoted = promote_set(registry, names, config.approve_version, actor=actor,
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
        if policy == "manual":
            decision = (f"v{challenger} passed every gate; manual policy: waiting for approval "
                        f"(keel approve {challenger} --note ...)")
        else:
            promoted = promote_set(
                registry, names, challenger, actor=f"keel auto-promotion (dagster run {context.run.run_id[:8]})",
                note="every promotion gate passed",
            )
            decision = f"v{challenger} promoted automatically: every gate passed"
    context.log.info(decision)
    after = alias_or_none(registry, names["primary"], registry.CHAMPION)
    return dg.MaterializeResult(
        metadata={
            "policy": policy,
            "decision": decision,
            "promoted": bool(promoted) and not config.rollback,
            "rolled_back": bool(config.rollback),
            "champion_version": after if after is not None else "none",
            "previous_version": _or_none(alias_or_none(registry, names["primary"], registry.PREVIOUS)),
            "challenger_version": _or_none(alias_or_none(registry, names["primary"], registry.CHALLENGER)),
            "actor": actor if (config.rollback or config.approve_version) else "policy",
            "note": config.note,
            "model_set": dg.MetadataValue.json({
                kind: alias_or_none(registry, name, registry.CHAMPION) for kind, name in names.items()
            }),
        }
    )


def _or_none(value: int | None) -> int | str:
    return "none" if value is None else value


evaluation_assets = [evaluation_report, champion]
