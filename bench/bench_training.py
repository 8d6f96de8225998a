"""Training benchmark: what MLflow tracking and registering add to training the primary model.

On the full-year training set (every labelled day of the feature mart, split 4/4 weeks like
``keel run``), prints:
  - bare:      ``lightgbm.train`` with the chosen model's parameters on the same matrices
               (Dataset construction, boosting with early stopping), nothing else;
  - keel fit:  ``keel.ml.modeling.train_primary`` with those parameters (encoding, the same
               boosting, the text round trip, validation and test predictions);
  - search:    ``train_primary`` as the asset runs it (the default search of 4 trials);
  - tracking:  ``keel.registry.log_and_register`` of that model (params, metrics, lineage,
               trials, the LightGBM text artifacts, the registered version and its alias)
               into a fresh SQLite store; the store's one-time creation is shown apart.
and the ratio of tracking to training. Goal: tracking and registering add under 20%.

Usage: python bench/bench_training.py [--warehouse PATH] [--threads N] [--repeats N]
Without --warehouse it prepares one (a year through Keel's ingest and gates, then dbt; a few
minutes, not timed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def prepare_warehouse(work: Path) -> Path:
    """A year of validated data through Keel's own functions, then the dbt models."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_features import dbt, prepare

    os.environ["KEEL_HOME"] = str(work / "home")
    os.environ.pop("DAGSTER_HOME", None)
    prepare(work / "home")
    target = work / "target"
    dbt("seed", target=target)
    dbt("run", "--full-refresh", target=target)
    return work / "home" / "warehouse.duckdb"


def timed(fn, repeats: int):
    """(median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, help="a Keel warehouse with marts.flight_features/labels")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads (keel run's default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the bare and keel fits")
    args = parser.parse_args()

    import duckdb
    import lightgbm as lgb

    from keel.ml import modeling
    from keel.ml.encoding import CategoryEncoder
    from keel.ml.datasets import build_training_set
    from keel.ml.lineage import code_lineage, model_lineage
    from keel.ml.report import holdout_metrics
    from keel.core.config import current

    work = Path(tempfile.mkdtemp(prefix="keel-bench-training-"))
    try:
        warehouse = args.warehouse
        if warehouse is None:
            started = time.perf_counter()
            warehouse = prepare_warehouse(work)
            print(f"prepared a warehouse for the year in {time.perf_counter() - started:.0f} s (not timed below)")
        spec = current().usecase.model
        con = duckdb.connect(str(warehouse), read_only=True)
        started = time.perf_counter()
        training = build_training_set(con, spec, None, None, valid_weeks=4, test_weeks=4)
        con.close()
        read_seconds = time.perf_counter() - started
        split = training.split(spec)
        print(f"training set: {training.meta['rows']:,} rows, {len(spec.features)} features "
              f"(train {split.rows['train']:,}, valid {split.rows['valid']:,}, test {split.rows['test']:,}); "
              f"read and hashed in {read_seconds:.1f} s")

        from assets.training import PrimaryModelConfig

        trials = PrimaryModelConfig().search_trials
        search_seconds, searched = timed(
            lambda: modeling.train_primary(split, spec, search_trials=trials, num_threads=args.threads), 1)
        params = searched.params
        keel_seconds, model = timed(
            lambda: modeling.train_primary(split, spec, params=params, seed=params["seed"]), args.repeats)
        assert model.booster.model_to_string() == searched.booster.model_to_string()

        features = list(spec.features)
        categorical = [c for c in features if c in spec.categorical]
        encoder = CategoryEncoder.fit(split.train, categorical)
        x_train, x_valid = model.matrix(split.train), model.matrix(split.valid)
        y_train = split.train[spec.label].to_numpy(dtype=float)
        y_valid = split.valid[spec.label].to_numpy(dtype=float)
        assert encoder.columns == model.encoder.columns

        def bare():
            train_set = lgb.Dataset(x_train, label=y_train, feature_name=features, categorical_feature=categorical)
            valid_set = lgb.Dataset(x_valid, label=y_valid, reference=train_set)
            return lgb.train(params, train_set, num_boost_round=modeling.PRIMARY_MAX_ROUNDS, valid_sets=[valid_set],
                             callbacks=[lgb.early_stopping(modeling.PRIMARY_EARLY_STOPPING, first_metric_only=True,
                                                           verbose=False)])

        bare_seconds, booster = timed(bare, args.repeats)
        assert booster.best_iteration == model.best_iteration

        from keel.registry import store as registry

        store = work / "mlflow"
        metrics = holdout_metrics(split, spec, searched)
        from keel.ml.evaluation import flat_metrics

        lineage = model_lineage(
            kind="primary", training_set=training.meta, training_set_hash=training.meta["training_set_hash"],
            params=searched.params, training_config={"search_trials": len(searched.trials)},
            dagster_run_id="bench", code=code_lineage(),
        )

        def track():
            version = registry.log_and_register(
                searched, name="bench_flight_disruption",
                metrics={part: flat_metrics(result) for part, result in metrics.items()},
                params={"search_trials": len(searched.trials)}, lineage=lineage, trials=searched.trials,
            )
            registry.mark_challenger(version.name, version.version)
            return version

        started = time.perf_counter()
        registry.configure(f"sqlite:///{store}/mlflow.db", store / "artifacts", "bench")
        create_seconds = time.perf_counter() - started
        first_seconds, _ = timed(track, 1)  # the first also imports and warms MLflow's modules
        track_seconds, version = timed(track, args.repeats)

        print(f"\n{'what':<58} {'seconds':>8}")
        rows = [
            (f"bare lightgbm.train, same params ({model.best_iteration} trees, {args.threads} thread(s))", bare_seconds),
            ("keel train_primary with those params (one trial)", keel_seconds),
            (f"keel train_primary as the asset runs it ({len(searched.trials)}-trial search)", search_seconds),
            ("MLflow log + register + alias (per model version)", track_seconds),
            ("  the first one in the process (imports, caches)", first_seconds),
            ("MLflow store creation (once per KEEL_HOME, not counted)", create_seconds),
        ]
        for name, seconds in rows:
            print(f"{name:<58} {seconds:>8.2f}")
        print(f"\ntracking / the asset's training (search): {track_seconds / search_seconds:.1%}"
              f"  (goal: under 20%; first in the process: {first_seconds / search_seconds:.1%})")
        print(f"tracking / one bare lightgbm.train:       {track_seconds / bare_seconds:.1%}")
        print(f"keel fit / bare lightgbm.train:           {keel_seconds / bare_seconds:.2f}x")
        print(f"registered {version.name} v{version.version}: {version.model_uri}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
