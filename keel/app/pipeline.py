"""The main job of ``keel run``: land what is missing, ingest, validate and gate, build the
features of the days that passed, train and gate the models, score, load what the real-time
API served on those days (and hold it to the mart: ``serving_skew``), and report it."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from keel.core.dates import contiguous_ranges
from keel.core.config import current
from keel.core.lock import hold
from keel.core.process import run_tags
from keel.core.settings import prepare_environment, range_tags
from keel.core.spec import ModelSpec
from keel.core.warehouse import connect, ident, relation
from keel.data.landing import file_for
from keel.data.replay import ReplayReport, replay, write_snapshots
from keel.ml.datasets import build_training_set, labelled_days, split_weeks
from keel.ml.lineage import code_lineage
from keel.registry.model_set import champion_version
from keel.registry.promotion import registered_names
from keel.registry.tracking import registry_or_none
from keel.render.terminal import check_title, plural, shorten
from keel.render.text import version_text
from keel.serving.logs import served_dates
from keel.app.logs import CommandLog, routed
from keel.app.progress import Stages
from keel.app.progress import run_config as progress_config
from keel.app.status import check_titles, collect, degraded_lines


def _missing_days(usecase, landing: Path, days: list[dt.date]) -> list[dt.date]:
    return [d for d in days if not all(file_for(landing, t, d).exists() for t in usecase.partitioned_tables)]


def run_pipeline(start: dt.date, end: dt.date, out=None, train_threads: int | None = None,
                 verbose: bool = False, log: CommandLog | None = None) -> int:
    """:func:`_run_pipeline` while holding the Keel home for writing.

    A daemon run (or another ``keel run``) in progress is waited for, up to
    ``KEEL_LOCK_TIMEOUT`` seconds, with one line on stderr naming it; then
    ``keel.core.lock.HomeBusy`` is raised, which ``keel`` reports in one line with exit 2."""
    home = prepare_environment().home
    with hold(home, f"keel run {start}..{end}", on_wait=lambda line: print(f"keel run: {line}", file=sys.stderr)):
        return _run_pipeline(start, end, out, train_threads, verbose, log)


def _run_pipeline(start: dt.date, end: dt.date, out=None, train_threads: int | None = None,
                  verbose: bool = False, log: CommandLog | None = None) -> int:
    """The main job: land what is missing, then ingest, validate and gate ``start..end``,
    build the features of the days that passed, train and gate the models on those days,
    and score them with the champion.

    It prints a line per stage as it starts and ends, then the summary, to ``out`` (default:
    the terminal); Dagster's, dbt's and MLflow's logs go to ``$KEEL_HOME/logs/run-*.log``
    (and to the terminal too with ``verbose``). A caller that routes its own logs passes its
    ``log``.

    Exit codes: 0 when every blocking check passed, 1 when a blocking check of ERROR severity
    failed (a data gate held back a day, a dbt test failed, or a promotion gate rejected the
    challenger: the rest still flowed and scoring used the current champion), 2 when a step
    failed for any other reason."""
    paths = prepare_environment()
    if log is not None:
        def report(line: str = "") -> None:
            print(line, file=out if out is not None else log.out, flush=True)
            print(line, file=log.file, flush=True)
        return _run(start, end, paths, log, report, train_threads)
    with routed(paths.home, "run", verbose=verbose, out=out) as log:
        return _run(start, end, paths, log, log.say, train_threads)


def _run(start, end, paths, log: CommandLog, report, train_threads) -> int:
    usecase = current().usecase
    days = usecase.days(start, end)
    stages = Stages(log)

    missing = _missing_days(usecase, paths.landing, days)
    snapshots_missing = any(not file_for(paths.landing, t, None).exists() for t in usecase.snapshot_tables)
    if usecase.source is None:
        # Nothing to land from: the upstream system writes the landing zone itself, and a
        # day without its file is held back by its landed_on_time gate.
        if missing or snapshots_missing:
            report(f"no replay source: {plural(len(missing), 'day')} without every daily file"
                   + (" and a snapshot file missing" if snapshots_missing else "")
                   + f" in {paths.landing}; ingesting what is there")
    elif missing or snapshots_missing:
        with stages.stage("land missing files", f"{len(missing)} day(s)") as stage:
            written = 0
            for first, last in contiguous_ranges(missing):
                written += len(replay(usecase, paths.landing, first, last).written)
            if snapshots_missing:
                snapshots = ReplayReport()
                write_snapshots(usecase, paths.landing, snapshots)
                written += len(snapshots.written)
            stage.counts = f"{plural(written, 'file')} written for {plural(len(missing), 'day')}"

    # Loaded here, not at import: the definitions take about 4 s, which `keel status` and
    # `keel replay` (which import this module's helpers) need not pay.
    with stages.stage("load the definitions") as stage:
        from definitions import defs

        instance = dg.DagsterInstance.get()
    runner = _Runner(defs, instance)
    results = []
    if usecase.snapshot_tables:  # a use case may have daily tables only
        with stages.stage("ingest snapshot tables") as stage:
            results.append(runner.run(stage, "ingest_snapshots"))
            stage.counts = _gate_counts(results[-1:])
    with stages.stage("ingest daily tables", f"{days[0]}..{days[-1]}") as stage:
        results.append(runner.run(stage, "ingest_daily", tags=range_tags(days[0], days[-1])))
        stage.counts = f"{plural(len(days), 'day')}, " + _gate_counts(results[-1:])

    # Downstream of the gates, each run covers only days whose every daily table passed:
    # within one run a failed gate would stop the downstream steps of every day it covers.
    days_passed = _days_that_passed(paths.warehouse, usecase, days)
    feature_results = []
    if days_passed:
        with stages.stage("build feature views") as stage:
            feature_results.append(runner.run(stage, "build_feature_views"))
            stage.counts = _check_counts(feature_results)
        ranges = contiguous_ranges(days_passed)
        with stages.stage("build daily features", f"{len(days_passed)} day(s), {plural(len(ranges), 'run')}") as stage:
            for first, last in ranges:
                feature_results.append(runner.run(stage, "build_daily_features", tags=range_tags(first, last)))
            stage.counts = _check_counts(feature_results[1:])
    results += feature_results
    models = None
    if days_passed and usecase.model is not None and not _crashed(results):
        models = _run_models(runner, stages, paths, usecase, days, days_passed, train_threads)
        results += models.results
    served = sorted(served_dates(paths.home / "serving" / "predictions") & set(days_passed))
    served_results = []
    if served and usecase.model is not None and not _crashed(results):
        ranges = contiguous_ranges(served)
        with stages.stage("load served predictions", f"{plural(len(served), 'day')} with a prediction log") as stage:
            for first, last in ranges:
                served_results.append(runner.run(stage, "load_served_daily", tags=range_tags(first, last)))
            stage.counts = _check_counts(served_results)
        results += served_results

    failed_checks = [
        e for r in results for e in r.get_asset_check_evaluations() if not e.passed and e.blocking
    ]
    downstream_checks = [
        e for r in feature_results for e in r.get_asset_check_evaluations()
    ]
    failed_downstream = [
        e for e in downstream_checks if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    crashed = _crashed(results)

    doc = collect(paths.warehouse, days[0], days[-1])
    titles = check_titles()
    report(f"\nKeel {usecase.name}: {days[0]}..{days[-1]} (KEEL_HOME={paths.home})")
    for table, partitions in doc["tables"].items():
        landed = sum(p["landed"] for p in partitions.values())
        valid = sum(p["valid"] for p in partitions.values())
        quarantined = sum(p["quarantined"] for p in partitions.values())
        unparsed = sum(p["unparsed"] or 0 for p in partitions.values())
        scope = "snapshot" if "unpartitioned" in partitions else f"{len(partitions)} days"
        report(f"  {table:<10} {scope:>9}  landed {landed:>9,}  valid {valid:>9,}  "
               f"quarantined {quarantined:>6,}" + (f"  unparsed lines {unparsed:,}" if unparsed else ""))
    gates = [c for c in doc["checks"] if c["kind"] == "gate"]
    passed = sum(c["passed"] for c in gates)
    report(f"checks: {passed:,} passed, {len(gates) - passed:,} failed")
    for check in gates:
        if not check["passed"]:
            report(f"  BLOCKED {check['asset']} {check['partition'] or ''} {check['name']}: "
                   f"{shorten(check['message'])}")
    if downstream_checks:
        warned = [e for e in downstream_checks if not e.passed and e.severity != dg.AssetCheckSeverity.ERROR]
        report(f"feature checks (dbt tests, feature_skew): "
               f"{len(downstream_checks) - len(failed_downstream) - len(warned):,} passed, "
               f"{len(warned):,} warned, {len(failed_downstream):,} failed")
        for e in [*failed_downstream, *warned][:20]:
            label = "FAILED" if e in failed_downstream else "WARNED"
            report(f"  {label} {e.asset_key.to_user_string()} {e.partition or ''} "
                   f"{check_title(e.check_name, titles)}: {shorten(e.description)}")
    served_checks = [e for r in served_results for e in r.get_asset_check_evaluations()]
    if served_checks:
        report(f"served predictions (serving_skew): {sum(e.passed for e in served_checks):,} passed, "
               f"{sum(not e.passed for e in served_checks):,} failed")
        for e in served_checks:
            if not e.passed:
                report(f"  FAILED {e.asset_key.to_user_string()} {e.partition or ''} "
                       f"{check_title(e.check_name, titles)}: {shorten(e.description)}")
    skipped = sorted(set(days) - set(days_passed))
    if skipped:
        report(f"held back from features: {', '.join(map(str, skipped[:10]))}"
               f"{' ...' if len(skipped) > 10 else ''}")
    for line in _feature_counts(paths.warehouse, usecase.model, days):
        report(line)
    if models is not None:
        for line in models.lines:
            report(line)
    for line in degraded_lines(doc["degraded"]):
        report(line)
    report(f"logs: {log.path}")
    report(f"UI: keel dev, then open http://127.0.0.1:3000 (runs are recorded in {paths.dagster_home})")
    if crashed:
        for r in crashed:
            for event in r.all_events:
                if event.is_step_failure:
                    log.say(f"error in {event.step_key}: {event.event_specific_data.error.message.strip()}",
                            error=True)
        return 2
    return 1 if failed_checks or failed_downstream else 0


class _Runner:
    """Executes Keel's jobs in process, each run counted by the stage that launched it."""

    def __init__(self, defs, instance):
        self.defs, self.instance = defs, instance

    def run(self, stage, job_name: str, tags: dict | None = None, run_config: dict | None = None):
        job = self.defs.resolve_job_def(job_name)
        stage.expect(job)
        return job.execute_in_process(
            instance=self.instance, raise_on_error=False, tags={**(tags or {}), **run_tags()},
            run_config=progress_config(run_config),
        )


def _gate_counts(results) -> str:
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    failed = sum(not e.passed for e in evaluations)
    return f"gates: {len(evaluations) - failed:,} passed, {failed:,} failed"


def _check_counts(results) -> str:
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    failed = sum(not e.passed and e.severity == dg.AssetCheckSeverity.ERROR for e in evaluations)
    warned = sum(not e.passed and e.severity != dg.AssetCheckSeverity.ERROR for e in evaluations)
    materialized = sum(len(r.get_asset_materialization_events()) for r in results)
    return (f"{plural(materialized, 'materialization')}; checks: {len(evaluations) - failed - warned:,} passed, "
            f"{warned:,} warned, {failed:,} failed")


def _crashed(results) -> list:
    """Runs with a step that failed for another reason than a blocking check."""
    return [
        r for r in results
        if any(
            e.is_step_failure and "DagsterAssetCheckFailedError" not in (e.event_specific_data.error.cls_name or "")
            for e in r.all_events
        )
    ]


@dataclass
class _ModelRuns:
    """The training and scoring runs of ``keel run``, and the lines that report them."""
    results: list = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def training_threads(requested: int | None) -> int:
    """LightGBM threads for ``keel run``: the deployment's (``[training] threads`` in keel.toml,
    or ``KEEL_TRAIN_THREADS``), else one. Two threads train
    the full year 40% faster on an idle 2-core machine, but measured here 3.7x slower than
    one when both cores were busy elsewhere (OpenMP threads spin at every barrier), and one
    59-day run took 7 minutes instead of 4 s; the model is the same to the bit either way."""
    if requested:
        return requested
    return current().training_threads


def _run_models(runner, stages, paths, usecase, days, days_passed, train_threads) -> _ModelRuns:
    """Train on every gated, labelled day of the run's range, then score the gated days."""
    runs = _ModelRuns()
    spec = usecase.model
    with connect(paths.warehouse, read_only=True) as con:
        labelled = labelled_days(con, spec, days[0], days[-1])
    weeks = split_weeks(labelled)
    names = registered_names(usecase.name)
    runs.lines.append("models:")
    if weeks is None:
        runs.lines.append(f"  training skipped: {labelled} labelled day(s) in {days[0]}..{days[-1]}; "
                          "at least 28 are needed (train, validation and test weeks)")
    elif (same := _champion_trained_on_the_same(paths, spec, names, days, weeks)) is not None:
        runs.lines.append(
            f"  training skipped: champion v{same} was trained on these very rows with this code "
            "(same training-set hash, dbt manifest, lock file and commit)"
        )
    else:
        threads = training_threads(train_threads)
        run_config = {"ops": {
            "models__training_set": {"config": {
                "start": days[0].isoformat(), "end": days[-1].isoformat(),
                "valid_weeks": weeks, "test_weeks": weeks,
            }},
            "models__primary_model": {"config": {"num_threads": threads}},
            "models__fallback_model": {"config": {"num_threads": threads}},
        }}
        with stages.stage("train and gate models", f"{labelled} labelled days") as stage:
            training = runner.run(stage, "train_models", run_config=run_config)
            gates = training.get_asset_check_evaluations()
            stage.counts = (f"{plural(len(training.asset_materializations_for_node('models__primary_model')), 'primary model')}; "
                            f"promotion gates: {sum(e.passed for e in gates)} passed, "
                            f"{sum(not e.passed for e in gates)} failed")
        runs.results.append(training)
        runs.lines += _training_summary(training)

    registry = registry_or_none(current().tracking)
    champion = None if registry is None else champion_version(registry, names)
    if champion is None:
        runs.lines.append("  scoring skipped: no champion model yet")
        return runs
    scored = []
    with stages.stage("score", f"champion v{champion}, {plural(len(days_passed), 'day')}") as stage:
        for first, last in contiguous_ranges(days_passed):
            result = runner.run(stage, "score_daily", tags=range_tags(first, last))
            runs.results.append(result)
            scored.append(result)
        stage.counts = plural(sum(len(r.get_asset_materialization_events()) for r in scored), "materialization")
    per_tier: dict[str, int] = {}
    for result in scored:
        for event in result.get_asset_materialization_events():
            meta = event.materialization.metadata
            if "rows_per_tier" in meta:
                for tier, n in meta["rows_per_tier"].value.items():
                    per_tier[tier] = per_tier.get(tier, 0) + n
                break  # one materialization per partition, each with the run's totals
    total = sum(per_tier.values())
    runs.lines.append(
        f"  predictions {total:>9,} rows over {len(days_passed)} days (champion v{champion}): "
        + ", ".join(f"{tier} {n:,}" for tier, n in per_tier.items())
    )
    return runs


def _champion_trained_on_the_same(paths, spec, names, days, weeks) -> int | None:
    """The champion's version when it was trained on exactly what ``keel run`` would train on
    now (the same window, split and rows, from the same clean commit, dbt manifest and lock
    file), so that running ``keel run`` again registers no new, identical model."""
    registry = registry_or_none(current().tracking)
    if registry is None:
        return None
    champion = champion_version(registry, names)
    if champion is None:
        return None
    lineage = registry.lineage(names["primary"], champion)
    code = code_lineage()
    config = lineage.get("training_config", {})
    if (
        code["git_dirty"] is not False or lineage.get("git_dirty") is not False
        or any(lineage.get(key) != value for key, value in code.items())
        or (config.get("start"), config.get("end")) != (days[0].isoformat(), days[-1].isoformat())
        or (config.get("valid_weeks"), config.get("test_weeks")) != (weeks, weeks)
        or config.get("label_corruption", "none") != "none"
    ):
        return None
    with connect(paths.warehouse, read_only=True) as con:
        training = build_training_set(con, spec, days[0], days[-1], valid_weeks=weeks, test_weeks=weeks)
    return champion if training.meta["training_set_hash"] == lineage.get("training_set_hash") else None


def _training_summary(result) -> list[str]:
    """The training run's models, gate verdicts and promotion decision, as report lines."""
    lines = []
    for node, label in (("models__primary_model", "primary"), ("models__fallback_model", "fallback"),
                        ("models__baseline_model", "baseline")):
        for event in result.asset_materializations_for_node(node):
            meta = {k: v.value for k, v in event.metadata.items()}
            auc = meta.get("test_roc_auc")
            line = f"  {label:<9} {meta['registered_model']:<28} v{meta['model_version']:<4}"
            lines.append(f"{line} test AUC {auc:.4f}" if auc is not None else f"{line} test AUC undefined")
    for event in result.asset_materializations_for_node("models__training_set"):
        meta = {k: v.value for k, v in event.metadata.items()}
        lines.insert(0, f"  trained on {meta['window']}: {meta['rows']:,} rows over {meta['days']} days")
    for event in result.asset_materializations_for_node("models__evaluation_report"):
        meta = {k: v.value for k, v in event.metadata.items()}
        lines.append(f"  holdout {meta['holdout']} ({meta['holdout_rows']:,} rows): "
                     + ", ".join(f"{c} AUC {meta[f'{c}_roc_auc']:.4f}" for c in
                                 ("challenger", "champion", "fallback", "baseline") if f"{c}_roc_auc" in meta))
    checks = result.get_asset_check_evaluations()
    if checks:
        failed = [e for e in checks if not e.passed]
        lines.append(f"promotion gates: {len(checks) - len(failed)} passed, {len(failed)} failed")
        for e in checks:
            lines.append(f"  {'passed ' if e.passed else 'BLOCKED'} {e.check_name}: {e.description or ''}")
    decisions = [
        {k: v.value for k, v in event.metadata.items()}
        for event in result.asset_materializations_for_node("models__champion")
    ]
    if decisions:
        lines.append(f"promotion: {decisions[-1]['decision']} "
                     f"(champion: {version_text(decisions[-1]['champion_version'])})")
    elif checks:
        lines.append("promotion: not promoted (a gate blocked the challenger; the champion is unchanged)")
    for event in result.all_events:
        if event.is_step_failure and "DagsterAssetCheckFailedError" not in (event.event_specific_data.error.cls_name or ""):
            lines.append(f"  training failed in {event.step_key}: {event.event_specific_data.error.message.strip()[:500]}")
    return lines


def _days_that_passed(warehouse: Path, usecase, days: list[dt.date]) -> list[dt.date]:

    with connect(warehouse, read_only=True) as con:
        rows = con.execute(
            "select partition_date from audit.gate_status where partition_date between ? and ? "
            "group by partition_date having count(*) filter (where passed) = ?",
            [days[0], days[-1], len(usecase.partitioned_tables)],
        ).fetchall()
    return sorted(r[0] for r in rows)


def _feature_counts(warehouse: Path, spec: ModelSpec | None, days: list[dt.date]) -> list[str]:
    """Rows and days of the model's feature mart and labels (both carry its date column)."""
    if spec is None:
        return []
    with connect(warehouse, read_only=True) as con:
        tables = {r[0] for r in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables").fetchall()}
        lines = []
        for name in (spec.features_relation, spec.labels_relation):
            if name in tables:
                column = ident(spec.date_column)
                (n, d) = con.execute(
                    f"select count(*), count(distinct {column}) from {relation(name)} where {column} between ? and ?",
                    [days[0], days[-1]],
                ).fetchone()
                lines.append(f"  {name:<22} {n:>9,} rows over {d} days")
    return lines


