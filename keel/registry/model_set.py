"""The champion model set (primary, fallback, baseline) moved as one recorded transaction.

Moving the set touches three registered models: a ``champion`` and a ``previous`` alias on
each, tags on the versions, a history record on each. MLflow has no transaction across those
writes, so a process killed between two of them would leave a new primary beside an old
fallback. The set is therefore recorded, in two tags on the primary registered model, each
one MLflow write:

``keel.model_set.intent``
    written first: the target set (kind -> version), the committed set it replaces, the
    aliases of every member before the move, who, why, when, and a transaction id.
``keel.model_set``
    the committed set, written once the aliases are in place: the commit point. It carries
    the set before it (``previous``), so a rollback restores a whole set.

Then the history and version tags are written (keyed by the transaction id, so writing them
twice changes nothing) and the intent is cleared. :func:`champion_set` reads only the
committed set, never the aliases, so nobody sees a half-moved set. :func:`recover` finishes
an interrupted move on the next start of any ``keel`` command and of ``models/champion``: an
intent whose target versions all exist is completed (it was decided: gates passed, policy or
a person approved), any other is undone by putting every alias back as the intent recorded.
An intent whose process still runs (its id, host and start time are recorded with it) is left
to that process.

Every function takes a configured ``keel.registry.store`` (``keel.registry.tracking``), so
that importing this module does not load MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from keel.core import process
from keel.registry.promotion import alias_or_none, gate_verdict, siblings

KINDS = ("primary", "fallback", "baseline")
SET_TAG = "keel.model_set"
INTENT_TAG = "keel.model_set.intent"
_ALIASES = ("champion", "previous", "challenger")


@dataclass(frozen=True)
class ModelSet:
    """A committed champion set: the version of each kind, and the set it replaced."""

    versions: dict[str, int]
    previous: dict[str, int] | None = None
    action: str = "promote"
    actor: str = ""
    note: str = ""
    at: str = ""
    txn: str = ""

    @property
    def primary(self) -> int:
        return self.versions["primary"]

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "previous": self.previous, "action": self.action,
                "actor": self.actor, "note": self.note, "at": self.at, "txn": self.txn}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelSet:
        previous = doc.get("previous")
        return cls(
            versions={k: int(v) for k, v in doc["versions"].items()},
            previous=None if previous is None else {k: int(v) for k, v in previous.items()},
            action=doc.get("action", "promote"), actor=doc.get("actor", ""), note=doc.get("note", ""),
            at=doc.get("at", ""), txn=doc.get("txn", ""),
        )


# --------------------------------------------------------------------------------------------
# Reading


def champion_set(registry: ModuleType, names: Mapping[str, str]) -> ModelSet | None:
    """The committed champion set; None before the first promotion.

    A registry promoted before sets were recorded has aliases only: its set is read from the
    ``champion`` alias of each kind (the next promotion records it)."""
    tags = _tags(registry, names["primary"])
    if tags is None:
        return None
    if SET_TAG in tags:
        return ModelSet.from_dict(json.loads(tags[SET_TAG]))
    if INTENT_TAG in tags:
        # The first promotion of this registry was interrupted: nothing was committed yet.
        return None
    versions, previous = {}, {}
    for kind, name in names.items():
        aliases = _aliases(registry, name)
        if "champion" in aliases:
            versions[kind] = aliases["champion"]
            previous[kind] = aliases.get("previous", aliases["champion"])
    if "primary" not in versions:
        return None
    has_previous = previous["primary"] != versions["primary"]
    return ModelSet(versions=versions, previous=previous if has_previous else None, action="aliases")


def champion_version(registry: ModuleType, names: Mapping[str, str], kind: str = "primary") -> int | None:
    """The committed champion version of ``kind``; None when there is none."""
    current = champion_set(registry, names)
    return None if current is None else current.versions.get(kind)


def champion_loader(registry: ModuleType, names: Mapping[str, str]):
    """``load(registered name) -> (version, model)`` of the committed set's members, for
    ``keel.ml.scoring.load_tiers``. The set is read once: a move in progress, or one a killed
    process left halfway, cannot make one scoring run mix two sets."""
    current = champion_set(registry, names)
    champions = current.versions if current is not None else {}
    kinds = {name: kind for kind, name in names.items()}

    def load(name: str):
        version = champions.get(kinds[name])
        if version is None:
            raise LookupError(f"{name} is not in the champion set")
        return version, registry.load(name, version)

    return load


def candidate_versions(registry: ModuleType, names: Mapping[str, str], challenger: int) -> dict[str, int | None]:
    """The versions the challenger is evaluated beside: the serving set's primary (None when
    the challenger is the champion), and the fallback and baseline trained with the
    challenger, else the serving set's."""
    current = champion_set(registry, names)
    champions = current.versions if current is not None else {}
    champion = champions.get("primary")
    versions: dict[str, int | None] = {"challenger": challenger, "champion": champion if champion != challenger else None}
    for kind in ("fallback", "baseline"):
        versions[kind] = alias_or_none(registry, names[kind], registry.CHALLENGER) or champions.get(kind)
    return versions


def load_candidates(
    registry: ModuleType, names: Mapping[str, str], versions: Mapping[str, int | None]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each candidate's model, and why a candidate is missing. The challenger must load; a
    reference that does not fails the gates that need it, saying why."""
    models, errors = {}, {}
    for candidate, version in versions.items():
        if version is None:
            continue
        name = names["primary"] if candidate in ("challenger", "champion") else names[candidate]
        try:
            models[candidate] = registry.load(name, version)
        except Exception as exc:  # a missing reference fails the gates that need it, saying why
            if candidate == "challenger":
                raise
            errors[candidate] = f"{name} v{version} failed to load: {type(exc).__name__}: {exc}"
    if versions["baseline"] is None:
        errors["baseline"] = f"{names['baseline']} has no version: materialize models/baseline_model"
    return models, errors


def pending_intent(registry: ModuleType, names: Mapping[str, str]) -> dict[str, Any] | None:
    """The intent of a move that has not finished, if any."""
    tags = _tags(registry, names["primary"])
    return None if tags is None or INTENT_TAG not in tags else json.loads(tags[INTENT_TAG])


# --------------------------------------------------------------------------------------------
# Moving


def promote_set(registry: ModuleType, names: Mapping[str, str], version: int, *, actor: str, note: str,
                require_gates: bool = True) -> ModelSet:
    """Make primary ``version`` and the fallback and baseline trained in its run the champion
    set; the set it replaces becomes ``previous``. Refuses a version whose gates did not pass
    (``PermissionError``) or that already is the champion (``ValueError``)."""
    recover(registry, names)
    if require_gates:
        verdict, per_gate = gate_verdict(registry, names["primary"], version)
        if verdict != "passed":
            failed = [f"{gate}: {text}" for gate, text in per_gate.items() if not text.startswith("passed")]
            reason = "; ".join(failed) if failed else "its gates were never evaluated (materialize models/evaluation_report)"
            raise PermissionError(f"{names['primary']} v{version} cannot be promoted: {reason}")
    current = champion_set(registry, names)
    if current is not None and current.primary == version:
        raise ValueError(f"{names['primary']} v{version} already is the champion")
    target = {**(current.versions if current else {}), **siblings(registry, names, version)}
    return _move(registry, names, "promote", target, None if current is None else current.versions,
                 actor=actor, note=note)


def rollback_set(registry: ModuleType, names: Mapping[str, str], *, actor: str, note: str) -> ModelSet:
    """Restore the set the current one replaced, as a unit. That set has no previous one of
    its own: a second rollback raises ``LookupError`` instead of swapping back and forth (to
    return to the demoted set, promote its primary)."""
    recover(registry, names)
    current = champion_set(registry, names)
    if current is None or not current.previous:
        raise LookupError(
            f"registered model {names['primary']!r} has no previous champion set to roll back to "
            f"(a rollback clears it; promote a version explicitly instead)"
        )
    return _move(registry, names, "rollback", current.previous, None, actor=actor, note=note,
                 demoted=current.versions)


def _move(registry: ModuleType, names: Mapping[str, str], action: str, target: Mapping[str, int],
          previous: Mapping[str, int] | None, *, actor: str, note: str,
          demoted: Mapping[str, int] | None = None) -> ModelSet:
    pending = pending_intent(registry, names)
    if pending is not None:
        raise RuntimeError(
            f"another move of the champion set is in progress ({pending['action']} of "
            f"v{pending['target'].get('primary')} by {pending['actor']}, process "
            f"{(pending.get('process') or {}).get(process.PID_TAG, '?')}): try again when it ends"
        )
    before = champion_set(registry, names)
    intent = {
        "txn": uuid.uuid4().hex,
        "action": action,
        "target": dict(target),
        "previous": None if previous is None else dict(previous),
        "demoted": dict(demoted or (before.versions if before else {})),
        "aliases_before": {kind: _aliases(registry, names[kind]) for kind in target},
        "actor": actor,
        "note": note,
        "at": _now(),
        "process": process.run_tags(),
    }
    client = registry.client()
    client.set_registered_model_tag(names["primary"], INTENT_TAG, json.dumps(intent, sort_keys=True))
    _apply_aliases(registry, names, intent)
    _commit(registry, names, intent)
    _finish(registry, names, intent)
    return _committed(intent)


def _committed(intent: Mapping[str, Any]) -> ModelSet:
    return ModelSet(versions={k: int(v) for k, v in intent["target"].items()},
                    previous=intent["previous"], action=intent["action"], actor=intent["actor"],
                    note=intent["note"], at=intent["at"], txn=intent["txn"])


def _apply_aliases(registry: ModuleType, names: Mapping[str, str], intent: Mapping[str, Any]) -> None:
    """Point each member's ``champion`` at its target and ``previous`` at the version it
    replaces; a promoted challenger stops being the challenger. Safe to repeat."""
    client = registry.client()
    previous = intent["previous"] or {}
    for kind, version in _members(names, intent):
        name = names[kind]
        aliases = _aliases(registry, name)
        if aliases.get("champion") != version:
            client.set_registered_model_alias(name, "champion", str(version))
        prior = previous.get(kind)
        if prior is not None and prior != version:
            if aliases.get("previous") != prior:
                client.set_registered_model_alias(name, "previous", str(prior))
        elif "previous" in aliases:
            client.delete_registered_model_alias(name, "previous")
        if intent["action"] == "promote" and aliases.get("challenger") == version:
            client.delete_registered_model_alias(name, "challenger")


def _members(names: Mapping[str, str], intent: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The target's (kind, version) pairs, primary first."""
    return [(kind, int(intent["target"][kind])) for kind in names if kind in intent["target"]]


def _commit(registry: ModuleType, names: Mapping[str, str], intent: Mapping[str, Any]) -> None:
    """The commit point: one write of the committed set."""
    registry.client().set_registered_model_tag(
        names["primary"], SET_TAG, json.dumps(_committed(intent).to_dict(), sort_keys=True)
    )


def _finish(registry: ModuleType, names: Mapping[str, str], intent: Mapping[str, Any]) -> None:
    """After the commit: version tags and history records (each keyed by the transaction,
    so that finishing twice writes nothing twice), then the intent is cleared."""
    client = registry.client()
    txn, at, actor, note = intent["txn"], intent["at"], intent["actor"], intent["note"]
    demoted = intent.get("demoted") or {}
    for kind, version in _members(names, intent):
        name = names[kind]
        former = demoted.get(kind)
        if former == version:
            continue
        if intent["action"] == "rollback":
            tags = {"keel.promoted_by": actor, "keel.promoted_at": at, "keel.promotion_note": f"rollback: {note}"}
        else:
            tags = {"keel.promoted_by": actor, "keel.promoted_at": at, "keel.promotion_note": note}
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)
        if intent["action"] == "rollback" and former is not None:
            for key, value in {"keel.rolled_back_by": actor, "keel.rolled_back_at": at,
                               "keel.rollback_note": note}.items():
                client.set_model_version_tag(name, str(former), key, value)
        history = registry.promotion_history(name)
        if not any(record.get("txn") == txn for record in history):
            record = {"action": intent["action"], "version": version, "from_version": former,
                      "actor": actor, "at": at, "note": note, "txn": txn}
            client.set_registered_model_tag(
                name, f"{registry.HISTORY_PREFIX}{len(history) + 1:06d}", json.dumps(record, sort_keys=True)
            )
    client.delete_registered_model_tag(names["primary"], INTENT_TAG)


# --------------------------------------------------------------------------------------------
# Recovery


def recover(registry: ModuleType, names: Mapping[str, str]) -> str | None:
    """Finish a move that a killed process left behind; None when there was none, else one
    line saying what was done ("completed ..." or "undid ...")."""
    intent = pending_intent(registry, names)
    if intent is None or _in_progress(intent):
        return None
    tags = _tags(registry, names["primary"]) or {}
    committed = json.loads(tags[SET_TAG]) if SET_TAG in tags else None
    label = (f"{intent['action']} of {names['primary']} v{intent['target'].get('primary')} "
             f"by {intent['actor']} at {intent['at']}")
    if committed is not None and committed.get("txn") == intent["txn"]:
        _apply_aliases(registry, names, intent)
        _finish(registry, names, intent)
        return f"completed the interrupted {label} (it was committed; its records are now written)"
    if all(_version_exists(registry, names[kind], version) for kind, version in intent["target"].items()):
        _apply_aliases(registry, names, intent)
        _commit(registry, names, intent)
        _finish(registry, names, intent)
        return f"completed the interrupted {label}"
    _undo(registry, names, intent)
    return f"undid the interrupted {label}: a version it names no longer exists"


def _in_progress(intent: Mapping[str, Any]) -> bool:
    """Whether the process that wrote ``intent`` is still at it (then it is not ours to finish)."""
    tags = intent.get("process") or {}
    if process.PID_TAG not in tags or tags.get(process.HOST_TAG) != process.this_host():
        return False
    pid = int(tags[process.PID_TAG])
    started = float(tags[process.STARTED_TAG]) if process.STARTED_TAG in tags else None
    return pid != os.getpid() and process.alive(pid, started)


def _undo(registry: ModuleType, names: Mapping[str, str], intent: Mapping[str, Any]) -> None:
    client = registry.client()
    for kind, before in intent["aliases_before"].items():
        name = names[kind]
        now = _aliases(registry, name)
        for alias in _ALIASES:
            version = before.get(alias)
            if version is None and alias in now:
                client.delete_registered_model_alias(name, alias)
            elif version is not None and now.get(alias) != version:
                client.set_registered_model_alias(name, alias, str(version))
    client.delete_registered_model_tag(names["primary"], INTENT_TAG)


# --------------------------------------------------------------------------------------------


def _tags(registry: ModuleType, name: str) -> dict[str, str] | None:
    # MLflow loads only when a registry is read (this module is imported by the commands).
    from mlflow.exceptions import MlflowException

    try:
        return dict(registry.client().get_registered_model(name).tags)
    except MlflowException:
        return None


def _aliases(registry: ModuleType, name: str) -> dict[str, int]:
    # MLflow loads only when a registry is read (this module is imported by the commands).
    from mlflow.exceptions import MlflowException

    try:
        aliases = registry.client().get_registered_model(name).aliases
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in aliases.items()}


def _version_exists(registry: ModuleType, name: str, version: int) -> bool:
    # MLflow loads only when a registry is read (this module is imported by the commands).
    from mlflow.exceptions import MlflowException

    try:
        registry.client().get_model_version(name, str(version))
    except MlflowException:
        return False
    return True


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
