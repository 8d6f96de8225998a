"""Which arm of a rollout an entity is in: one deterministic hash, online and in batch.

The arm of a key is a function of the key and the rollout's id alone (the contract of issue
14, section 2): the first eight bytes of ``sha256(rollout_id \\x1f key)`` as a number in
[0, 1), canary below the share. So an entity (a key) gets the same arm in the API and in batch
scoring, in any process on any machine (Python's ``hash()`` is salted per process and is
never used), and the assignment is monotone in the share: a key that is canary at 5 % is
still canary at 25 %, so raising the share only moves champion keys to the canary.

Here in ``keel.ml`` (not the serving layer) because batch scoring assigns arms too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

CANARY, CHAMPION, SHADOW = "canary", "champion", "shadow"
_SCALE = float(2 ** 64)


def unit_of(key: str, rollout_id: str) -> float:
    """The key's position in [0, 1) for this rollout."""
    digest = hashlib.sha256(f"{rollout_id}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def arm_of(key: str, rollout_id: str, share: float) -> str:
    """``"canary"`` for the keys below ``share`` of this rollout, else ``"champion"``."""
    return CANARY if unit_of(str(key), rollout_id) < share else CHAMPION


def units_of(keys: Iterable, rollout_id: str) -> np.ndarray:
    """:func:`unit_of` of each key (as text), as a float64 array."""
    return np.fromiter((unit_of(str(k), rollout_id) for k in keys), dtype=np.float64)


def arms_of(keys: pd.Series, rollout_id: str, share: float) -> pd.Series:
    """:func:`arm_of` of every key of a Series (batch scoring), on the Series' index."""
    canary = units_of(keys.astype(str), rollout_id) < share
    return pd.Series(np.where(canary, CANARY, CHAMPION), index=keys.index, dtype=object)
