"""Where `keel run`'s time goes: stage by stage, split into Keel's own work, Dagster, dbt and
MLflow, beside the plain-library floor of the same stages measured in the same run.

It runs the main job (``keel run``, in this process) on a fresh ``KEEL_HOME`` while a sampler
thread reads the main thread's stack every few milliseconds. Each sample is charged to the
stage that was running (``keel.app.progress``'s current stage) and to the first frame, counted
from the innermost outward, that belongs to one of:

  - **Keel**: the project's own code (``keel/``, ``assets/``, ``resources/``, ``sensors/``,
    ``usecases/``, ``definitions.py``), with the DuckDB, pandas, pandera and LightGBM calls it
    makes (those libraries are charged to their caller);
  - **dbt**: ``dbt`` and ``dagster_dbt`` (dagster-dbt runs dbt in a subprocess: process start,
    project parse, SQL; the main thread waits on its output);
  - **MLflow**: ``mlflow``;
  - **Dagster**, split by what its stack is doing: the event log (storing an event), run
    creation (``create_run``, planning) and the rest (step launch, context set-up, I/O).

A sampling profiler adds little to the run it watches (one stack read per interval) and does
not slow C code, unlike a tracing one.

The floors are the same stages done with the bare libraries, one after the other, on the
same data, in the same process, after the run:
  - ingest and gates: one DuckDB script reading the same landing CSVs with the same casts and
    row rules (``bench_ingest.plain_sql``);
  - features: dbt's compiled SQL of every model run straight in DuckDB (``bench_features``);
  - training: one bare ``lightgbm.train`` per trained model with the registered parameters,
    on the same matrices (Keel's primary runs a 4-trial search: the floor counts one fit per
    trial);
  - scoring: the primary's booster predicting every feature row.

Usage: python bench/bench_pipeline.py [--start 2013-01-01] [--end 2013-12-31] [--interval-ms 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROJECT = tuple(str(ROOT / p) for p in ("keel", "assets", "resources", "sensors", "usecases", "definitions.py"))
KINDS = ("keel", "dagster: event log", "dagster: run creation", "dagster: other", "dbt", "mlflow", "other")
EVENT_FUNCTIONS = {"store_event", "handle_new_event", "store_event_batch", "report_dagster_event"}
RUN_FUNCTIONS = {"create_run", "create_run_for_job", "_create_run", "create_execution_plan"}


def _owner(filename: str) -> str | None:
    if "site-packages" in filename:
        tail = filename.split("site-packages", 1)[1].lstrip("/")
        top = tail.split("/", 1)[0]
        if top in ("dbt", "dagster_dbt"):
            return "dbt"
        if top.startswith("dagster"):
            return "dagster"
        if top == "mlflow":
            return "mlflow"
        return None
    if filename.startswith(PROJECT):
        return "keel"
    return None


class Sampler:
    """Charges wall time to (stage, kind) from the main thread's stack, sampled."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._owners: dict[str, str | None] = {}

    def _kind(self, frame) -> str:
        dagster_seen = False
        names = set()
        while frame is not None:
            filename = frame.f_code.co_filename
            owner = self._owners.get(filename, ...)
            if owner is ...:
                owner = self._owners[filename] = _owner(filename)
            if owner == "dagster":
                dagster_seen = True
                names.add(frame.f_code.co_name)
            elif owner is not None and not dagster_seen:
                return owner
            elif owner is not None:
                break  # Dagster called from Keel's code (or dbt's): Dagster's time
            frame = frame.f_back
        if not dagster_seen:
            return "other"
        if names & EVENT_FUNCTIONS:
            return "dagster: event log"
        if names & RUN_FUNCTIONS:
            return "dagster: run creation"
        return "dagster: other"

    def _loop(self) -> None:
        from keel.app import progress  # the run's current stage, set by keel.app.progress.Stages

        last = time.perf_counter()
        while not self._stop.wait(self.interval_s):
            now = time.perf_counter()
            frame = sys._current_frames().get(self._main)
            stage = progress._current.name if progress._current is not None else "outside a stage"
            if frame is not None:
                self.seconds[(stage, self._kind(frame))] += now - last
            last = now

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def floors(home: Path, days: list[dt.date], work: Path) -> dict[str, float]:
    """Seconds of each stage done with the bare libraries on the run's own data."""
    import duckdb
    import lightgbm as lgb

    from bench_features import DBT_DIR, plain_sql as features_sql
    from bench_ingest import plain_sql as ingest_sql
    from keel.core.config import current
    from keel.ml.datasets import build_training_set, labelled_days, split_weeks
    from keel.registry import store as registry
    from keel.registry.promotion import registered_names
    from keel.registry.tracking import registry_or_none

    out: dict[str, float] = {}
    out["ingest daily tables"] = ingest_sql(home / "landing", days)

    target = work / "dbt-target"
    env = {**os.environ, "KEEL_HOME": str(home)}
    dbt = str(Path(sys.executable).parent / "dbt")
    subprocess.run([dbt, "compile", "--full-refresh", "--project-dir", str(DBT_DIR), "--profiles-dir",
                    str(DBT_DIR), "--target-path", str(target)], check=True, capture_output=True, env=env)
    # The compiled SQL names the database by its file name: the copy keeps it.
    copy = work / "floor" / "warehouse.duckdb"
    copy.parent.mkdir()
    shutil.copy(home / "warehouse.duckdb", copy)
    out["build features (views + daily)"] = features_sql(copy, target)

    spec = current().usecase.model
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        weeks = split_weeks(labelled_days(con, spec, days[0], days[-1]))
        training = build_training_set(con, spec, days[0], days[-1], valid_weeks=weeks, test_weeks=weeks)
    split = training.split(spec)
    registry_or_none(current().tracking)
    names = registered_names(current().usecase.name)
    model = registry.load(names["primary"], "champion")
    x_train, x_valid = model.matrix(split.train), model.matrix(split.valid)
    y_train = split.train[spec.label].to_numpy(dtype=float)
    y_valid = split.valid[spec.label].to_numpy(dtype=float)
    features = list(spec.features)
    categorical = [c for c in features if c in spec.categorical]
    # A loaded model has no trials (they are not artifacts): the search's size is the asset's.
    from assets.training import PrimaryModelConfig

    trials = PrimaryModelConfig().search_trials
    started = time.perf_counter()
    for _ in range(trials):
        train_set = lgb.Dataset(x_train, label=y_train, feature_name=features, categorical_feature=categorical)
        valid_set = lgb.Dataset(x_valid, label=y_valid, reference=train_set)
        lgb.train({**model.params, "num_threads": 1, "verbose": -1}, train_set,
                  num_boost_round=max(1, model.best_iteration), valid_sets=[valid_set])
    out["train and gate models"] = time.perf_counter() - started

    matrix = model.matrix(training.frame)
    started = time.perf_counter()
    model.booster.predict(matrix)
    out["score"] = time.perf_counter() - started
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="2013-01-01")
    parser.add_argument("--end", default="2013-12-31")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="keel-bench-pipeline-"))
    home = work / "home"
    os.environ["KEEL_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    load_before = os.getloadavg()
    try:
        from keel.app.cli import main as keel

        started = time.perf_counter()
        cpu_started = time.process_time()
        with Sampler(args.interval_ms / 1000) as sampler:
            code = keel(["run", "--start", args.start, "--end", args.end])
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        print(f"\nkeel run {args.start}..{args.end}: exit {code}, {wall:.1f} s wall, {cpu:.1f} s CPU "
              f"of this process (dbt's subprocesses not counted); load average before "
              f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")

        stages: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for (stage, kind), seconds in sampler.seconds.items():
            stages[stage][kind] += seconds
        header = f"{'stage':<32} {'wall':>7} " + " ".join(f"{k.replace('dagster: ', 'dg:'):>13}" for k in KINDS)
        print("\n" + header)
        totals = defaultdict(float)
        for stage, kinds in sorted(stages.items(), key=lambda item: -sum(item[1].values())):
            total = sum(kinds.values())
            print(f"{stage:<32} {total:>7.1f} " + " ".join(f"{kinds.get(k, 0.0):>13.1f}" for k in KINDS))
            for k in KINDS:
                totals[k] += kinds.get(k, 0.0)
        sampled = sum(totals.values())
        print(f"{'all (sampled)':<32} {sampled:>7.1f} " + " ".join(f"{totals[k]:>13.1f}" for k in KINDS))
        from keel.core.config import current

        days = current().usecase.days(dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end))
        floor = floors(home, days, work)

        print("\nshare of the run: " + ", ".join(f"{k} {totals[k] / sampled:.0%}" for k in KINDS if totals[k]))
        print(f"floor, the same stages with the bare libraries: {sum(floor.values()):.2f} s "
              f"({', '.join(f'{k} {v:.2f} s' for k, v in floor.items())})")
        print(f"keel run / floor: {wall / sum(floor.values()):.1f}x (goal: at most 16x, and 90 s for the year)")
        return 0 if code in (0, 1) else code
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
