"""Integer codes of categorical columns, fitted on the training set and stored as JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

ENCODER_FORMAT = 1


@dataclass
class CategoryEncoder:
    """Integer codes for categorical columns, fitted on the training set.

    Each column's codes are the positions of its training values in sorted order, so the same
    training values always give the same codes, whatever the row order. A value not seen in
    training becomes -1 and a missing value NaN; LightGBM treats both (negative and NaN
    categorical values) as missing. Columns with a numeric dtype are matched as numbers,
    all others as strings (``str(value)``), so a scoring frame must carry the same kind of
    values as the training frame.
    """

    columns: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {c: pd.Index(v["values"]) for c, v in self.columns.items()}
        self._lookup = {c: {value: i for i, value in enumerate(v["values"])} for c, v in self.columns.items()}

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str]) -> CategoryEncoder:
        fitted = {}
        for column in columns:
            kind = _value_kind(frame[column])
            present = _as_kind(frame[column], kind).dropna()
            values = sorted(set(present.tolist()))
            if kind == "number":
                values = [_json_number(v) for v in values]
            fitted[column] = {"kind": kind, "values": values}
        return cls(fitted)

    def transform(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Codes (float64, NaN for missing, -1 for unseen) of each fitted column of ``frame``."""
        codes = {}
        for column, fitted in self.columns.items():
            values = _as_kind(frame[column], fitted["kind"])
            column_codes = self._index[column].get_indexer(values).astype(np.float64)
            column_codes[values.isna().to_numpy()] = np.nan
            codes[column] = column_codes
        return codes

    def code(self, column: str, value: Any) -> float:
        """The code of one value (the single-row serving path, no pandas involved)."""
        if is_missing(value):
            return math.nan
        fitted = self.columns[column]
        key = _json_number(value) if fitted["kind"] == "number" else str(value)
        return float(self._lookup[column].get(key, -1))

    def to_dict(self) -> dict[str, Any]:
        return {"format": ENCODER_FORMAT, "columns": self.columns}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoryEncoder:
        if data.get("format") != ENCODER_FORMAT:
            raise ValueError(f"unsupported encoder format {data.get('format')!r}")
        return cls({c: {"kind": v["kind"], "values": list(v["values"])} for c, v in data["columns"].items()})


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _value_kind(values: pd.Series) -> str:
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return "number"
    return "string"


def _as_kind(values: pd.Series, kind: str) -> pd.Series:
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if kind == "number":
        return values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values).astype("float64")
    return values.astype(str).where(values.notna(), None)


def _json_number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number
