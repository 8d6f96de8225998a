"""The rollout record, read: the ``keel.rollout`` tag on the primary registered model.

The record is written by the staged promotion (issue 14, section 1 of its contract): one
MLflow write of a JSON document naming the candidate set, the stage (``shadow``, ``canary``,
``champion`` or ``aborted``), the canary share and step, and when and by whom. Serving and
batch scoring only read it: a rollout is active while its stage is ``shadow`` or ``canary``,
and then the candidate set is loaded beside the champion set. Readers use the tag only,
never the ``shadow`` / ``canary`` aliases, which exist for the MLflow UI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

ROLLOUT_TAG = "keel.rollout"
STAGES = ("shadow", "canary", "champion", "aborted")
ACTIVE_STAGES = ("shadow", "canary")


@dataclass(frozen=True)
class Rollout:
    id: str
    set: Mapping[str, int] = field(default_factory=dict)  # kind -> candidate version
    stage: str = "shadow"
    share: float = 0.0
    step: int = -1
    started_at: str = ""
    stage_since: str = ""
    by: str = ""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"rollout stage must be one of {STAGES}, got {self.stage!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"rollout share must be in [0, 1], got {self.share!r}")

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE_STAGES

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "set": dict(self.set), "stage": self.stage, "share": self.share,
                "step": self.step, "started_at": self.started_at, "stage_since": self.stage_since,
                "by": self.by}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Rollout:
        return cls(id=str(doc["id"]), set={k: int(v) for k, v in doc["set"].items()},
                   stage=doc["stage"], share=float(doc.get("share", 0.0)), step=int(doc.get("step", -1)),
                   started_at=doc.get("started_at", ""), stage_since=doc.get("stage_since", ""),
                   by=doc.get("by", ""))


def rollout_record(registry: ModuleType, names: Mapping[str, str]) -> Rollout | None:
    """The last rollout recorded (any stage); None when there never was one."""
    # MLflow loads only when a registry is read (this module is imported by the server).
    from mlflow.exceptions import MlflowException

    try:
        tags = registry.client().get_registered_model(names["primary"]).tags
    except MlflowException:
        return None
    text = tags.get(ROLLOUT_TAG)
    return None if not text else Rollout.from_dict(json.loads(text))


def active_rollout(registry: ModuleType, names: Mapping[str, str]) -> Rollout | None:
    """The rollout in ``shadow`` or ``canary``, if one is; else None."""
    record = rollout_record(registry, names)
    return record if record is not None and record.active else None


def write_rollout(registry: ModuleType, names: Mapping[str, str], rollout: Rollout) -> None:
    """Record ``rollout`` as the tag (one MLflow write)."""
    registry.client().set_registered_model_tag(names["primary"], ROLLOUT_TAG, json.dumps(rollout.to_dict()))


def candidate_loader(registry: ModuleType, names: Mapping[str, str], rollout: Rollout):
    """``load(registered name) -> (version, model)`` of the rollout's candidate set, for
    ``keel.ml.scoring.load_tiers``."""
    kinds = {name: kind for kind, name in names.items()}

    def load(name: str):
        version = rollout.set.get(kinds[name])
        if version is None:
            raise LookupError(f"{name} is not in the candidate set of rollout {rollout.id}")
        return version, registry.load(name, version)

    return load
