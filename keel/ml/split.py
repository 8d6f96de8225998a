"""The time split a model learns from, and the identity of the rows it learned from.

Both are contracts of ``keel reproduce``: each part is sorted by (date, key), so the
warehouse's row order never matters, and :func:`training_set_hash` gives the same digest for
the same rows in any order or dtype.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from keel.core.spec import ModelSpec


@dataclass(frozen=True, eq=False)
class Split:
    """Train, validation and test parts of one frame, cut by date.

    ``windows`` holds each part's first and last calendar day (inclusive), ``rows`` its row
    count and ``positives`` its label count. Each part is sorted by (date, key).
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    windows: dict[str, tuple[dt.date, dt.date]]
    rows: dict[str, int]
    positives: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """The split as JSON-ready values, for lineage and run metadata."""
        return {
            part: {
                "start": self.windows[part][0].isoformat(),
                "end": self.windows[part][1].isoformat(),
                "rows": self.rows[part],
                "positives": self.positives[part],
            }
            for part in ("train", "valid", "test")
        }


def _dates(values: pd.Series) -> pd.Series:
    """A date column (datetime.date objects or datetime64) as midnight timestamps."""
    return pd.to_datetime(values).dt.normalize()


def time_split(
    frame: pd.DataFrame, spec: ModelSpec, *, valid_weeks: int = 4, test_weeks: int = 4
) -> Split:
    """Cut ``frame`` by ``spec.date_column``: the most recent ``test_weeks`` weeks are the test
    set, the ``valid_weeks`` weeks before them the validation set, and everything earlier the
    training set. Weeks are counted back from the last date in the frame."""
    if valid_weeks < 1 or test_weeks < 1:
        raise ValueError(f"valid_weeks and test_weeks must be >= 1, got {valid_weeks}, {test_weeks}")
    require_columns(frame, [spec.key, spec.date_column, spec.label], "time_split")
    if frame[spec.key].duplicated().any():
        dupes = frame.loc[frame[spec.key].duplicated(), spec.key].head(3).tolist()
        raise ValueError(f"{spec.key} is not unique (e.g. {dupes}); one row per prediction target")
    dates = _dates(frame[spec.date_column])
    if dates.isna().any():
        raise ValueError(f"{int(dates.isna().sum())} rows have no {spec.date_column}")
    if frame.empty:
        raise ValueError("time_split: the frame is empty")

    first, last = dates.min(), dates.max()
    test_start = last - pd.Timedelta(days=7 * test_weeks - 1)
    valid_start = test_start - pd.Timedelta(days=7 * valid_weeks)
    masks = {
        "train": dates < valid_start,
        "valid": (dates >= valid_start) & (dates < test_start),
        "test": dates >= test_start,
    }
    windows = {
        "train": (first.date(), (valid_start - pd.Timedelta(days=1)).date()),
        "valid": (valid_start.date(), (test_start - pd.Timedelta(days=1)).date()),
        "test": (test_start.date(), last.date()),
    }
    parts = {}
    for part, mask in masks.items():
        if not mask.any():
            days = f"before {valid_start.date()}" if part == "train" else "{}..{}".format(*windows[part])
            raise ValueError(
                f"time_split: the {part} part ({days}) is empty; "
                f"the frame covers {first.date()}..{last.date()}, which is too short for "
                f"{valid_weeks} validation and {test_weeks} test weeks plus training data"
            )
        ordered = frame.loc[mask].assign(_keel_day=dates[mask])
        ordered = ordered.sort_values(["_keel_day", spec.key], kind="mergesort")
        parts[part] = ordered.drop(columns="_keel_day").reset_index(drop=True)
    return Split(
        train=parts["train"],
        valid=parts["valid"],
        test=parts["test"],
        windows=windows,
        rows={part: len(df) for part, df in parts.items()},
        positives={part: int(label_values(df, spec).sum()) for part, df in parts.items()},
    )


def training_set_hash(frame: pd.DataFrame, spec: ModelSpec) -> str:
    """sha256 of the rows a model is trained on (pass ``split.train``).

    Rows are sorted by ``spec.key`` and the columns taken in a fixed order (key, date,
    ``spec.features``, label). Values are hashed in a canonical form that does not depend
    on pandas internals: numbers as little-endian float64 (one NaN, no negative zero), dates
    as days, everything else as UTF-8 text with lengths. The same rows in any order, or with
    an int column read back as float, give the same hash.
    """
    columns = list(dict.fromkeys([spec.key, spec.date_column, *spec.features, spec.label]))
    require_columns(frame, columns, "training_set_hash")
    if frame[spec.key].duplicated().any():
        raise ValueError(f"training_set_hash: {spec.key} is not unique")
    ordered = frame[columns].sort_values(spec.key, kind="mergesort").reset_index(drop=True)
    digest = hashlib.sha256()
    digest.update(f"keel-training-set/v1 rows={len(ordered)}\n".encode())
    for column in columns:
        values = ordered[column]
        if column == spec.date_column:
            kind, payload = "date", _date_bytes(values)
        else:
            kind, payload = _canonical_bytes(values)
        digest.update(f"{len(column)}:{column}:{kind}:{len(payload)}\n".encode())
        digest.update(payload)
    return digest.hexdigest()


def _date_bytes(values: pd.Series) -> bytes:
    days = pd.to_datetime(values).dt.normalize()
    as_days = np.where(days.isna(), np.iinfo(np.int64).min, days.to_numpy("datetime64[D]").astype(np.int64))
    return as_days.astype("<i8").tobytes()


def _canonical_bytes(values: pd.Series) -> tuple[str, bytes]:
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan) + 0.0  # +0.0 drops -0.0
        numbers[np.isnan(numbers)] = np.nan
        return "number", numbers.astype("<f8").tobytes()
    missing = values.isna().to_numpy()
    encoded = [b"" if m else str(v).encode("utf-8") for v, m in zip(values.tolist(), missing)]
    lengths = np.array([-1 if m else len(e) for e, m in zip(encoded, missing)], dtype="<i8")
    return "text", lengths.tobytes() + b"".join(encoded)


def label_values(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    labels = frame[spec.label]
    if labels.isna().any():
        raise ValueError(f"{int(labels.isna().sum())} rows have no {spec.label}")
    values = labels.to_numpy(dtype=np.float64)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{spec.label} must be 0/1, found {sorted(set(values.tolist()) - {0.0, 1.0})[:5]}")
    return values


def require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: the frame lacks columns {missing}")
