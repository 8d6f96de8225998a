"""Render: every plot is a PNG drawn without pyplot from figures computed elsewhere, and
every Markdown table is built by one function that writes each cell one way."""

import base64
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from keel.ml import evaluation as ev
from keel.core.policies import TriggerPolicy
from keel.monitoring.daily import build_reference, feature_drift, performance, prediction_drift
from keel.render import plots
from keel.render.tables import cell, frame_table, markdown_table

PNG = b"\x89PNG\r\n\x1a\n"


def day_of_features(seed: int, rows: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "temp": np.round(rng.normal(12.0 + shift, 8.0, rows), 1),
        "dep_hour": rng.integers(5, 24, rows).astype(float),
        "carrier": rng.choice(["UA", "B6", "EV"], rows),
    })


@pytest.fixture(scope="module")
def reference():
    scores = np.random.default_rng(2).beta(2, 5, 3_000)
    return build_reference(day_of_features(1, 3_000), ["temp", "dep_hour"], ["carrier"], scores=scores, threshold=0.4)


@pytest.fixture(scope="module")
def drift_days(reference):
    first = dt.date(2013, 4, 8)
    return [feature_drift(reference, day_of_features(10 + i, 400, shift=2.0 * i), day=first + dt.timedelta(days=i),
                          importance={"temp": 3.0, "dep_hour": 1.0, "carrier": 1.0}) for i in range(4)]


@pytest.fixture(scope="module")
def holdout():
    rng = np.random.default_rng(41)
    y = rng.integers(0, 2, 600).astype(float)
    return y, np.clip(0.3 * y + rng.uniform(0, 0.7, 600), 0, 1), rng.uniform(0, 1, 600)


def is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


def test_every_plot_is_a_png_and_leaves_pyplot_alone(tmp_path, reference, drift_days, holdout):
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    y, p, noise = holdout
    result = ev.evaluate(y, p)
    slices = ev.evaluate_slices(pd.DataFrame({"carrier": np.resize(["UA", "B6"], y.size)}), y, p, ["carrier"],
                                threshold=result["threshold"], min_rows=50)
    dates = np.repeat(pd.date_range("2013-04-01", periods=30).to_numpy(), 20)
    months = [{"month": f"2013-0{m}", "champion_auc": 0.7, "static_auc": 0.68} for m in range(3, 7)]
    drift = [(dt.date(2013, 3, 1) + dt.timedelta(days=i), 0.1 * (i % 4), 0.2) for i in range(90)]
    events = [{"day": "2013-04-02", "kind": "retrain_requested"}, {"day": "2013-04-02", "kind": "promoted"}]

    paths = [
        plots.plot_calibration({"model": result}, tmp_path / "calibration.png"),
        plots.plot_roc_pr(ev.curves(y, {"model": p, "noise": noise}), float(y.mean()), tmp_path / "roc_pr.png"),
        plots.plot_slices(slices, tmp_path / "nested" / "slices.png"),
        plots.plot_drift_timeline(drift_days, tmp_path / "timeline.png", policy=TriggerPolicy()),
        plots.plot_feature_drift(drift_days[-1], tmp_path / "feature_drift.png"),
        plots.plot_score_distribution(prediction_drift(reference, np.random.default_rng(3).beta(3, 5, 500)),
                                      tmp_path / "scores.png"),
        plots.plot_performance(performance(y, p, dates), tmp_path / "performance.png", policy=TriggerPolicy()),
        plots.plot_simulation_timeline(tmp_path / "simulation" / "timeline.png", months, drift, events, threshold=0.2),
    ]

    assert all(is_png(path) for path in paths)
    assert plt.get_fignums() == open_figures


def test_the_thumbnail_is_a_png_data_uri(holdout):
    y, p, noise = holdout
    curves = ev.curves(y, {"model v1": p, "noise": noise})
    uri = plots.evaluation_thumbnail(curves, {"model v1": ev.evaluate(y, p), "noise": ev.evaluate(y, noise)})
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix) and base64.b64decode(uri[len(prefix):])[:8] == PNG


def test_a_drift_timeline_without_records_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no drift records"):
        plots.plot_drift_timeline([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize(
    "value, digits, text",
    [
        (None, 4, "-"), (float("nan"), 4, "-"), (True, 4, "yes"), (np.bool_(False), 4, "no"),
        (1234, 4, "1,234"), (np.int64(7), 4, "7"), (0.123456, 4, "0.1235"), (0.123456, 3, "0.123"),
        (np.float64(2.5), 2, "2.50"), (2500.0, 4, "2,500"), (99.0, 4, "99.0000"),
        (dt.date(2013, 4, 8), 4, "2013-04-08"), ("text", 4, "text"),
    ],
)
def test_a_cell_is_written_the_one_way_a_person_reads_it(value, digits, text):
    assert cell(value, digits) == text


def test_a_markdown_table_has_its_header_a_rule_and_one_line_per_row():
    table = markdown_table(["day", "rows", "AUC", "drifted"],
                           [(dt.date(2013, 4, 8), 1_021, 0.71234, False), ("2013-04-09", 998, None, True)])
    assert table.splitlines() == [
        "| day | rows | AUC | drifted |",
        "|---|---|---|---|",
        "| 2013-04-08 | 1,021 | 0.7123 | no |",
        "| 2013-04-09 | 998 | - | yes |",
    ]


def test_a_frame_becomes_the_same_table_as_its_rows():
    frame = pd.DataFrame({"metric": ["roc_auc", "n"], "model": [0.7, 5_000.0]})
    assert frame_table(frame, digits=3) == markdown_table(["metric", "model"], [("roc_auc", 0.7), ("n", 5_000.0)],
                                                          digits=3)
    assert frame_table(frame, digits=3).splitlines()[2:] == ["| roc_auc | 0.700 |", "| n | 5,000 |"]
