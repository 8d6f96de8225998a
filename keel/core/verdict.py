"""The verdict of one gate, a data gate or a promotion gate alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateResult:
    """Whether a gate passed, why in one sentence, and the figures it decided on."""

    name: str
    passed: bool
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)
