"""Promotion gates and promotion: when a challenger may replace the champion, and how.

The gates read an evaluation report (``keel.ml.report.build_report``): every candidate scored on
the same holdout, the slice tables, the latency. They are pure functions, so each verdict can
be pinned by a unit test. The reference a challenger must not fall behind is the champion;
before there is one, the business-rule baseline:

==========================  =================================================================
gate                        passes when
==========================  =================================================================
``beats_champion``          challenger AUC >= champion AUC + ``min_auc_gain`` on the holdout
                            (passes, saying so, when there is no champion yet)
``no_slice_regression``     no slice (each value of ModelSpec.slices; at least
                            ``slice_min_rows`` rows in both) loses more than
                            ``slice_auc_tolerance`` AUC against the champion (or the baseline)
``within_latency_budget``   single-row p95 <= ``single_row_p95_us`` and a 1,000-row batch
                            p95 <= ``batch_p95_ms``
``calibrated``              expected calibration error <= ``max_ece``
``beats_baseline``          challenger AUC >= baseline AUC + ``min_auc_gain_over_baseline``
==========================  =================================================================

A model set is promoted together: the primary model with the fallback and the baseline
trained in the same run (same Dagster run id in their lineage, :func:`siblings`), so that
serving never mixes a new primary with fallbacks fitted on other data; the move itself is
one recorded transaction (``keel.registry.model_set``). ``approve`` and the ``auto`` policy
promote only a version whose gates passed (recorded as ``keel.gates`` on the version).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from keel.core.policies import PromotionGates
from keel.core.verdict import GateResult

GATES = ("beats_champion", "no_slice_regression", "within_latency_budget", "calibrated", "beats_baseline")
GATE_DESCRIPTIONS = {
    "beats_champion": "The challenger's ROC AUC on the holdout is at least the champion's plus the margin.",
    "no_slice_regression": (
        "No slice (a value of one of the model's slice columns) loses more AUC than the tolerance "
        "against the champion, or against the baseline while there is no champion."
    ),
    "within_latency_budget": "Single-row and 1,000-row batch scoring latency (p95) stay within budget.",
    "calibrated": "Expected calibration error on the holdout stays within its bound.",
    "beats_baseline": "The challenger's ROC AUC beats the business-rule baseline's by the margin.",
}
GATES_TAG = "keel.gates"
GATE_TAG_PREFIX = "keel.gate."
RUN_TAG = "keel.lineage.dagster_run_id"


def _auc(report: Mapping[str, Any], candidate: str) -> float | None:
    evaluation = report["candidates"].get(candidate)
    return None if evaluation is None else evaluation.get("roc_auc")


def _label(report: Mapping[str, Any], candidate: str) -> str:
    version = report["versions"].get(candidate)
    return f"{candidate} v{version}" if version is not None else candidate


def beats_champion(report: Mapping[str, Any], gates: PromotionGates) -> GateResult:
    challenger = _auc(report, "challenger")
    meta = {"min_auc_gain": gates.min_auc_gain, "challenger_auc": challenger}
    if report["versions"].get("champion") is None:
        return GateResult("beats_champion", True, "no champion yet: nothing to beat; the first model "
                          "is held to the baseline by the other gates", meta)
    if report.get("errors", {}).get("champion"):
        return GateResult("beats_champion", False, f"the champion could not score the holdout: "
                          f"{report['errors']['champion']}", meta)
    champion = _auc(report, "champion")
    meta |= {"champion_auc": champion}
    if challenger is None or champion is None:
        return GateResult("beats_champion", False, "ROC AUC is undefined on the holdout (one class only)", meta)
    gain = challenger - champion
    meta |= {"auc_gain": gain}
    verdict = (
        f"{_label(report, 'challenger')} AUC {challenger:.4f} vs {_label(report, 'champion')} "
        f"{champion:.4f} ({gain:+.4f}, margin {gates.min_auc_gain:+.4f})"
    )
    if gain >= gates.min_auc_gain:
        return GateResult("beats_champion", True, verdict, meta)
    return GateResult("beats_champion", False, f"does not beat the champion: {verdict}", meta)


def no_slice_regression(report: Mapping[str, Any], gates: PromotionGates) -> GateResult:
    reference = "champion" if report["versions"].get("champion") is not None else "baseline"
    ours = {(r["slice"], _key(r["value"])): r for r in report["slices"]["challenger"]}
    theirs = {(r["slice"], _key(r["value"])): r for r in report["slices"].get(reference) or []}
    compared = []
    for key, row in ours.items():
        other = theirs.get(key)
        if other is None or row["roc_auc"] is None or other["roc_auc"] is None:
            continue
        if min(row["n"], other["n"]) < gates.slice_min_rows:
            continue
        compared.append((key, other["roc_auc"], row["roc_auc"], row["roc_auc"] - other["roc_auc"]))
    compared.sort(key=lambda c: c[3])
    regressed = [c for c in compared if -c[3] > gates.slice_auc_tolerance]
    meta = {
        "reference": _label(report, reference),
        "tolerance": gates.slice_auc_tolerance,
        "min_rows": gates.slice_min_rows,
        "slices_compared": len(compared),
        "regressed": [f"{s}={v}: {a:.4f} -> {b:.4f} ({d:+.4f})" for (s, v), a, b, d in regressed],
    }
    if not compared:
        return GateResult("no_slice_regression", False, f"no slice with {gates.slice_min_rows}+ rows "
                          f"and both classes to compare against the {_label(report, reference)}", meta)
    if regressed:
        shown = "; ".join(meta["regressed"][:5])
        more = f" and {len(regressed) - 5} more" if len(regressed) > 5 else ""
        return GateResult(
            "no_slice_regression", False,
            f"{len(regressed)} of {len(compared)} slices lose more than {gates.slice_auc_tolerance} AUC "
            f"against the {_label(report, reference)}: {shown}{more}", meta,
        )
    (s, v), a, b, d = compared[0]
    return GateResult(
        "no_slice_regression", True,
        f"{len(compared)} slices within {gates.slice_auc_tolerance} AUC of the {_label(report, reference)}; "
        f"smallest change {s}={v} {a:.4f} -> {b:.4f} ({d:+.4f})", meta,
    )


def _key(value: Any) -> str:
    return "" if value is None else str(value)


def within_latency_budget(report: Mapping[str, Any], gates: PromotionGates) -> GateResult:
    latency = report["latency"]["challenger"]
    single, batch = latency["single_row_us_p95"], latency["batch_ms_p95"]
    meta = {"budget_single_row_p95_us": gates.single_row_p95_us, "budget_batch_p95_ms": gates.batch_p95_ms,
            **{k: v for k, v in latency.items() if k.startswith(("single_row_us", "batch_ms"))}}
    verdict = (
        f"single row p50/p95/p99 {latency['single_row_us_p50']:.0f}/{single:.0f}/"
        f"{latency['single_row_us_p99']:.0f} us (budget p95 {gates.single_row_p95_us:.0f}); "
        f"batch of {latency['batch_rows']:.0f} p95 {batch:.1f} ms (budget {gates.batch_p95_ms:.0f})"
    )
    passed = single <= gates.single_row_p95_us and batch <= gates.batch_p95_ms
    return GateResult("within_latency_budget", passed, verdict if passed else f"over budget: {verdict}", meta)


def calibrated(report: Mapping[str, Any], gates: PromotionGates) -> GateResult:
    ece = report["candidates"]["challenger"]["ece"]
    meta = {"ece": ece, "max_ece": gates.max_ece}
    verdict = f"expected calibration error {ece:.4f} (bound {gates.max_ece})"
    return GateResult("calibrated", ece <= gates.max_ece, verdict if ece <= gates.max_ece else f"miscalibrated: {verdict}", meta)


def beats_baseline(report: Mapping[str, Any], gates: PromotionGates) -> GateResult:
    challenger, baseline = _auc(report, "challenger"), _auc(report, "baseline")
    meta = {"challenger_auc": challenger, "baseline_auc": baseline, "margin": gates.min_auc_gain_over_baseline}
    if report.get("errors", {}).get("baseline"):
        return GateResult("beats_baseline", False, f"the baseline could not score the holdout: "
                          f"{report['errors']['baseline']}", meta)
    if challenger is None or baseline is None:
        return GateResult("beats_baseline", False, "ROC AUC is undefined on the holdout (one class only)", meta)
    verdict = (
        f"{_label(report, 'challenger')} AUC {challenger:.4f} vs {_label(report, 'baseline')} {baseline:.4f} "
        f"({challenger - baseline:+.4f}, margin {gates.min_auc_gain_over_baseline:+.4f})"
    )
    passed = challenger - baseline >= gates.min_auc_gain_over_baseline
    return GateResult("beats_baseline", passed, verdict if passed else f"does not beat the baseline: {verdict}", meta)


_GATE_FUNCTIONS = {
    "beats_champion": beats_champion,
    "no_slice_regression": no_slice_regression,
    "within_latency_budget": within_latency_budget,
    "calibrated": calibrated,
    "beats_baseline": beats_baseline,
}


def evaluate_gates(report: Mapping[str, Any], gates: PromotionGates) -> list[GateResult]:
    """Every gate's verdict on ``report``, in ``GATES`` order."""
    return [_GATE_FUNCTIONS[name](report, gates) for name in GATES]


# --------------------------------------------------------------------------------------------
# Recording verdicts and promoting (these take a configured ``keel.registry.store``)


def record_verdicts(registry: ModuleType, name: str, version: int, results: Sequence[GateResult],
                    champion: int | None) -> None:
    """Tag ``version`` with each gate's verdict and the overall one (``keel.gates``)."""
    client = registry.client()
    passed = all(r.passed for r in results)
    tags = {
        GATES_TAG: "passed" if passed else "failed",
        f"{GATES_TAG}.evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        f"{GATES_TAG}.champion": "none" if champion is None else str(champion),
        **{f"{GATE_TAG_PREFIX}{r.name}": f"{'passed' if r.passed else 'failed'}: {r.message}"[:4900] for r in results},
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def gate_verdict(registry: ModuleType, name: str, version: int) -> tuple[str | None, dict[str, str]]:
    """(``"passed"``/``"failed"``/None when never evaluated, each gate's tag)."""
    tags = registry.client().get_model_version(name, str(version)).tags
    return tags.get(GATES_TAG), {k[len(GATE_TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(GATE_TAG_PREFIX)}


def siblings(registry: ModuleType, names: Mapping[str, str], version: int) -> dict[str, int]:
    """The version of each kind trained in the same run as primary ``version``."""
    client = registry.client()
    run_id = client.get_model_version(names["primary"], str(version)).tags.get(RUN_TAG)
    found = {"primary": version}
    for kind, name in names.items():
        if kind == "primary" or run_id is None:
            continue
        versions = [
            int(v.version) for v in _versions(client, name) if v.tags.get(RUN_TAG) == run_id
        ]
        if versions:
            found[kind] = max(versions)
    return found


def _versions(client, name: str) -> list:
    # MLflow loads only when a registry is read: the gates themselves are pure functions.
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return []
    # The registry's own filter language; the name comes from the configuration.
    return list(client.search_model_versions(filter_string=f"name = '{name}'"))


def registered_names(name: str) -> dict[str, str]:
    """The registered model name of each kind: ``name``, ``name_fallback``, ``name_baseline``."""
    return {"primary": name, "fallback": f"{name}_fallback", "baseline": f"{name}_baseline"}


def alias_or_none(registry: ModuleType, name: str, alias: str) -> int | None:
    """The version behind ``alias``; None when the alias or the registered model does not exist."""
    # MLflow loads only when a registry is read: the gates themselves are pure functions.
    from mlflow.exceptions import MlflowException

    try:
        return registry.get_alias(name, alias)
    except MlflowException:
        return None
