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

import datetime as dt
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.settings import range_tags

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


def simulate(config: SimulationConfig, out: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    home = prepare_home(config.home)
    os.environ["KEEL_HOME"] = str(home)
    # The replay's runs belong to its own instance, whatever DAGSTER_HOME the shell had, so
    # that `KEEL_HOME=<home> keel dev` shows them.
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    os.environ["KEEL_TRAIN_THREADS"] = str(config.threads)
    from keel.settings import load_usecase, prepare_environment

    paths = prepare_environment()
    usecase = load_usecase()
    if usecase.model is None:
        raise SystemExit(f"use case {usecase.name!r} declares no model: nothing to simulate")

    from keel.cli import run_pipeline

    out(f"warm-up: keel run over {config.start}..{config.warmup_end} in {home}")
    buffer = io.StringIO()
    code = run_pipeline(config.start, config.warmup_end, out=buffer, train_threads=config.threads)
    for line in buffer.getvalue().splitlines():
        if line.startswith(("models:", "  trained", "  primary", "promotion", "  predictions")):
            out("  " + line.strip())
    if code == 2:
        raise SystemExit("the warm-up failed; see the log above")

    import dagster as dg

    from definitions import defs
    from keel.promotion import alias_or_none, registered_names
    from keel.tracking import location, open_registry

    instance = dg.DagsterInstance.get()
    registry = open_registry(location(paths))
    names = registered_names(usecase.name)
    static_version = alias_or_none(registry, names["primary"], registry.CHAMPION)
    if static_version is None:
        raise SystemExit("the warm-up promoted no champion; the replay needs one to start from")
    out(f"static model: {names['primary']} v{static_version}, trained on the warm-up")

    from resources.retrain import RetrainPolicy

    state = _State()
    policy = RetrainPolicy(decide_every_days=7 if config.step == "week" else 1, num_threads=config.threads)
    runner = SimulatedDaemon(
        defs, instance, retraining_policy=policy, evidently_html=config.evidently_html, out=out, state=state
    )
    runner.tick(config.warmup_end)  # the warm-up's own monitoring and reference

    day = config.warmup_end + dt.timedelta(days=1)
    pending: list[dt.date] = []
    from keel.replay import replay

    while day <= config.end:
        last = min(config.end, day + dt.timedelta(days=0 if config.step == "day" else 6))
        replay(usecase, paths.landing, day, last)
        pending += [day + dt.timedelta(days=i) for i in range((last - day).days + 1)]
        day = last + dt.timedelta(days=1)
        if len(pending) >= config.tick_days or day > config.end:
            out(f"tick at {pending[-1]}: {len(pending)} day(s) landed since the last tick")
            runner.tick(pending[-1])
            pending = []

    result = summarise(config, paths, usecase, registry, names, static_version, state)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["runs"] = state.runs
    return result


class SimulatedDaemon:
    """What the Dagster daemon does on a tick, at a simulated time: evaluate the sensors and
    the automation conditions of ``defs`` and execute what they request, in process and
    recorded in ``instance`` (so the UI on the same home shows every run).

    ``retraining_policy`` is the ``RetrainPolicy`` resource the trigger sensor decides with;
    ``evidently_html`` is passed to the feature-drift asset of every monitoring run.
    """

    def __init__(self, defs, instance, *, retraining_policy=None, evidently_html: str = "drifted",
                 out: Callable[[str], None] = print, state: _State | None = None) -> None:
        import dagster as dg

        from resources.keel_state import KeelState
        from resources.mlflow import MlflowRegistry
        from resources.retrain import RetrainPolicy

        self.dg = dg
        self.defs = defs
        self.instance = instance
        self.evidently_html = evidently_html
        self.state = state or _State()
        self.out = out
        self.resources = {
            "keel": KeelState(),
            "mlflow": MlflowRegistry(),
            "retraining_policy": retraining_policy or RetrainPolicy(),
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
        import zoneinfo

        from keel.settings import load_usecase

        zone = zoneinfo.ZoneInfo(load_usecase().timezone)
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(6, 0), tzinfo=zone)

    def _sensor(self, name: str, cursor: str | None):
        sensor = self.defs.resolve_sensor_def(name)
        context = self.dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources, definitions=self.defs
        )
        return sensor.evaluate_tick(context)

    def _landing(self) -> None:
        data = self._sensor("landing_zone_sensor", self.state.landing_cursor)
        self.state.landing_cursor = data.cursor
        for request in data.run_requests or []:
            self._execute_job(request.job_name, tags=request.tags, run_config=request.run_config)

    def _automation(self, now: dt.datetime) -> None:
        dg = self.dg
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
        from keel.warehouse import connect
        from keel.settings import KeelPaths, keel_home

        with connect(KeelPaths(keel_home()).warehouse, read_only=True) as con:
            (scored,) = con.execute(
                "select max(flight_date) from serving.predictions where flight_date between ? and ?", [first, last]
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
            instance=self.instance, raise_on_error=False, tags=dict(tags or {}), run_config=run_config or {},
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
        from sensors.landing import contiguous_ranges

        ops = [_op_name(key) for key in keys]
        run_config = self._monitoring_config(ops)
        if partitions == (None,):
            self.state.runs += 1
            self._note(self.asset_job.execute_in_process(
                instance=self.instance, raise_on_error=False, asset_selection=keys, run_config=run_config,
            ))
            return
        days = [dt.date.fromisoformat(p) for p in partitions]
        for first, last in contiguous_ranges(days):
            self.state.runs += 1
            self._note(self.asset_job.execute_in_process(
                instance=self.instance, raise_on_error=False, asset_selection=keys, run_config=run_config,
                tags=range_tags(first, last),
            ))

    def _champion(self) -> int | None:
        from keel.promotion import alias_or_none, registered_names
        from keel.settings import KeelPaths, keel_home, load_usecase
        from keel.tracking import location, open_registry

        registry = open_registry(location(KeelPaths(keel_home())))
        return alias_or_none(registry, registered_names(load_usecase().name)["primary"], registry.CHAMPION)

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
    import numpy as np

    from keel import retraining
    from keel.datasets import labelled_frame
    from keel.evaluation import roc_auc
    from keel.warehouse import connect

    spec = usecase.model
    first_month = (config.warmup_end + dt.timedelta(days=1)).replace(day=1)
    if first_month <= config.warmup_end:
        first_month = (first_month + dt.timedelta(days=32)).replace(day=1)
    static = registry.load(names["primary"], static_version)
    with connect(paths.warehouse, read_only=True) as con:
        frame = labelled_frame(con, spec, first_month, config.end)
        served = con.execute(
            "select flight_id, score, tier, model_version from serving.predictions where flight_date between ? and ?",
            [first_month, config.end],
        ).df()
        decisions = retraining.decisions(con, config.warmup_end + dt.timedelta(days=1), config.end)
        drift = con.execute(
            "select day, calibrated_drift_share, important_drift_share from monitoring.drift_daily "
            "where day between ? and ? order by day", [config.warmup_end + dt.timedelta(days=1), config.end],
        ).fetchall()
    frame = frame.merge(served, left_on=spec.key, right_on="flight_id", how="left")
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
    plot = plot_timeline(paths.home / "simulation" / "timeline.png", months, drift, events)
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
        "drifted_days": sum(1 for _, ratio, _ in drift if ratio is not None and ratio >= _ratio_threshold()),
        "timeline": events,
        "plot": str(plot),
    }
    (paths.home / "simulation").mkdir(parents=True, exist_ok=True)
    (paths.home / "simulation" / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _ratio_threshold() -> float:
    from keel.monitoring import TriggerPolicy

    return TriggerPolicy().calibrated_drift_share


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def plot_timeline(path: Path, months: list[dict], drift: list[tuple], events: list[dict]) -> Path:
    """Monthly AUC of the serving champion beside the static model, and the daily drift
    share with the retrains, promotions and rejections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), constrained_layout=True)
    labels = [m["month"] for m in months]
    top.plot(labels, [m["champion_auc"] for m in months], marker="o", label="serving champion (retrained)")
    top.plot(labels, [m["static_auc"] for m in months], marker="s", label="static model (warm-up only)")
    top.set_ylabel("ROC AUC per month")
    top.legend(loc="lower left")
    top.grid(alpha=0.3)
    if drift:
        days = [d for d, _, _ in drift]
        ratios = [r if r is not None else float("nan") for _, r, _ in drift]
        bottom.plot(days, ratios, lw=1, color="tab:gray",
                    label="importance beyond the ordinary-day bars")
        bottom.axhline(_ratio_threshold(), color="tab:gray", ls=":", lw=1)
    top_y = 1.1
    styles = {"promoted": ("tab:green", "^"), "rejected": ("tab:red", "x"),
              "retrain_requested": ("tab:blue", "|"), "training_failed": ("black", "x"),
              "awaiting_approval": ("tab:orange", "o")}
    for kind, (colour, marker) in styles.items():
        chosen = [dt.date.fromisoformat(e["day"]) for e in events if e["kind"] == kind]
        if chosen:
            bottom.scatter(chosen, [top_y * 0.95] * len(chosen), color=colour, marker=marker, s=60, label=kind.replace("_", " "))
    bottom.set_ylim(0, top_y)
    bottom.set_ylabel("drifted importance / events")
    # Below the axes: the events run along the top edge all year.
    bottom.legend(loc="upper left", bbox_to_anchor=(0.0, -0.08), fontsize=8, ncols=4, frameon=False)
    bottom.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"Keel simulate {result['start']}..{result['end']} (step {result['step']}, daemon tick every "
             f"{result['tick_days']} days; static model v{result['static_model_version']} trained through "
             f"{result['warmup_end']})",
             "  month     champion AUC  static AUC  rows     champion versions"]
    for m in result["months"]:
        lines.append(f"  {m['month']}  {_fmt(m['champion_auc']):>12}  {_fmt(m['static_auc']):>10}  "
                     f"{m['rows']:>7,}  {','.join(f'v{v}' for v in m['champion_versions'])}")
    avg = result["average"]
    if avg.get("months"):
        lines.append(f"  average over {avg['months']} months: champion {_fmt(avg['champion_auc'])}, static "
                     f"{_fmt(avg['static_auc'])} ({avg['difference']:+.4f})")
    lines.append(f"retrains requested {result['retrains']}, promoted {result['promotions']}, rejected "
                 f"{result['rejections']}, failed {result['training_failures']}; {result['decisions']} daily "
                 f"decisions, {result['drifted_days']} days with important-feature drift")
    for event in result["timeline"]:
        lines.append(f"  {event['day']} {event['kind']:<18} {event['detail'][:150]}")
    lines.append(f"timeline plot: {result['plot']}")
    lines.append(f"watch or inspect the replay: KEEL_HOME={result['home']} keel dev")
    if "seconds" in result:
        lines.append(f"{result['runs']} Dagster runs in {result['seconds']:.0f} s")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
