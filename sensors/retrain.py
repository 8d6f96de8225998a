"""The retraining trigger: decides every monitored day whether to retrain the champion.

Each tick decides the days whose monitoring has been written since the last tick, in
calendar order, with ``keel.monitoring.trigger.decide_retrain`` (sustained important-feature drift,
trailing AUC, model age, cooldown). Every decision is recorded in ``audit.retrain_decisions``
with its reasons; a retrain requests the ``train_models`` job on the window ending that day,
and the promotion gates and policy decide whether the new model serves. The cursor is the
last day decided, so each day is decided once and a restart resumes where it stopped. The
thresholds, the window and how often to decide are the deployment's ``[retraining]``.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import duckdb

from keel.core.lock import HomeBusy, hold
from keel.monitoring import retraining
from keel.registry.model_set import champion_version
from keel.registry.promotion import registered_names
from resources.keel_state import KeelState
from resources.mlflow import MlflowRegistry
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
    context: dg.SensorEvaluationContext, keel: KeelState, mlflow: MlflowRegistry
) -> dg.SensorResult | dg.SkipReason:
    deployment = keel.deployment
    usecase = deployment.usecase
    if usecase.model is None:
        return dg.SkipReason(f"use case {usecase.name!r} declares no model")
    where = mlflow.location
    if not where.exists() or not keel.paths.warehouse.exists():
        return dg.SkipReason("no model registered yet: nothing to retrain")
    registry = mlflow.open()
    names = registered_names(usecase.name)
    name = names["primary"]
    version = champion_version(registry, names)
    if version is None:
        return dg.SkipReason(f"{name} has no champion yet: the first model is trained by keel run")
    champion = retraining.champion_from_lineage(name, version, registry.lineage(name, version))
    settings = deployment.retraining
    after = dt.date.fromisoformat(context.cursor) if context.cursor else None
    try:
        with hold(keel.paths.home, "the retraining trigger of keel dev", timeout=0), keel.warehouse() as con:
            retraining.ensure_table(con)
            late = retraining.late_days(con, champion, after, settings.decide_every_days)
            days = late + retraining.days_to_decide(con, champion, after, settings.decide_every_days)
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
                            settings, window, threads=deployment.training_threads,
                        ),
                        tags={
                            "keel/trigger": "retrain",
                            "keel/trigger_day": day.isoformat(),
                            "keel/trigger_fired": ",".join(decision.fired),
                            "keel/champion_version": str(champion.version),
                        },
                    )
                    # A late day leaves the cursor where it was: the days after it are decided.
                    return dg.SensorResult(run_requests=[request], cursor=_latest(after, day))
    except HomeBusy as exc:  # keel run or a run of the daemon writes; the next tick decides
        who = exc.holder.describe() if exc.holder else "another process"
        return dg.SkipReason(f"{who} is writing the Keel home; deciding next tick")
    except duckdb.IOException as exc:  # a process outside Keel's lock holds the file
        return dg.SkipReason(f"warehouse busy, deciding next tick: {exc}")
    return dg.SensorResult(
        skip_reason=dg.SkipReason(f"decided {len(days)} day(s) up to {days[-1]}: no retrain"),
        cursor=_latest(after, days[-1]),
    )


def _latest(after: dt.date | None, day: dt.date) -> str:
    return (day if after is None else max(after, day)).isoformat()
