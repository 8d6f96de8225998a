"""The retraining trigger: decides every monitored day whether to retrain the champion.

Each tick decides the days whose monitoring has been written since the last tick, in
calendar order, with ``keel.monitoring.decide_retrain`` (sustained important-feature drift,
trailing AUC, model age, cooldown). Every decision is recorded in ``audit.retrain_decisions``
with its reasons; a retrain requests the ``train_models`` job on the window ending that day,
and the promotion gates and policy decide whether the new model serves. The cursor is the
last day decided, so each day is decided once and a restart resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import duckdb

from keel import retraining
from keel.promotion import alias_or_none, registered_names
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry
from resources.retrain import RetrainPolicy
from sensors.jobs import train_models_job


@dg.sensor(
    job=train_models_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Decides, for every monitored day, whether drift on important features, trailing AUC or "
        "the champion's age call for a retrain (with a cooldown); records each decision in "
        "audit.retrain_decisions and requests train_models when one fires."
    ),
)
def retraining_trigger(
    context: dg.SensorEvaluationContext, keel: KeelState, mlflow: MlflowRegistry, retraining_policy: RetrainPolicy
) -> dg.SensorResult | dg.SkipReason:
    usecase = keel.usecase
    if usecase.model is None:
        return dg.SkipReason(f"use case {usecase.name!r} declares no model")
    where = mlflow.location(keel.paths)
    if not where.exists() or not keel.paths.warehouse.exists():
        return dg.SkipReason("no model registered yet: nothing to retrain")
    registry = mlflow.open(keel.paths)
    name = registered_names(usecase.name)["primary"]
    version = alias_or_none(registry, name, registry.CHAMPION)
    if version is None:
        return dg.SkipReason(f"{name} has no champion yet: the first model is trained by keel run")
    champion = retraining.champion_from_lineage(name, version, registry.lineage(name, version))
    settings = retraining_policy.settings
    after = dt.date.fromisoformat(context.cursor) if context.cursor else None
    try:
        with keel.warehouse() as con:
            retraining.ensure_table(con)
            days = retraining.days_to_decide(con, champion, after, settings.decide_every_days)
            if not days:
                return dg.SkipReason(
                    f"no monitored day to decide after {after or champion.trained_through} "
                    f"(champion v{champion.version}, trained through {champion.trained_through})"
                )
            for day in days:
                decision = retraining.decide(con, settings, champion, day)
                window = settings.window(day, usecase.start) if decision.retrain else None
                run_key = f"retrain:{day.isoformat()}:v{champion.version}" if decision.retrain else None
                retraining.record(con, decision, champion, window=window, run_key=run_key)
                context.log.info(retraining.summary(decision))
                if decision.retrain:
                    request = dg.RunRequest(
                        run_key=run_key,
                        run_config=retraining.training_run_config(
                            settings, window, threads=retraining_policy.threads,
                            search_trials=retraining_policy.search_trials,
                        ),
                        tags={
                            "keel/trigger": "retrain",
                            "keel/trigger_day": day.isoformat(),
                            "keel/trigger_fired": ",".join(decision.fired),
                            "keel/champion_version": str(champion.version),
                        },
                    )
                    return dg.SensorResult(run_requests=[request], cursor=day.isoformat())
    except duckdb.IOException as exc:  # a run holds the warehouse; the next tick decides
        return dg.SkipReason(f"warehouse busy, deciding next tick: {exc}")
    return dg.SensorResult(
        skip_reason=dg.SkipReason(f"decided {len(days)} day(s) up to {days[-1]}: no retrain"),
        cursor=days[-1].isoformat(),
    )
