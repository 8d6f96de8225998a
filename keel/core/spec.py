"""The types a use case is made of: tables, their contracts, the model and the calendar.

A deployment describes its data in one configuration module (``KEEL_USECASE``); the framework
reads nothing about the domain from anywhere else.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pandera.pandas as pa

from keel.core.policies import GateThresholds  # noqa: F401 (a use case builds its tables with it)
from keel.core.settings import PROJECT_ROOT

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


# What people and tools write for "no value". A field holding one of these (any case,
# surrounding spaces aside) that its column's contract does not accept as a null spelling is
# quarantined: it is neither read as a null behind the contract's back nor kept as a value.
NULL_LOOKALIKES = (
    "na", "n/a", "nan", "-nan", "null", "none", "nil", "<na>", "#n/a", "#n/a n/a", "#na",
    "1.#ind", "-1.#ind", "1.#qnan", "-1.#qnan",
)


@dataclass(frozen=True)
class NullSpellings:
    """How a table's files write a null, per kind of column; every other field is a value.

    A spelling is the whole field, surrounding spaces aside, quoted or not. ``""`` stands for
    an empty field without quotes: a quoted empty field (``""``) is always the empty string.
    The default reads an empty field as null in number, time-stamp and boolean columns and
    has no null spelling for text, where an empty field could as well be a value.
    """

    typed: tuple[str, ...] = ("",)  # columns whose contract type is not text
    text: tuple[str, ...] = ()
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per column, overrides

    def for_column(self, column: str, is_text: bool) -> tuple[str, ...]:
        if column in self.columns:
            return tuple(self.columns[column])
        return self.text if is_text else self.typed


@dataclass(frozen=True)
class TableSpec:
    """One table that lands in the landing zone, with its data contract."""

    name: str
    description: str
    schema: pa.DataFrameSchema
    key: tuple[str, ...]
    partitioned: bool
    # SQL conditions, over the landed columns, under which a null is expected rather than
    # missing data (a cancelled order has no delivery time). Gates count the other nulls.
    null_when: Mapping[str, str] = field(default_factory=dict)
    gates: GateThresholds = field(default_factory=GateThresholds)
    null_spellings: NullSpellings = field(default_factory=NullSpellings)
    # The upstream files' header names for contract columns, where they differ (file name ->
    # contract column): a file writing ``DateTime`` lands as the contract's ``date_time``.
    # Contract columns, which the warehouse and the dbt models read, are lower-case snake case.
    file_columns: Mapping[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.columns)

    def contract_column(self, header_name: str) -> str:
        """The contract column a file header names (itself when it is not renamed)."""
        return self.file_columns.get(header_name, header_name)

    def file_column(self, column: str) -> str:
        """The header name the upstream files use for contract column ``column``."""
        for header_name, contract in self.file_columns.items():
            if contract == column:
                return header_name
        return column

    def duckdb_type(self, column: str) -> str:
        dtype = str(self.schema.columns[column].dtype)
        try:
            return _DUCKDB_TYPES[dtype]
        except KeyError as exc:
            raise ValueError(
                f"{self.name}.{column}: dtype {dtype} has no DuckDB mapping; "
                f"use one of {sorted(_DUCKDB_TYPES)}"
            ) from exc

    def null_spellings_of(self, column: str) -> tuple[str, ...]:
        return self.null_spellings.for_column(column, self.duckdb_type(column) == "VARCHAR")

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


LABEL_NULLS = ("drop", "fail")


@dataclass(frozen=True)
class BusinessMetric:
    """What the model's decisions are worth, at the operating threshold, in the use case's
    own unit: each served prediction is a decision (flag it or not), and each outcome of that
    decision has a configured value (a gain, positive) or cost (a loss, positive, subtracted).

    ``value(tp, fp, fn, tn)`` is the net value of a set of decisions. The costs are the use
    case's assumptions; they are written beside it in its configuration module, so that a
    reader of a dashboard can tell what a number means. A cost of zero says the outcome
    costs nothing beyond what would have happened without the model.
    """

    name: str  # e.g. "net value of disruption alerts"
    unit: str  # e.g. "USD"
    true_positive: float  # value of a positive flagged in time
    false_positive: float  # cost of a false alarm
    false_negative: float = 0.0  # cost of a positive missed
    true_negative: float = 0.0  # value of a negative left alone

    def __post_init__(self) -> None:
        for name in ("true_positive", "false_positive", "false_negative", "true_negative"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"BusinessMetric.{name} must be a finite number, got {value!r}")
        if self.false_positive < 0 or self.false_negative < 0:
            raise ValueError("BusinessMetric costs are positive numbers (they are subtracted)")

    def value(self, tp: int, fp: int, fn: int, tn: int) -> float:
        """The net value of ``tp`` true positives, ``fp`` false alarms, ``fn`` misses and ``tn``
        true negatives."""
        return float(tp * self.true_positive + tn * self.true_negative
                     - fp * self.false_positive - fn * self.false_negative)


@dataclass(frozen=True)
class ModelSpec:
    """What the models learn from: the feature mart, its label and the columns they use.

    ``baseline_feature`` is a column that is already a probability of the label (for example
    an entity's trailing rate of the label); the business-rule baseline predicts it directly.
    """

    features_relation: str  # e.g. "marts.order_features" (schema.table in the warehouse)
    labels_relation: str  # e.g. "marts.order_labels"
    key: str  # one row per prediction target, e.g. "order_id"
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
    # Label corrections and human labels with the interval each is in effect (columns: ``key``,
    # ``label``, ``feedback_id``, ``valid_from``, ``valid_to``), built by the use case's dbt
    # models from ``feedback.label_corrections``; training applies the correction in effect at
    # its feedback as-of time. None: the deployment takes no feedback.
    corrections_relation: str | None = None
    # A null label is an outcome not known (yet): "drop" leaves such rows out of training and
    # of performance while they are still scored and drift-monitored; "fail" makes training
    # stop on the first one, for a use case whose labels are never unknown.
    label_nulls: str = "drop"
    # A timestamp column of labels_relation (naive UTC, as the warehouse stores time) saying
    # when each row's label was known: served performance is read by label maturity from it.
    # None: a label is taken to be known at the end of its row's date (date_column + 1 day).
    label_resolved_column: str | None = None
    # The business metric served_outcomes computes beside the model metrics; None: none.
    business: BusinessMetric | None = None

    def __post_init__(self) -> None:
        if self.label_nulls not in LABEL_NULLS:
            raise ValueError(f"label_nulls must be one of {LABEL_NULLS}, got {self.label_nulls!r}")


@dataclass(frozen=True)
class ServingSpec:
    """What the real-time API of a deployment serves, and from what.

    A request carries ``request_columns`` of the table ``request_table`` (typed by its
    contract); ``features(store, requests)`` turns requests (dicts of those columns, time
    stamps as ``datetime``) into the model's feature records (dicts of ``ModelSpec.key`` and
    every feature), without pandas: it runs once per request. The store ``load_store(path)`` builds
    out of an online snapshot: a DuckDB file holding the warehouse's ``snapshot_schema``.
    Events of ``event_tables`` are validated against those tables' contracts and handed, as
    typed rows, to ``apply_events(store, table, rows)``, which updates the live features.
    """

    request_table: str
    request_columns: tuple[str, ...]
    load_store: Callable[[Path], Any]
    features: Callable[[Any, list[dict]], list[dict]]
    snapshot_schema: str = "online"
    event_tables: tuple[str, ...] = ()
    # Returns the latest moment the rows tell of (ISO 8601, UTC), the features' new as-of time.
    apply_events: Callable[[Any, str, pd.DataFrame], str | None] | None = None
    # One day as live traffic for ``keel replay --live``: (use case, day) -> items
    # (at: epoch seconds UTC or -inf, order at ties, event table or "" for a request, JSON row).
    live_plan: Callable[[Any, dt.date], list[tuple[float, int, str, dict]]] | None = None


@dataclass(frozen=True)
class UseCase:
    """A deployment: its tables, calendar and replay source.

    The calendar runs from ``start`` to ``end``; with ``end=None`` it is open-ended: its days
    run up to today in the use case's ``timezone`` (:meth:`last_day`), and a new day joins it
    at each local midnight. ``source`` is the replay source ``keel replay`` plays the upstream
    system from; None: the upstream system writes the landing zone itself, and ``keel run``
    ingests what is there without landing anything.
    """

    name: str
    tables: tuple[TableSpec, ...]
    start: dt.date
    end: dt.date | None
    timezone: str
    # Replay source: the full history of a table as a DataFrame with the upstream files' column
    # names (None: no replay source), and each row's local date from a frame with the
    # contract's column names.
    source: Callable[[str], pd.DataFrame] | None
    row_date: Callable[[str, pd.DataFrame], pd.Series]
    # Which columns ``keel replay --fault`` damages, one plan per daily table that has drills
    # (the first is ``--fault-table``'s default); None: the use case has no fault drills.
    faults: FaultPlan | tuple[FaultPlan, ...] | None = None
    # Recomputes a sample of each given day's feature rows through the online path and
    # returns {day: (rows compared, DataFrame of differing values)}; None when the deployment
    # serves no online features. Signature: (warehouse path, days, sample size) -> dict.
    feature_skew: Callable[..., dict] | None = None
    model: ModelSpec | None = None
    # The use case's own defaults for the deployment, in keel.toml's shape (for example
    # {"retraining": {"training_days": 56}}); keel.toml and the environment override them.
    deployment: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    serving: ServingSpec | None = None
    # The use case's dbt project: its staging models, features and labels. It reads the
    # framework's generic macros and tests (keel/dbt) through its macro-paths and test-paths.
    dbt_project: Path = PROJECT_ROOT / "dbt_project"

    @property
    def fault_plans(self) -> tuple[FaultPlan, ...]:
        if self.faults is None:
            return ()
        return (self.faults,) if isinstance(self.faults, FaultPlan) else tuple(self.faults)

    def fault_plan(self, table: str) -> FaultPlan | None:
        """The fault plan of ``table``, or None when it has none."""
        return next((plan for plan in self.fault_plans if plan.table == table), None)

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

    @property
    def open_ended(self) -> bool:
        return self.end is None

    def today(self) -> dt.date:
        """Today's date in the use case's time zone."""
        return dt.datetime.now(ZoneInfo(self.timezone)).date()

    def last_day(self) -> dt.date:
        """The calendar's last day: ``end``, or today (local) when the calendar is open-ended."""
        return self.end if self.end is not None else self.today()

    def calendar_text(self) -> str:
        """``2014-01-01..2014-12-31``, or ``2014-01-01..today (2026-12-02)`` when open-ended."""
        last = self.end.isoformat() if self.end is not None else f"today ({self.today()})"
        return f"{self.start}..{last}"

    def days(self, start: dt.date | None = None, end: dt.date | None = None) -> list[dt.date]:
        final = self.last_day()
        first, last = start or self.start, end or final
        if first < self.start or first > final or last > final:
            raise ValueError(f"days {first}..{last} are outside {self.name}'s calendar {self.calendar_text()}")
        if first > last:
            raise ValueError(f"the end date {last} is before the start date {first}")
        return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
