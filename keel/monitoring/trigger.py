"""The retraining decision: whether to request a retrain of the champion today, and why.

:func:`decide_retrain` turns the drift history, the trailing performance and the model's age
into a :class:`Decision` under a ``TriggerPolicy``; it is a pure function of its inputs, so a
replay decides each day exactly as the live sensor did.

Why drift must be sustained: a day's sample (about 900 rows in the demo) drifts for a day
whenever something ordinary moves it (a storm moves many features at once), and
retraining on one unusual day would only chase it. The trigger therefore needs the importance-weighted drift
share at or above its threshold on ``drift_days_required`` of the last ``drift_window_days``
calendar days. A cooldown then bounds the request rate whatever fires, so a signal that
stays on while the new model is trained cannot queue a storm of retrains.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from keel.core.dates import as_date
from keel.core.plain import json_ready
from keel.core.policies import TriggerPolicy


@dataclass
class Decision:
    """Whether to request a retrain today, and why (or why not)."""

    today: str
    retrain: bool
    reasons: list[str]
    blocked_by_cooldown: bool
    signals: dict[str, dict[str, Any]]
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> list[str]:
        return [name for name, signal in self.signals.items() if signal.get("fired")]

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))


def decide_retrain(
    policy: TriggerPolicy,
    *,
    today: dt.date,
    champion_trained_at: dt.date | dt.datetime | str,
    last_retrain_requested_at: dt.date | dt.datetime | str | None,
    drift_history: Sequence[Mapping[str, Any]],
    performance_7d: Mapping[str, Any] | None,
) -> Decision:
    """Decide whether to request a retrain of the champion on ``today``.

    ``drift_history`` holds :func:`feature_drift` results (or any dicts with ``date`` and
    ``important_drift_share``); a date recorded twice keeps its last record, and records
    after ``today`` are ignored (a replay decides as it would have on the day).
    ``performance_7d`` is :func:`performance`'s ``trailing`` window, or ``None`` before
    labels exist. ``reasons`` has one line per signal, those that fired first, then the
    cooldown's when it suppressed a request; each line gives the value and the threshold.
    """
    today = as_date(today)
    trained = as_date(champion_trained_at)
    signals = {
        "important_drift": _drift_signal(policy, today, trained, drift_history),
        "performance": _performance_signal(policy, performance_7d, trained),
        "model_age": _age_signal(policy, today, trained, last_retrain_requested_at),
    }
    cooldown = _cooldown(policy, today, last_retrain_requested_at)
    signals["cooldown"] = cooldown
    triggers = ("important_drift", "performance", "model_age")
    fired = [name for name in triggers if signals[name]["fired"]]
    blocked = bool(fired) and cooldown["active"]
    reasons = [signals[name]["reason"] for name in fired]
    reasons += [signals[name]["reason"] for name in triggers if name not in fired]
    if blocked:
        reasons.append(f"suppressed by cooldown: {cooldown['reason']}")
    elif not fired:
        reasons.insert(0, "no retraining signal fired")
    return Decision(
        today=today.isoformat(),
        retrain=bool(fired) and not blocked,
        reasons=reasons,
        blocked_by_cooldown=blocked,
        signals=signals,
        policy=asdict(policy),
    )


def _drift_signal(
    policy: TriggerPolicy, today: dt.date, trained: dt.date, history: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    start = today - dt.timedelta(days=policy.drift_window_days - 1)
    by_day: dict[dt.date, Mapping[str, Any]] = {}
    for record in history:
        day = as_date(record["date"])
        if start <= day <= today and day >= trained:
            by_day[day] = record
    calibrated = any(r.get("calibrated_drift_share") is not None for r in by_day.values())
    days = []
    for day, record in sorted(by_day.items()):
        share, calibrated_share = record.get("important_drift_share"), record.get("calibrated_drift_share")
        over = (calibrated_share is not None and calibrated_share >= policy.calibrated_drift_share) if calibrated \
            else (share is not None and share >= policy.important_drift_share)
        entry = {"date": day.isoformat(), "important_drift_share": share, "over": over}
        if calibrated:
            entry["calibrated_drift_share"] = calibrated_share
        days.append(entry)
    over = sum(entry["over"] for entry in days)
    fired = over >= policy.drift_days_required
    measure = "calibrated_drift_share" if calibrated else "important_drift_share"
    latest = ""
    if days and days[-1][measure] is not None:
        latest = f"; latest {days[-1][measure]:.3f} on {days[-1]['date']}"
    what = (f"share of importance beyond its ordinary-day bar >= {policy.calibrated_drift_share:.2f}"
            if calibrated else f"important-feature drift share >= {policy.important_drift_share:.2f}")
    reason = (
        f"{what} on {over} of the "
        f"last {policy.drift_window_days} days ({len(days)} measured since the champion was "
        f"trained); needs {policy.drift_days_required}{latest}: {'fired' if fired else 'not fired'}"
    )
    return {
        "fired": fired,
        "value": over,
        "threshold": policy.drift_days_required,
        "share_threshold": policy.important_drift_share,
        "measure": measure,
        "calibrated_share_threshold": policy.calibrated_drift_share,
        "window_days": policy.drift_window_days,
        "days": days,
        "reason": reason,
    }


def _performance_signal(
    policy: TriggerPolicy, window: Mapping[str, Any] | None, trained: dt.date
) -> dict[str, Any]:
    auc = None if window is None else window.get("roc_auc")
    n = 0 if window is None else int(window.get("n", 0))
    base = {"value": auc, "threshold": policy.min_auc, "n": n, "min_rows": policy.min_auc_rows}
    if window is None:
        reason = f"trailing AUC: no labelled window yet (threshold {policy.min_auc:.2f}): not evaluated"
        return {**base, "fired": False, "reason": reason}
    span = f"{window.get('start')}..{window.get('end')}"
    if window.get("start") is not None and as_date(window["start"]) < trained:
        reason = (f"trailing AUC over {span}: starts before the champion was trained on "
                  f"{trained.isoformat()}, so it partly measures its predecessor "
                  f"(threshold {policy.min_auc:.2f}): not evaluated")
        return {**base, "fired": False, "reason": reason}
    if auc is None:
        reason = (f"trailing AUC over {span}: undefined (one class in {n} rows; "
                  f"threshold {policy.min_auc:.2f}): not evaluated")
        return {**base, "fired": False, "reason": reason}
    if n < policy.min_auc_rows:
        reason = (f"trailing AUC over {span}: {auc:.3f} on {n} rows, fewer than the "
                  f"{policy.min_auc_rows} needed (threshold {policy.min_auc:.2f}): not evaluated")
        return {**base, "fired": False, "reason": reason}
    fired = auc < policy.min_auc
    relation = "<" if fired else ">="
    reason = (f"trailing AUC over {span}: {auc:.3f} {relation} minimum {policy.min_auc:.2f} "
              f"({n} rows): {'fired' if fired else 'not fired'}")
    return {**base, "fired": fired, "reason": reason}


def _age_signal(policy: TriggerPolicy, today: dt.date, trained: dt.date, last_request) -> dict[str, Any]:
    # A champion that a retrain challenged and kept its place has just been re-validated
    # against fresh data: its age counts from that challenge, so a champion that keeps
    # beating new models is not retrained every cooldown for age alone.
    since, what = trained, "the champion's training window ended"
    if last_request is not None and as_date(last_request) > trained:
        since, what = as_date(last_request), "the champion was last challenged"
    age = (today - since).days
    fired = age > policy.max_model_age_days
    relation = ">" if fired else "<="
    reason = (f"model age: {age} days since {what} on {since.isoformat()} {relation} maximum "
              f"{policy.max_model_age_days}: {'fired' if fired else 'not fired'}")
    return {"fired": fired, "value": age, "threshold": policy.max_model_age_days, "since": since.isoformat(),
            "reason": reason}


def _cooldown(policy: TriggerPolicy, today: dt.date, last_request) -> dict[str, Any]:
    if last_request is None:
        return {"active": False, "value": None, "threshold": policy.cooldown_days,
                "reason": "no earlier retrain request"}
    last = as_date(last_request)
    since = (today - last).days
    # A request dated after today (a replay behind the live run) also holds the cooldown.
    active = since < policy.cooldown_days
    relation = "<" if active else ">="
    reason = (f"{since} days since the last request on {last.isoformat()} {relation} cooldown "
              f"of {policy.cooldown_days} days")
    return {"active": active, "value": since, "threshold": policy.cooldown_days,
            "last_request": last.isoformat(), "reason": reason}
