"""The types a Keel configuration is made of: tables, their contracts and gate thresholds.

A deployment describes its data in one configuration module (``KEEL_USECASE``); the framework
reads nothing about the domain from anywhere else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
import pandera.pandas as pa

# The DuckDB type each pandera dtype is cast to when a landed (text) value is validated.
_DUCKDB_TYPES = {
    "Int64": "BIGINT",
    "Int32": "INTEGER",
    "Float64": "DOUBLE",
    "float64": "DOUBLE",
    "string": "VARCHAR",
    "string[python]": "VARCHAR",
    "string[pyarrow]": "VARCHAR",
    "str": "VARCHAR",
    "datetime64[ns]": "TIMESTAMP",
    "bool": "BOOLEAN",
    "boolean": "BOOLEAN",
}


@dataclass(frozen=True)
class GateThresholds:
    """Thresholds of the blocking gates. Each evaluation reports the values it used."""

    max_quarantine_rate: float = 0.02
    # Volume against the median of the same weekday over the previous weeks.
    volume_min_ratio: float = 0.5
    volume_max_ratio: float = 2.0
    volume_weeks: int = 8
    volume_min_history: int = 3
    # Unexplained null rate of a column against its median over the previous days.
    null_rate_max_increase: float = 0.2
    null_rate_window_days: int = 28
    null_rate_min_history: int = 3
    # Columns whose null rate is not gated (value None) or gated with their own tolerance.
    null_rate_overrides: Mapping[str, float | None] = field(default_factory=dict)
    # Share of non-empty values that fail to cast before a column counts as changed type.
    type_change_share: float = 0.5
    # A snapshot (unpartitioned) table may not shrink below this share of its previous load.
    snapshot_min_ratio: float = 0.5


@dataclass(frozen=True)
class TableSpec:
    """One table that lands in the landing zone, with its data contract."""

    name: str
    description: str
    schema: pa.DataFrameSchema
    key: tuple[str, ...]
    partitioned: bool
    # SQL conditions, over the landed columns, under which a null is expected rather than
    # missing data (a cancelled flight has no departure time). Gates count the other nulls.
    null_when: Mapping[str, str] = field(default_factory=dict)
    gates: GateThresholds = field(default_factory=GateThresholds)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.columns)

    def duckdb_type(self, column: str) -> str:
        dtype = str(self.schema.columns[column].dtype)
        try:
            return _DUCKDB_TYPES[dtype]
        except KeyError as exc:
            raise ValueError(
                f"{self.name}.{column}: dtype {dtype} has no DuckDB mapping; "
                f"use one of {sorted(_DUCKDB_TYPES)}"
            ) from exc

    def text_columns(self) -> list[str]:
        return [c for c in self.columns if self.duckdb_type(c) == "VARCHAR"]

    def numeric_columns(self) -> list[str]:
        return [c for c in self.columns if self.duckdb_type(c) in ("BIGINT", "INTEGER", "DOUBLE")]


@dataclass(frozen=True)
class FaultPlan:
    """Which columns the replayed upstream faults touch, for this deployment's tables."""

    table: str
    rename: tuple[str, str]
    missing: str
    numeric_as_text: str
    text_format: str  # str.format pattern for a number sent as text, e.g. "{:,} mi"
    null_spike: str
    out_of_range: Callable[[pd.DataFrame, "pd.Series"], pd.DataFrame]


@dataclass(frozen=True)
class ModelSpec:
    """What the models learn from: the feature mart, its label and the columns they use.

    ``baseline_feature`` is a column that is already a probability of the label (for flights,
    the route's trailing disruption rate); the business-rule baseline predicts it directly.
    """

    features_relation: str  # e.g. "marts.flight_features" (schema.table in the warehouse)
    labels_relation: str  # e.g. "marts.flight_labels"
    key: str  # one row per prediction target, e.g. "flight_id"
    date_column: str  # the local date the prediction is for; drives time-based splits
    label: str  # binary label column in labels_relation
    features: tuple[str, ...]
    categorical: tuple[str, ...]  # subset of features, integer-coded before training
    fallback_features: tuple[str, ...]  # a few robust features for the fallback model
    baseline_feature: str
    slices: tuple[str, ...]  # columns of the feature mart (or of ``derived``) to report metrics per value
    # Reporting columns computed from the mart's columns (e.g. a departure-hour band from
    # the scheduled hour): name -> function of the frame. Never model inputs.
    derived: Mapping[str, Callable[[pd.DataFrame], pd.Series]] = field(default_factory=dict)


@dataclass(frozen=True)
class UseCase:
    """A deployment: its tables, calendar and replay source."""

    name: str
    tables: tuple[TableSpec, ...]
    start: dt.date
    end: dt.date
    timezone: str
    # Replay source: the full history of a table as a DataFrame, and each row's local date.
    source: Callable[[str], pd.DataFrame]
    row_date: Callable[[str, pd.DataFrame], pd.Series]
    faults: FaultPlan
    # Recomputes a sample of each given day's feature rows through the online path and
    # returns {day: (rows compared, DataFrame of differing values)}; None when the deployment
    # serves no online features. Signature: (warehouse path, days, sample size) -> dict.
    feature_skew: Callable[..., dict] | None = None
    model: ModelSpec | None = None

    def table(self, name: str) -> TableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        raise KeyError(f"no table {name!r}; tables are {[t.name for t in self.tables]}")

    @property
    def partitioned_tables(self) -> list[TableSpec]:
        return [t for t in self.tables if t.partitioned]

    @property
    def snapshot_tables(self) -> list[TableSpec]:
        return [t for t in self.tables if not t.partitioned]

    def days(self, start: dt.date | None = None, end: dt.date | None = None) -> list[dt.date]:
        first, last = start or self.start, end or self.end
        if first < self.start or last > self.end or first > last:
            raise ValueError(
                f"days {first}..{last} are outside {self.name}'s calendar {self.start}..{self.end}"
            )
        return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
