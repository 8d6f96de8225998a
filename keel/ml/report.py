"""The evaluation report of a challenger: every candidate on the same holdout, side by side.

Candidates are the new primary model (``challenger``), the current ``champion`` (when there
is one), the ``fallback`` and the rule ``baseline``. Each is scored on the training set's
validation part, to choose its operating threshold (maximum F1), and on the test part (the
holdout), where every metric is computed at that threshold. The report holds the metrics,
the slice tables, the scoring latency and the plots; it is written as files (JSON, CSV,
Markdown, PNG) that Dagster shows and MLflow stores with the challenger's run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.ml import evaluation as ev
from keel.ml.modeling import Split, TrainedModel
from keel.core.plain import json_ready
from keel.core.spec import ModelSpec
from keel.render import plots
from keel.render.tables import frame_table

CANDIDATES = ("challenger", "champion", "fallback", "baseline")
REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"


def _labels(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    return frame[spec.label].to_numpy(dtype=np.float64)


def score_candidates(
    split: Split, spec: ModelSpec, models: Mapping[str, TrainedModel]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Validation and test predictions of each model; a model that fails to score is left
    out and its error returned (the gates that need it then fail, saying why)."""
    predictions, errors = {}, {}
    for name, model in models.items():
        try:
            predictions[name] = {"valid": model.predict(split.valid), "test": model.predict(split.test)}
        except Exception as exc:  # recorded and reported by the gates, never hidden
            errors[name] = f"{type(exc).__name__}: {exc}"
    return predictions, errors


def holdout_metrics(split: Split, spec: ModelSpec, model: TrainedModel) -> dict[str, dict[str, Any]]:
    """``evaluate`` on validation (choosing the threshold) and on test (at that threshold),
    from the predictions a freshly trained model carries."""
    valid_pred = model.valid_pred if model.valid_pred is not None else model.predict(split.valid)
    test_pred = model.test_pred if model.test_pred is not None else model.predict(split.test)
    valid = ev.evaluate(_labels(split.valid, spec), valid_pred)
    test = ev.evaluate(_labels(split.test, spec), test_pred, threshold=valid["threshold"])
    return {"valid": valid, "test": test}


def build_report(
    split: Split,
    spec: ModelSpec,
    models: Mapping[str, TrainedModel],
    versions: Mapping[str, int | None],
    *,
    slice_min_rows: int,
    errors: Mapping[str, str] | None = None,
    measure_latency: bool = True,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The report (JSON-ready) and each candidate's predictions."""
    predictions, scoring_errors = score_candidates(split, spec, models)
    errors = {**(errors or {}), **scoring_errors}
    y_valid, y_test = _labels(split.valid, spec), _labels(split.test, spec)
    candidates, slices, latency = {}, {}, {}
    for name, pred in predictions.items():
        threshold = ev.evaluate(y_valid, pred["valid"])["threshold"]
        candidates[name] = ev.evaluate(y_test, pred["test"], threshold=threshold)
        candidates[name]["threshold_source"] = "max_f1_on_validation"
        table = ev.evaluate_slices(split.test, y_test, pred["test"], spec.slices, threshold, min_rows=slice_min_rows)
        slices[name] = [json_ready(row) for row in table.to_dict("records")]
        if measure_latency:
            latency[name] = ev.latency(models[name], split.test)
    report = {
        "holdout": split.summary()["test"],
        "validation": split.summary()["valid"],
        "versions": {name: versions.get(name) for name in CANDIDATES if name in models or versions.get(name)},
        "candidates": candidates,
        "slices": slices,
        "latency": latency,
        "errors": errors,
        "slice_columns": list(spec.slices),
    }
    return report, predictions


# --------------------------------------------------------------------------------------------
# Files, plots and Markdown


def write_report(
    report: Mapping[str, Any],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    y_test: np.ndarray,
    gate_results: Sequence[Any],
    directory: Path,
) -> dict[str, Path]:
    """Write the report's files into ``directory``; returns them by role."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    document = {**report, "gates": [{"name": g.name, "passed": g.passed, "message": g.message} for g in gate_results]}
    files["json"] = directory / REPORT_FILE
    files["json"].write_text(json.dumps(json_ready(document), indent=2) + "\n")
    comparison = comparison_table(report)
    files["comparison"] = directory / "comparison.csv"
    comparison.to_csv(files["comparison"])
    files["slices"] = directory / "slices.csv"
    slice_table(report).to_csv(files["slices"], index=False)
    test_predictions = {name: pred["test"] for name, pred in predictions.items()}
    files["calibration_png"] = plots.plot_calibration(report["candidates"], directory / "calibration.png")
    prevalence = float(np.mean(np.asarray(y_test, dtype=np.float64)))
    files["roc_pr_png"] = plots.plot_roc_pr(ev.curves(y_test, test_predictions), prevalence, directory / "roc_pr.png")
    challenger_slices = pd.DataFrame(report["slices"]["challenger"])
    files["slices_png"] = plots.plot_slices(challenger_slices, directory / "slices_challenger.png")
    files["markdown"] = directory / MARKDOWN_FILE
    files["markdown"].write_text(report_markdown(report, gate_results, image=None))
    return files


def comparison_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per metric, one column per candidate (labelled with its version)."""
    table = ev.compare({_column(report, name): result for name, result in report["candidates"].items()})
    for name, values in report["latency"].items():
        for metric in ("single_row_us_p50", "single_row_us_p95", "single_row_us_p99",
                       "batch_ms_p50", "batch_ms_p95", "batch_ms_p99"):
            table.loc[metric, _column(report, name)] = values[metric]
    return table


def _column(report: Mapping[str, Any], name: str) -> str:
    version = report["versions"].get(name)
    return f"{name} v{version}" if version is not None else name


def slice_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """Per slice value: rows, prevalence and each candidate's AUC, plus the challenger's
    AUC change against the reference (champion, else baseline)."""
    reference = "champion" if "champion" in report["slices"] else "baseline"
    frames = []
    for name, records in report["slices"].items():
        frame = pd.DataFrame(records)
        if frame.empty:
            continue
        frame = frame.assign(value=frame["value"].map(lambda v: "" if v is None else str(v)))
        frames.append(frame.set_index(["slice", "value"])[["roc_auc"]].rename(columns={"roc_auc": f"auc_{name}"}))
    base = pd.DataFrame(report["slices"]["challenger"])
    base = base.assign(value=base["value"].map(lambda v: "" if v is None else str(v))).set_index(["slice", "value"])
    table = base[["n", "prevalence", "small", "precision", "recall", "log_loss", "brier"]].join(frames, how="left")
    if f"auc_{reference}" in table:
        table[f"auc_change_vs_{reference}"] = (
            pd.to_numeric(table["auc_challenger"], errors="coerce")
            - pd.to_numeric(table[f"auc_{reference}"], errors="coerce")
        )
    return table.reset_index()


def report_markdown(report: Mapping[str, Any], gate_results: Sequence[Any], image: str | None) -> str:
    """The report as Markdown: gates, the side-by-side table, latency, slices, and
    ``image`` (a PNG data URI or path) when given."""
    holdout = report["holdout"]
    parts = [
        f"**Holdout** {holdout['start']}..{holdout['end']}: {holdout['rows']:,} rows, "
        f"{holdout['positives']:,} positives. Thresholds chosen on validation "
        f"({report['validation']['start']}..{report['validation']['end']}), applied on the holdout.",
        "",
        "### Gates",
        frame_table(pd.DataFrame(
            [("passed" if g.passed else "FAILED", g.name, g.message) for g in gate_results],
            columns=["verdict", "gate", "why"],
        )),
    ]
    if report.get("errors"):
        parts += ["", "**Errors:** " + "; ".join(f"{k}: {v}" for k, v in report["errors"].items())]
    comparison = comparison_table(report).reset_index()
    parts += ["", "### Side by side", frame_table(comparison)]
    per_class = []
    for name, result in report["candidates"].items():
        for label, values in result["per_class"].items():
            per_class.append((_column(report, name), label, result["threshold"], values["precision"],
                              values["recall"], values["support"]))
    parts += ["", "### Precision and recall per class at the operating threshold",
              frame_table(pd.DataFrame(per_class, columns=["model", "class", "threshold", "precision",
                                                               "recall", "support"]))]
    slices = slice_table(report)
    change = [c for c in slices.columns if c.startswith("auc_change_vs_")]
    shown = slices[~slices["small"]]
    if change:
        shown = shown.sort_values(change[0], na_position="last")
    parts += ["", "### Slices (challenger; small slices have no metrics)", frame_table(shown)]
    calibration = pd.DataFrame(report["candidates"]["challenger"]["calibration"])
    parts += ["", "### Calibration (challenger)", frame_table(calibration)]
    if image:
        parts += ["", f"![ROC and calibration]({image})"]
    return "\n".join(parts) + "\n"


def thumbnail_data_uri(report: Mapping[str, Any], predictions: Mapping[str, Mapping[str, np.ndarray]],
                       y_test: np.ndarray) -> str:
    """A small PNG (ROC curves and reliability diagram) as a base64 data URI, for the UI."""
    labels = {name: _column(report, name) for name in predictions}
    rocs = ev.curves(y_test, {labels[name]: pred["test"] for name, pred in predictions.items()})
    for name, label in labels.items():
        rocs[label]["roc_auc"] = report["candidates"][name]["roc_auc"]
    return plots.evaluation_thumbnail(rocs, {labels[name]: report["candidates"][name] for name in predictions})
