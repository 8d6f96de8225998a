"""``keel simulate``: a period replayed through Keel's sensors and automation on a fast clock.

The replay runs in a Keel home of its own. It starts like a new deployment: the first
months (the warm-up) land and go through ``keel run``, which trains and promotes the first
champion. That model is also the *static* model the replay compares against: the model a
team would have kept serving without retraining.

Then the clock steps through the rest of the period. Each step lands a day's files (or a
week's) in the landing zone, as the upstream system would. Every ``tick_days`` simulated days
the Dagster daemon "ticks", and the real definitions decide what happens:

1. The ``landing_zone_sensor`` requests ingestion runs for the files that landed.
2. Declarative automation (every asset's ``AutomationCondition``, evaluated at the simulated
   time) requests the features, predictions and monitoring of the days that passed their gates,
   tick after tick until nothing more is requested.
3. The ``retraining_trigger`` sensor decides each monitored day in order. When it requests a
   retrain, ``train_models`` runs on the window ending that day, and the promotion gates and
   policy decide whether the challenger serves.

A daemon that ticks every few simulated days sees several landed days at once. To serve and
decide as a daemon ticking every day would, when a challenger is promoted on a day, the days
of the same tick after it (already scored by the former champion) are scored and monitored
again by the new one before the trigger decides them. Training only ever sees days up to the
day the trigger fired. ``tick_days`` therefore changes how fast the replay runs, not what it
serves or decides; the Dagster UI on the replay's home shows every run as it happens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zoneinfo

import dagster as dg
import numpy as np

from keel.app.logs import CommandLog
from keel.app.pipeline import run_pipeline
from keel.app.progress import Stages
from keel.app.progress import run_config as progress_config
from keel.core.dates import contiguous_ranges
from keel.core import config as deployment_config
from keel.core import env
from keel.core.config import current
from keel.core.lock import hold
from keel.core.settings import prepare_environment, range_tags
from keel.core.warehouse import connect, ident
from keel.data.replay import replay
from keel.ml.datasets import labelled_frame
from keel.ml.evaluation import roc_auc
from keel.monitoring import retraining
from keel.registry.model_set import champion_version
from keel.registry.promotion import registered_names
from keel.registry.tracking import open_registry
from keel.render.plots import plot_simulation_timeline
from keel.render.terminal import plural

MARKER = ".keel-simulation"
MAX_AUTOMATION_TICKS = 8


@dataclass(frozen=True)
class SimulationConfig:
    start: dt.date
    end: dt.date
    warmup_end: dt.date
    home: Path
    step: str = "day"  # how much lands per clock step; "week": the trigger decides weekly
    tick_days: int = 28  # simulated days between daemon ticks
    evidently_html: str = "drifted"  # Evidently HTML drift reports: always | drifted | never
    threads: int = 1

    def __post_init__(self) -> None:
        if self.step not in ("day", "week"):
            raise ValueError(f"--step must be day or week, got {self.step!r}")
        if not self.start < self.warmup_end < self.end:
            raise ValueError(
                f"the warm-up must end inside the period: {self.start} < {self.warmup_end} < {self.end}"
            )
        if (self.warmup_end - self.start).days + 1 < 35:
            raise ValueError("the warm-up needs at least 5 weeks to train the first champion")
        if self.tick_days < 1:
            raise ValueError("--tick-days must be >= 1")


@dataclass
class Event:
    day: str
    kind: str  # retrain_requested | promoted | rejected | training_failed
    detail: str
    version: int | None = None
    gates: dict[str, bool] = field(default_factory=dict)  # promotion gate -> passed

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "kind": self.kind, "detail": self.detail, "version": self.version,
                "gates": self.gates}


@dataclass
class _State:
    landing_cursor: str | None = None
    retrain_cursor: str | None = None
    automation_cursor: Any = None
    runs: int = 0
    events: list[Event] = field(default_factory=list)
    failed_checks: list[dict[str, Any]] = field(default_factory=list)  # of every run executed


def write_configuration(source: deployment_config.Deployment, home: Path, config: SimulationConfig) -> Path:
    """The replay home's keel.toml: the policies and thresholds of the deployment the replay
    was started from, deciding weekly when a week lands per step, with the replay's training
    threads; the tracking location is the replay home's own."""
    deployment = dataclasses.replace(
        deployment_config.relocated(source, home),
        retraining=dataclasses.replace(source.retraining, decide_every_days=7 if config.step == "week" else 1),
        training_threads=config.threads,
    )
    path = home / deployment_config.CONFIG_FILE
    path.write_text(deployment_config.toml_text(deployment))
    # The replay reads its own file, whatever file the shell named; --threads is the command
    # line's, above a KEEL_TRAIN_THREADS the shell may have.
    env.set_value(env.KEEL_CONFIG, str(path))
    env.set_value(env.KEEL_TRAIN_THREADS, str(config.threads))
    return path


def prepare_home(home: Path) -> Path:
    """A fresh replay home. Only a folder that a replay created (it holds the marker file) is
    ever cleared: a typo must not delete a deployment's state."""
    home = home.resolve()
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise SystemExit(
                f"{home} exists and is not a keel simulate home (no {MARKER}); choose another --home"
            )
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("created by keel simulate; cleared by the next replay into this folder\n")
    return home


def simulate(config: SimulationConfig, out: Callable[[str], None] = print,
             log: CommandLog | None = None) -> dict[str, Any]:
    """Replay ``config``'s period; with ``log`` (the command's), a line per stage (the
    warm-up's, then one per daemon tick) goes to its terminal and the logs to its file."""
    started = time.perf_counter()
    source = current()
    home = prepare_home(config.home)
    # The replay's home is written by this process only: the daemon of a `keel dev` opened on
    # it waits, and its sensors skip their ticks, until the replay ends.
    with hold(home, f"keel simulate {config.start}..{config.end}"):
        return _replay(config, home, source, started, out, log)


def _replay(config: SimulationConfig, home: Path, source, started: float,
            out: Callable[[str], None], log: CommandLog | None = None) -> dict[str, Any]:
    env.set_value(env.KEEL_HOME, str(home))
    # The replay's runs belong to its own instance, whatever DAGSTER_HOME the shell had, so
    # that `KEEL_HOME=<home> keel dev` shows them.
    env.set_value(env.DAGSTER_HOME, str(home / "dagster"))
    write_configuration(source, home, config)

    paths = prepare_environment()
    usecase = current().usecase
    if usecase.model is None:
        raise SystemExit(f"use case {usecase.name!r} declares no model: nothing to simulate")

    out(f"warm-up: keel run over {config.start}..{config.warmup_end} in {home}")
    buffer = io.StringIO()
    code = run_pipeline(config.start, config.warmup_end, out=buffer, train_threads=config.threads, log=log)
    for line in buffer.getvalue().splitlines():
        if line.startswith(("models:", "  trained", "  primary", "promotion", "  predictions")):
            out("  " + line.strip())
    if code == 2:
        raise SystemExit("the warm-up failed; see the log above")

    # Loaded only now that KEEL_HOME and DAGSTER_HOME point at the replay's own home.
    from definitions import defs

    instance = dg.DagsterInstance.get()
    registry = open_registry(current().tracking)
    names = registered_names(usecase.name)
    static_version = champion_version(registry, names)
    if static_version is None:
        raise SystemExit("the warm-up promoted no champion; the replay needs one to start from")
    out(f"static model: {names['primary']} v{static_version}, trained on the warm-up")

    state = _State()
    stages = Stages(log) if log is not None else None
    runner = SimulatedDaemon(
        defs, instance, evidently_html=config.evidently_html, out=stages.say if stages else out, state=state,
    )

    def tick(day: dt.date, detail: str) -> None:
        if stages is None:
            out(f"tick at {day}: {detail}")
            runner.tick(day)
            return
        runs = state.runs
        with stages.stage(f"tick at {day}", detail) as stage:
            runner.tick(day)
            stage.counts = plural(state.runs - runs, "Dagster run")

    tick(config.warmup_end, "the warm-up's monitoring and reference")

    day = config.warmup_end + dt.timedelta(days=1)
    pending: list[dt.date] = []

    while day <= config.end:
        last = min(config.end, day + dt.timedelta(days=0 if config.step == "day" else 6))
        replay(usecase, paths.landing, day, last)
        pending += [day + dt.timedelta(days=i) for i in range((last - day).days + 1)]
        day = last + dt.timedelta(days=1)
        if len(pending) >= config.tick_days or day > config.end:
            tick(pending[-1], f"{plural(len(pending), 'day')} landed since the last tick")
            pending = []

    result = summarise(config, paths, usecase, registry, names, static_version, state)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["runs"] = state.runs
    return result


class SimulatedDaemon:
    """What the Dagster daemon does on a tick, at a simulated time: evaluate the sensors and
    the automation conditions of ``defs`` and execute what they request, in process and
    recorded in ``instance`` (so the UI on the same home shows every run).

    The sensors decide with the deployment of the home (its keel.toml);
    ``evidently_html`` is passed to the feature-drift asset of every monitoring run.
    """
    def __init__(self, defs, instance, *, evidently_html: str = "drifted",
                 out: Callable[[str], None] = print, state: _State | None = None) -> None:
        self.defs = defs
        self.instance = instance
        self.evidently_html = evidently_html
        self.state = state or _State()
        self.out = out
        self.resources = {
            "keel": defs.resources["keel"],
            "mlflow": defs.resources["mlflow"],
        }
        self.asset_job = defs.resolve_implicit_global_asset_job_def()

    # -- one daemon tick ------------------------------------------------------------------

    def tick(self, through: dt.date) -> None:
        # The sensors' clock is the data's (the files that landed, the days monitored); only
        # the automation conditions read the time, which is the simulated one.
        now = self._clock(through)
        self._landing()
        self._automation(now)
        self._retraining(now, through)

    def _clock(self, day: dt.date) -> dt.datetime:
        """The simulated time of a tick: the morning after the last landed day, in the
        deployment's time zone, when that day is the latest complete daily partition."""
        zone = zoneinfo.ZoneInfo(current().usecase.timezone)
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(6, 0), tzinfo=zone)

    def _sensor(self, name: str, cursor: str | None):
        sensor = self.defs.resolve_sensor_def(name)
        # A context manager: KeelState sets itself up as a resource that may hold a lock.
        with dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources, definitions=self.defs
        ) as context:
            return sensor.evaluate_tick(context)

    def _landing(self) -> None:
        data = self._sensor("landing_zone_sensor", self.state.landing_cursor)
        self.state.landing_cursor = data.cursor
        for request in data.run_requests or []:
            self._execute_job(request.job_name, tags=request.tags, run_config=request.run_config)

    def _automation(self, now: dt.datetime) -> None:
        for _ in range(MAX_AUTOMATION_TICKS):
            result = dg.evaluate_automation_conditions(
                defs=self.defs, instance=self.instance, evaluation_time=now,
                cursor=self.state.automation_cursor,
            )
            self.state.automation_cursor = result.cursor
            requested: dict[tuple, list] = {}
            for key in self.defs.resolve_asset_graph().get_all_asset_keys():
                partitions = result.get_requested_partitions(key)
                if partitions:
                    requested.setdefault(tuple(sorted(partitions, key=str)), []).append(key)
            if not requested:
                return
            # Unpartitioned assets (a new champion's reference, the views) first: the days
            # requested beside them read them.
            for partitions, keys in sorted(requested.items(), key=lambda item: item[0] != (None,)):
                self._execute_assets(keys, partitions)

    def _retraining(self, now: dt.datetime, through: dt.date) -> None:
        while True:
            data = self._sensor("retraining_trigger", self.state.retrain_cursor)
            self.state.retrain_cursor = data.cursor or self.state.retrain_cursor
            requests = data.run_requests or []
            if not requests:
                return
            request = requests[0]
            day = dt.date.fromisoformat(request.tags["keel/trigger_day"])
            before = self._champion()
            self.state.events.append(Event(day.isoformat(), "retrain_requested", request.tags["keel/trigger_fired"]))
            self.out(f"  {day}: retrain requested ({request.tags['keel/trigger_fired']})")
            result = self._execute_job("train_models", tags=request.tags, run_config=request.run_config)
            after = self._champion()
            self._record_training(day, result, before, after)
            if after != before:
                # The new champion's reference, then the days after the trigger day again.
                self._automation(now)
                later = day + dt.timedelta(days=1)
                if later <= through:
                    self._rescore(later, through)

    def _rescore(self, first: dt.date, last: dt.date) -> None:
        date = ident(current().usecase.model.date_column)
        with connect(current().paths.warehouse, read_only=True) as con:
            (scored,) = con.execute(
                f"select max({date}) from serving.predictions where {date} between ? and ?", [first, last]
            ).fetchone()
        if scored is None:
            return
        self._execute_job("score_daily", tags=range_tags(first, scored))
        self._execute_job(
            "monitor_daily", tags=range_tags(first, scored),
            run_config=self._monitoring_config(["monitoring__feature_drift"]),
        )

    # -- execution --------------------------------------------------------------------------

    def _monitoring_config(self, ops: list[str]) -> dict[str, Any]:
        if "monitoring__feature_drift" not in ops:
            return {}
        return {"ops": {"monitoring__feature_drift": {"config": {"evidently_html": self.evidently_html}}}}

    def _execute_job(self, name: str, tags: dict | None = None, run_config: dict | None = None):
        self.state.runs += 1
        return self._note(self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance, raise_on_error=False, tags=dict(tags or {}), run_config=progress_config(run_config),
        ))

    def _note(self, result):
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                self.state.failed_checks.append({
                    "asset": evaluation.asset_key.to_user_string(), "check": evaluation.check_name,
                    "partition": evaluation.partition, "blocking": evaluation.blocking,
                    "message": evaluation.description, "run_id": result.run_id,
                })
        return result

    def _execute_assets(self, keys: list, partitions: tuple) -> None:
        ops = [_op_name(key) for key in keys]
        run_config = self._monitoring_config(ops)
        if partitions == (None,):
            self.state.runs += 1
            self._note(self.asset_job.execute_in_process(
                instance=self.instance, raise_on_error=False, asset_selection=keys, run_config=progress_config(run_config),
            ))
            return
        days = [dt.date.fromisoformat(p) for p in partitions]
        for first, last in contiguous_ranges(days):
            self.state.runs += 1
            self._note(self.asset_job.execute_in_process(
                instance=self.instance, raise_on_error=False, asset_selection=keys, run_config=progress_config(run_config),
                tags=range_tags(first, last),
            ))

    def _champion(self) -> int | None:
        deployment = current()
        registry = open_registry(deployment.tracking)
        return champion_version(registry, registered_names(deployment.usecase.name))

    def _record_training(self, day: dt.date, result, before: int | None, after: int | None) -> None:
        challenger = None
        for event in result.asset_materializations_for_node("models__primary_model"):
            challenger = event.metadata["model_version"].value
        evaluations = result.get_asset_check_evaluations()
        gates = {e.check_name: e.passed for e in evaluations}
        failed = [e for e in evaluations if not e.passed]
        if after != before:
            detail = f"v{after} replaces v{before}: every gate passed"
            event = Event(day.isoformat(), "promoted", detail, after, gates)
        elif failed:
            detail = "; ".join(f"{e.check_name}: {e.description}" for e in failed)
            event = Event(day.isoformat(), "rejected", detail, challenger, gates)
        elif challenger is None or not result.success:
            failures = [e.event_specific_data.error.message.strip()[:300] for e in result.all_events if e.is_step_failure]
            detail = "; ".join(failures) or "the training run failed"
            event = Event(day.isoformat(), "training_failed", detail, challenger, gates)
        else:
            detail = f"v{challenger} passed every gate; waiting for approval (manual policy)"
            event = Event(day.isoformat(), "awaiting_approval", detail, challenger, gates)
        self.state.events.append(event)
        self.out(f"  {day}: {self.state.events[-1].kind}: {detail[:200]}")


def _op_name(key) -> str:
    return "__".join(key.path)


# ------------------------------------------------------------------------------------------
# Results


def summarise(config, paths, usecase, registry, names, static_version, state: _State) -> dict[str, Any]:
    spec = usecase.model
    first_month = (config.warmup_end + dt.timedelta(days=1)).replace(day=1)
    if first_month <= config.warmup_end:
        first_month = (first_month + dt.timedelta(days=32)).replace(day=1)
    static = registry.load(names["primary"], static_version)
    with connect(paths.warehouse, read_only=True) as con:
        frame = labelled_frame(con, spec, first_month, config.end)
        key, date = ident(spec.key), ident(spec.date_column)
        served = con.execute(
            f"select {key}, score, tier, model_version from serving.predictions where {date} between ? and ?",
            [first_month, config.end],
        ).df()
        decisions = retraining.decisions(con, config.warmup_end + dt.timedelta(days=1), config.end)
        drift = con.execute(
            "select day, calibrated_drift_share, important_drift_share from monitoring.drift_daily "
            "where day between ? and ? order by day", [config.warmup_end + dt.timedelta(days=1), config.end],
        ).fetchall()
    frame = frame.merge(served, on=spec.key, how="left")
    frame["static"] = static.predict(frame)
    frame["month"] = frame[spec.date_column].astype(str).str[:7]
    months = []
    for month, rows in frame.groupby("month", sort=True):
        scored = rows[rows["score"].notna()]
        y = scored[spec.label].to_numpy(dtype=float)
        months.append({
            "month": month,
            "champion_auc": _round(roc_auc(y, scored["score"].to_numpy())),
            "static_auc": _round(roc_auc(y, scored["static"].to_numpy())),
            "rows": len(scored),
            "unscored_rows": int(rows["score"].isna().sum()),
            "champion_versions": sorted({int(v) for v in scored.loc[scored["tier"] == "primary", "model_version"].dropna()}),
        })
    both = [m for m in months if m["champion_auc"] is not None and m["static_auc"] is not None]
    average = {
        "months": len(both),
        "champion_auc": _round(float(np.mean([m["champion_auc"] for m in both]))) if both else None,
        "static_auc": _round(float(np.mean([m["static_auc"] for m in both]))) if both else None,
    }
    if both:
        average["difference"] = _round(average["champion_auc"] - average["static_auc"])
    events = [e.to_dict() for e in state.events]
    bar = current().trigger.calibrated_drift_share
    plot = plot_simulation_timeline(paths.home / "simulation" / "timeline.png", months, drift, events,
                                    threshold=bar)
    summary = {
        "start": config.start.isoformat(),
        "end": config.end.isoformat(),
        "warmup_end": config.warmup_end.isoformat(),
        "step": config.step,
        "tick_days": config.tick_days,
        "home": str(paths.home),
        "static_model_version": static_version,
        "months": months,
        "average": average,
        "retrains": sum(e["kind"] == "retrain_requested" for e in events),
        "promotions": sum(e["kind"] == "promoted" for e in events),
        "rejections": sum(e["kind"] == "rejected" for e in events),
        "training_failures": sum(e["kind"] == "training_failed" for e in events),
        "decisions": len(decisions),
        "drift_bar": bar,
        "drifted_days": sum(1 for _, ratio, _ in drift if ratio is not None and ratio >= bar),
        "timeline": events,
        "plot": str(plot),
    }
    (paths.home / "simulation").mkdir(parents=True, exist_ok=True)
    (paths.home / "simulation" / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
