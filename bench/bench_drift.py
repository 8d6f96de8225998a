"""Benchmark keel.monitoring.drift against Evidently's DataDriftPreset on the same data.

    python bench/bench_drift.py                      # a day (1,000 rows vs 250,000) and 1M vs 1M
    python bench/bench_drift.py --rows 100000 --features 40

For each size it prints the profile build time (paid once per training set), the time of
`compare`, Evidently's time for `Report([DataDriftPreset()]).run(...)` (Dataset construction
included), their ratio, and how many per-column decisions differ.  Evidently at 1M rows
takes a minute or more.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")  # before Evidently is imported: no usage reports

import numpy as np
import pandas as pd

# Run as a script from a checkout: make `keel` importable without installing the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keel.monitoring.drift import ReferenceProfile, compare  # noqa: E402

DAY_ROWS = 1_000
DAY_REFERENCE_ROWS = 250_000
LARGE_ROWS = 1_000_000

# Evidently's rule per default method (evidently 0.7.23, legacy/calculations/stattests).
EVIDENTLY_DRIFTED = {
    "K-S p_value": lambda score, threshold: score <= threshold,
    "chi-square p_value": lambda score, threshold: score < threshold,
    "Z-test p_value": lambda score, threshold: score < threshold,
    "Wasserstein distance (normed)": lambda score, threshold: score >= threshold,
    "Jensen-Shannon distance": lambda score, threshold: score >= threshold,
}

NUMERIC_KINDS = ["dep_delay", "distance", "air_time", "temp", "wind_speed", "stops", "visib"]
CARRIERS = np.array(["UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX", "FL", "AS",
                     "F9", "YV", "HA", "OO"], dtype=object)
CARRIER_SHARES = np.array([17.4, 16.2, 16.1, 14.3, 9.7, 7.8, 6.1, 5.4, 3.6, 1.5, 1.0, 0.2,
                           0.2, 0.2, 0.1, 0.01])


def numeric_column(kind, rng, rows, drift):
    """A flights/weather-like numeric column; `drift` names the change applied to it."""
    if kind == "dep_delay":
        values = np.round(rng.gamma(0.6, 22.0, rows) - 5.0)  # whole minutes: few distinct values
    elif kind == "distance":
        values = rng.lognormal(6.6, 0.6, rows)
    elif kind == "air_time":
        values = rng.normal(150.0, 45.0, rows)
    elif kind == "temp":
        values = rng.normal(55.0, 17.0, rows)
    elif kind == "wind_speed":
        values = rng.exponential(10.0, rows)
    elif kind == "stops":
        values = rng.choice([0.0, 1.0, 2.0, 3.0], rows, p=[0.6, 0.3, 0.08, 0.02])
    else:
        values = rng.uniform(0.0, 10.0, rows)
    if drift == "shift":
        values = values + 0.3 * values.std()
    elif drift == "scale":
        values = values.mean() + 1.3 * (values - values.mean())
    elif drift == "stuck_sensor":
        values[: rows // 3] = values[0]
    elif drift == "nulls":
        values[rng.random(rows) < 0.2] = np.nan
    return values


def categorical_column(index, rng, rows, drift):
    if index % 3 == 0:
        shares = CARRIER_SHARES.copy()
        if drift == "share":
            shares[0], shares[3] = shares[3], shares[0]
        values = rng.choice(CARRIERS, rows, p=shares / shares.sum())
    elif index % 3 == 1:
        values = rng.choice(np.array(["EWR", "JFK", "LGA"], dtype=object), rows, p=[0.4, 0.33, 0.27])
    else:
        values = rng.choice(np.array([f"{hour:02d}h" for hour in range(5, 24)], dtype=object), rows)
    if drift == "unseen":
        values[rng.random(rows) < 0.15] = "NEW"
    return values


def make_frames(reference_rows, current_rows, features, seed=0):
    """Reference and current frames; about a third of the columns drift in current."""
    rng = np.random.default_rng(seed)
    n_numeric = round(features * 0.75)
    numeric_drifts = ["none", "shift", "none", "stuck_sensor", "none", "scale", "nulls"]
    categorical_drifts = ["none", "share", "none", "unseen", "none"]
    reference, current, numeric, categorical = {}, {}, [], []
    for i in range(n_numeric):
        kind = NUMERIC_KINDS[i % len(NUMERIC_KINDS)]
        name = f"{kind}_{i}"
        reference[name] = numeric_column(kind, rng, reference_rows, "none")
        current[name] = numeric_column(kind, rng, current_rows, numeric_drifts[i % len(numeric_drifts)])
        numeric.append(name)
    for j in range(features - n_numeric):
        name = f"category_{j}"
        reference[name] = categorical_column(j, rng, reference_rows, "none")
        drift = categorical_drifts[j % len(categorical_drifts)]
        current[name] = categorical_column(j, rng, current_rows, drift)
        categorical.append(name)
    return pd.DataFrame(reference), pd.DataFrame(current), numeric, categorical


def run_evidently(reference, current, numeric, categorical):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    elapsed = time.perf_counter() - started
    columns = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"] == "evidently:metric_v2:ValueDrift":
            score = metric["value"]
            drifted = EVIDENTLY_DRIFTED[config["method"]](score, config["threshold"])
            columns[config["column"]] = (score, drifted)
    return elapsed, columns


def bench(label, reference_rows, current_rows, features, repeats):
    print(f"[{label}] generating {reference_rows:,} reference and {current_rows:,} current rows "
          f"x {features} features", flush=True)
    reference, current, numeric, categorical = make_frames(reference_rows, current_rows, features)

    started = time.perf_counter()
    profile = ReferenceProfile.from_frame(reference, numeric=numeric, categorical=categorical)
    build_s = time.perf_counter() - started
    profile_kb = len(json.dumps(profile.to_dict())) / 1024
    print(f"[{label}] profile built in {build_s:.2f} s ({profile_kb:,.0f} KB of JSON)", flush=True)

    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = compare(profile, current)
        timings.append(time.perf_counter() - started)
    compare_s = statistics.median(timings)
    print(f"[{label}] compare: {compare_s:.4f} s (median of {repeats}); "
          f"running Evidently (this is the slow part)...", flush=True)

    evidently_s, evidently = run_evidently(reference, current, numeric, categorical)
    print(f"[{label}] Evidently: {evidently_s:.2f} s", flush=True)

    disagreements = [f.feature for f in report.features if f.drifted != evidently[f.feature][1]]
    score_gap = max(abs(f.drift_score - evidently[f.feature][0]) for f in report.features)
    if disagreements:
        print(f"[{label}] decisions differ on: {disagreements}", flush=True)
    return {
        "scenario": label,
        "ref_rows": f"{reference_rows:,}",
        "cur_rows": f"{current_rows:,}",
        "features": f"{len(numeric)}+{len(categorical)}",
        "profile_s": f"{build_s:.2f}",
        "profile_kb": f"{profile_kb:,.0f}",
        "compare_s": f"{compare_s:.4f}",
        "evidently_s": f"{evidently_s:.2f}",
        "ratio": f"{compare_s / evidently_s:.4f}",
        "speedup": f"{evidently_s / compare_s:,.0f}x",
        "disagree": str(len(disagreements)),
        "drifted keel/ev": f"{report.n_drifted}/{sum(d for _, d in evidently.values())}",
        "max_score_gap": f"{score_gap:.1e}",
    }


def print_table(rows):
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(row[h]) for row in rows)) for h in headers}
    print("  ".join(h.rjust(widths[h]) for h in headers))
    for row in rows:
        print("  ".join(row[h].rjust(widths[h]) for h in headers))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, help="current rows (one scenario instead of the two defaults)")
    parser.add_argument("--features", type=int, default=20, help="columns, 3/4 numeric (default 20)")
    parser.add_argument("--reference-rows", type=int,
                        help=f"reference rows (default: the larger of --rows and {DAY_REFERENCE_ROWS:,})")
    args = parser.parse_args()

    if args.rows is None:
        scenarios = [("day", DAY_REFERENCE_ROWS, DAY_ROWS), ("1M", LARGE_ROWS, LARGE_ROWS)]
    else:
        reference_rows = args.reference_rows or max(args.rows, DAY_REFERENCE_ROWS)
        scenarios = [("custom", reference_rows, args.rows)]
    rows = []
    for label, reference_rows, current_rows in scenarios:
        repeats = 20 if current_rows <= 10_000 else 3
        rows.append(bench(label, reference_rows, current_rows, args.features, repeats))
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
