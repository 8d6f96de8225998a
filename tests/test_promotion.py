"""The promotion gates as pure functions of an evaluation report, and their place in the graph."""

from __future__ import annotations

import copy

import dagster as dg
import pytest

from keel.registry.promotion import GATES, PromotionGates, evaluate_gates, registered_names

GATES_DEFAULT = PromotionGates()


def _slices(aucs: dict[tuple[str, str], float], n: int = 1_000) -> list[dict]:
    return [{"slice": s, "value": v, "n": n, "roc_auc": auc, "small": False} for (s, v), auc in aucs.items()]


SLICES = {("carrier", "UA"): 0.70, ("carrier", "EV"): 0.66, ("origin", "EWR"): 0.69, ("month", 2): 0.68}


def report(*, challenger=0.70, champion: float | None = 0.69, baseline=0.61, ece=0.03,
           single_row_p95=25.0, batch_p95=5.0, challenger_slices=None, reference_slices=None) -> dict:
    """An evaluation report as keel.ml.report.build_report makes it, reduced to what gates read."""
    doc = {
        "versions": {"challenger": 3, "champion": 2 if champion is not None else None, "fallback": 3, "baseline": 3},
        "candidates": {
            "challenger": {"roc_auc": challenger, "ece": ece},
            "fallback": {"roc_auc": 0.63, "ece": 0.02},
            "baseline": {"roc_auc": baseline, "ece": 0.05},
        },
        "slices": {
            "challenger": _slices(challenger_slices or SLICES),
            "baseline": _slices(reference_slices or {k: v - 0.05 for k, v in SLICES.items()}),
        },
        "latency": {"challenger": {
            "single_row_us_p50": 20.0, "single_row_us_p95": single_row_p95, "single_row_us_p99": 40.0,
            "batch_ms_p50": 4.0, "batch_ms_p95": batch_p95, "batch_ms_p99": 6.0, "batch_rows": 1000.0,
        }},
        "errors": {},
    }
    if champion is not None:
        doc["candidates"]["champion"] = {"roc_auc": champion, "ece": 0.03}
        doc["slices"]["champion"] = _slices(reference_slices or SLICES)
    return doc


def verdicts(doc: dict, gates: PromotionGates = GATES_DEFAULT) -> dict[str, tuple[bool, str]]:
    return {r.name: (r.passed, r.message) for r in evaluate_gates(doc, gates)}


def test_a_good_challenger_passes_every_gate_in_order():
    results = evaluate_gates(report(), GATES_DEFAULT)
    assert [r.name for r in results] == list(GATES)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]


def test_without_a_champion_beats_champion_passes_saying_so_and_slices_compare_to_the_baseline():
    result = verdicts(report(champion=None))
    assert result["beats_champion"] == (True, result["beats_champion"][1])
    assert "no champion yet" in result["beats_champion"][1]
    assert result["no_slice_regression"][0]
    assert "baseline v3" in result["no_slice_regression"][1]


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "passed"),
    [(0.70, 0.69, 0.0, True), (0.69, 0.69, 0.0, True), (0.685, 0.69, 0.0, False),
     (0.70, 0.69, 0.02, False), (0.72, 0.69, 0.02, True)],
)
def test_beats_champion_needs_the_margin(challenger, champion, margin, passed):
    passed_now, message = verdicts(report(challenger=challenger, champion=champion),
                                   PromotionGates(min_auc_gain=margin))["beats_champion"]
    assert passed_now is passed
    assert f"{challenger:.4f}" in message and f"{champion:.4f}" in message and "champion v2" in message
    if not passed:
        assert message.startswith("does not beat the champion")


def test_a_champion_that_cannot_score_fails_beats_champion_with_its_error():
    doc = report()
    doc["errors"]["champion"] = "flight_disruption v2 failed to load: ValueError: sha256 mismatch"
    passed, message = verdicts(doc)["beats_champion"]
    assert not passed and "sha256 mismatch" in message


def test_one_slice_regressing_beyond_the_tolerance_fails_and_is_named():
    worse = dict(SLICES) | {("carrier", "EV"): 0.58}
    passed, message = verdicts(report(challenger_slices=worse))["no_slice_regression"]
    assert not passed
    assert "1 of 4 slices" in message and "carrier=EV: 0.6600 -> 0.5800 (-0.0800)" in message


def test_small_slices_and_slices_without_auc_are_not_gated():
    worse = dict(SLICES) | {("carrier", "EV"): 0.40}
    doc = report(challenger_slices=worse)
    for row in doc["slices"]["challenger"]:
        if row["value"] == "EV":
            row["n"] = 100  # below slice_min_rows: noise the gate must not act on
    assert verdicts(doc)["no_slice_regression"][0]
    doc = report(challenger_slices=worse)
    for row in doc["slices"]["champion"]:
        if row["value"] == "EV":
            row["roc_auc"] = None  # one class in the slice
    assert verdicts(doc)["no_slice_regression"][0]


@pytest.mark.parametrize(("single", "batch", "passed"), [(25.0, 5.0, True), (1_500.0, 5.0, False), (25.0, 250.0, False)])
def test_latency_budget(single, batch, passed):
    ok, message = verdicts(report(single_row_p95=single, batch_p95=batch))["within_latency_budget"]
    assert ok is passed
    assert "p50/p95/p99" in message and (passed or message.startswith("over budget"))


@pytest.mark.parametrize(("ece", "passed"), [(0.05, True), (0.08, True), (0.12, False)])
def test_calibration_bound(ece, passed):
    ok, message = verdicts(report(ece=ece))["calibrated"]
    assert ok is passed and f"{ece:.4f}" in message


def test_beats_baseline_needs_its_margin_and_a_defined_auc():
    assert verdicts(report(challenger=0.615, baseline=0.61))["beats_baseline"][0] is False
    assert verdicts(report(challenger=0.62, baseline=0.61))["beats_baseline"][0] is True
    doc = report()
    doc["candidates"]["challenger"]["roc_auc"] = None
    passed, message = verdicts(doc)["beats_baseline"]
    assert not passed and "undefined" in message


def test_gates_do_not_modify_the_report():
    doc = report()
    before = copy.deepcopy(doc)
    evaluate_gates(doc, GATES_DEFAULT)
    assert doc == before


def test_registered_names_of_the_three_kinds():
    assert registered_names("flight_disruption") == {
        "primary": "flight_disruption",
        "fallback": "flight_disruption_fallback",
        "baseline": "flight_disruption_baseline",
    }


def test_the_gates_are_blocking_checks_upstream_of_the_champion():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    report_key = dg.AssetKey(["models", "evaluation_report"])
    checks = {k.name: graph.get_check_spec(k) for k in graph.asset_check_keys if k.asset_key == report_key}
    assert set(checks) == set(GATES)
    assert all(spec.blocking and spec.description for spec in checks.values())
    champion = graph.get(dg.AssetKey(["models", "champion"]))
    assert champion.parent_keys == {report_key}
    predictions = graph.get(dg.AssetKey(["models", "predictions"]))
    assert dg.AssetKey(["models", "champion"]) in predictions.parent_keys
    assert predictions.partitions_def is not None
    models = {spec.key for spec in defs.resolve_all_asset_specs() if spec.group_name == "models"}
    assert {key.path[-1] for key in models} == {
        "training_set", "primary_model", "fallback_model", "baseline_model", "evaluation_report", "champion",
        "predictions",
    }
