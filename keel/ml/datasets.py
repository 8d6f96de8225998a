"""The frames models learn from and score: features joined with labels, read from the warehouse.

A *training set* is every labelled row of the feature mart in a window of days, cut in time
(train on the past, validate on the following weeks, test on the most recent ones) with
``keel.ml.split.time_split``. It is written once per training run as Parquet under
``KEEL_HOME/models/training_set/`` so that the three models and the evaluation read the
warehouse once, and it is rebuilt from the warehouse, for the same window, by ``keel
reproduce``.

Relations and columns come from the deployment's ``ModelSpec`` and are quoted with
``keel.core.warehouse.ident``; values are bound parameters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from keel.ml.split import Split, time_split, training_set_hash
from keel.core.spec import ModelSpec
from keel.core.warehouse import ident, relation, table_exists

LABEL_CORRUPTIONS = ("none", "shuffle", "invert")
"""Drills for the promotion gates: the training and validation labels are shuffled or
inverted (never the test labels), and the gates must block the model that learns from them."""

FRAME_FILE = "training_set.parquet"
META_FILE = "training_set.json"
MIN_TRAIN_DAYS = 14
LATEST_FEEDBACK = object()
"""``build_training_set``'s default: apply every label correction in the warehouse."""


def with_derived(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """``frame`` with the spec's derived reporting columns (slices) added."""
    if not spec.derived:
        return frame
    return frame.assign(**{name: derive(frame) for name, derive in spec.derived.items()})


def _has_corrections(con: duckdb.DuckDBPyConnection, spec: ModelSpec) -> bool:
    if spec.corrections_relation is None:
        return False
    schema, table = spec.corrections_relation.split(".")
    return table_exists(con, schema, table)


def latest_feedback(con: duckdb.DuckDBPyConnection, spec: ModelSpec) -> str | None:
    """The moment of the latest label correction in the warehouse (ISO 8601, naive UTC): a
    training run applies every correction received by then, and records it so that
    ``keel reproduce`` applies the same ones. None when there is no correction."""
    if not _has_corrections(con, spec):
        return None
    (latest,) = con.execute(f"select max(valid_from) from {relation(spec.corrections_relation)}").fetchone()
    return None if latest is None else pd.Timestamp(latest).isoformat()


def labels_sql(spec: ModelSpec, as_of: str | None, columns: tuple[str, ...] = ()) -> tuple[str, list]:
    """A relation of (key, label, feedback_id, corrected_at, *columns): the upstream labels,
    with the correction in effect at ``as_of`` applied (None: upstream labels only), and its
    bound parameters. ``columns`` are further columns of the labels relation, as upstream
    wrote them; ``corrected_at`` is when the correction in effect was received (else null)."""
    key, label = ident(spec.key), ident(spec.label)
    labels = relation(spec.labels_relation)
    extra = "".join(f", labels.{ident(column)}" for column in columns)
    if as_of is None or spec.corrections_relation is None:
        return (f"(select labels.{key}, labels.{label}, cast(null as varchar) as feedback_id, "
                f"cast(null as timestamp) as corrected_at{extra} from {labels} as labels)", [])
    corrections = relation(spec.corrections_relation)
    return (
        f"(select labels.{key}, coalesce(c.{label}, labels.{label}) as {label}, c.feedback_id, "
        f"cast(c.valid_from as timestamp) as corrected_at{extra} "
        f"from {labels} as labels left join {corrections} as c on c.{key} = labels.{key} "
        f"and c.valid_from <= cast(? as timestamp) and (c.valid_to is null or c.valid_to > cast(? as timestamp)))",
        [as_of, as_of],
    )


def labels_in_effect(con: duckdb.DuckDBPyConnection, spec: ModelSpec, as_of: str | None) -> pd.DataFrame:
    """Every row of the label relation with the label training applies at ``as_of`` and the
    feedback id of the correction in effect (null: upstream's label). At the latest feedback
    this is what the use case's dbt relation of labels with provenance holds: both read the
    intervals of ``corrections_relation``, where the rule for several corrections of one key
    is defined once. Columns: key, label, feedback_id."""
    labels, params = labels_sql(spec, as_of)
    key = ident(spec.key)
    return con.execute(f"select {key}, {ident(spec.label)}, feedback_id from {labels} order by {key}",
                       params).df()


def labelled_frame(
    con: duckdb.DuckDBPyConnection, spec: ModelSpec, start: dt.date | None, end: dt.date | None,
    feedback_as_of: str | None = None,
) -> pd.DataFrame:
    """Feature rows that have a label, between ``start`` and ``end`` (None: unbounded), with
    the label as 0/1 and the derived columns; the label corrections in effect at
    ``feedback_as_of`` replace the upstream labels they correct (None: none do). A row whose
    label is null (an outcome not known) is left out under ``label_nulls="drop"`` and stops
    training under ``"fail"``."""
    date, key, label = ident(spec.date_column), ident(spec.key), ident(spec.label)
    labels, params = labels_sql(spec, feedback_as_of)
    frame = con.execute(
        f"select features.*, cast(labels.{label} as integer) as {label} "
        f"from {relation(spec.features_relation)} as features "
        f"join {labels} as labels on labels.{key} = features.{key} "
        f"where (cast(? as date) is null or features.{date} >= ?) "
        f"and (cast(? as date) is null or features.{date} <= ?) "
        f"order by features.{date}, features.{key}",
        [*params, start, start, end, end],
    ).df()
    unknown = frame[spec.label].isna()
    if unknown.any():
        if spec.label_nulls == "fail":
            first = frame.loc[unknown, spec.key].iloc[0]
            raise ValueError(
                f"{int(unknown.sum())} row(s) of {spec.labels_relation} have a null {spec.label} "
                f"(first: {spec.key} {first}); the use case's label_nulls is 'fail'"
            )
        frame = frame[~unknown].reset_index(drop=True)
    frame[spec.label] = frame[spec.label].astype("int32")
    return with_derived(frame, spec)


def corrected_labels(
    con: duckdb.DuckDBPyConnection, spec: ModelSpec, start: dt.date | None, end: dt.date | None,
    feedback_as_of: str | None,
) -> int:
    """How many labelled feature rows of ``start..end`` carry a correction at ``feedback_as_of``."""
    if feedback_as_of is None or not _has_corrections(con, spec):
        return 0
    date, key = ident(spec.date_column), ident(spec.key)
    labels, params = labels_sql(spec, feedback_as_of)
    (n,) = con.execute(
        f"select count(*) from {relation(spec.features_relation)} as features "
        f"join {labels} as labels on labels.{key} = features.{key} "
        f"where labels.feedback_id is not null "
        f"and (cast(? as date) is null or features.{date} >= ?) and (cast(? as date) is null or features.{date} <= ?)",
        [*params, start, start, end, end],
    ).fetchone()
    return int(n)


def feature_rows(con: duckdb.DuckDBPyConnection, spec: ModelSpec, first: dt.date, last: dt.date) -> pd.DataFrame:
    """The feature mart's rows (the prediction targets) of ``first..last``, for scoring."""
    date, key = ident(spec.date_column), ident(spec.key)
    frame = con.execute(
        f"select * from {relation(spec.features_relation)} where {date} between ? and ? order by {date}, {key}",
        [first, last],
    ).df()
    return with_derived(frame, spec)


def labelled_days(con: duckdb.DuckDBPyConnection, spec: ModelSpec, start: dt.date, end: dt.date) -> int:
    """How many days of ``start..end`` have labelled feature rows."""
    date, key = ident(spec.date_column), ident(spec.key)
    (days,) = con.execute(
        f"select count(distinct features.{date}) from {relation(spec.features_relation)} as features "
        f"join {relation(spec.labels_relation)} as labels on labels.{key} = features.{key} "
        f"where features.{date} between ? and ? and labels.{ident(spec.label)} is not null",
        [start, end],
    ).fetchone()
    return int(days)


def split_weeks(days: int, most: int = 4) -> int | None:
    """Weeks of validation and of test data for a window of ``days`` labelled days: four
    each on a long window, fewer on a short one so that at least half the days train;
    None when the window is too short to train at all."""
    weeks = min(most, days // 28)
    if weeks < 1 or days - 14 * weeks < MIN_TRAIN_DAYS:
        return None
    return weeks


def corrupt_labels(split: Split, spec: ModelSpec, mode: str, seed: int = 13) -> Split:
    """``split`` with the train and validation labels shuffled or inverted (see
    ``LABEL_CORRUPTIONS``); the test labels stay true, so the evaluation sees the damage."""
    if mode not in LABEL_CORRUPTIONS:
        raise ValueError(f"label corruption must be one of {LABEL_CORRUPTIONS}, got {mode!r}")
    if mode == "none":
        return split
    rng = np.random.default_rng(seed)

    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        labels = frame[spec.label].to_numpy()
        changed = 1 - labels if mode == "invert" else rng.permutation(labels)
        return frame.assign(**{spec.label: changed})

    train, valid = corrupt(split.train), corrupt(split.valid)
    positives = dict(split.positives, train=int(train[spec.label].sum()), valid=int(valid[spec.label].sum()))
    return dataclasses.replace(split, train=train, valid=valid, positives=positives)


@dataclass
class TrainingSet:
    """A labelled frame and its description (``meta``): window, split weeks, row counts,
    label corruption and the hash of the rows models are fitted on."""

    frame: pd.DataFrame
    meta: dict[str, Any]

    def split(self, spec: ModelSpec) -> Split:
        """The time split every model of this training set uses, labels corrupted as the
        training set says."""
        split = time_split(self.frame, spec, valid_weeks=self.meta["valid_weeks"], test_weeks=self.meta["test_weeks"])
        return corrupt_labels(split, spec, self.meta["label_corruption"])

    def save(self, directory: Path) -> Path:
        """Write the frame (Parquet) and ``meta`` (JSON) into ``directory``, replacing the
        previous training set only once both are complete."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        frame_tmp, meta_tmp = directory / f".{FRAME_FILE}.tmp", directory / f".{META_FILE}.tmp"
        self.frame.to_parquet(frame_tmp, index=False)
        meta_tmp.write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        os.replace(frame_tmp, directory / FRAME_FILE)
        os.replace(meta_tmp, directory / META_FILE)
        return directory / FRAME_FILE

    @classmethod
    def load(cls, directory: Path) -> TrainingSet:
        directory = Path(directory)
        if not (directory / META_FILE).exists():
            raise FileNotFoundError(
                f"no training set in {directory}: materialize models/training_set first"
            )
        meta = json.loads((directory / META_FILE).read_text())
        return cls(pd.read_parquet(directory / FRAME_FILE), meta)


def build_training_set(
    con: duckdb.DuckDBPyConnection,
    spec: ModelSpec,
    start: dt.date | None,
    end: dt.date | None,
    *,
    valid_weeks: int,
    test_weeks: int,
    label_corruption: str = "none",
    feedback_as_of: str | None | object = LATEST_FEEDBACK,
) -> TrainingSet:
    """Read ``start..end`` (None: every labelled day) and describe it. Raises ValueError when
    the window holds no labelled rows or is too short for the split.

    Labels are corrected by the feedback in effect at ``feedback_as_of``: by default every
    correction in the warehouse (a new training run), or the moment a model's lineage
    recorded (``keel reproduce``), or None for none (a model trained before feedback existed)."""
    if label_corruption not in LABEL_CORRUPTIONS:
        raise ValueError(f"label corruption must be one of {LABEL_CORRUPTIONS}, got {label_corruption!r}")
    if feedback_as_of is LATEST_FEEDBACK:
        feedback_as_of = latest_feedback(con, spec)
    frame = labelled_frame(con, spec, start, end, feedback_as_of)
    if frame.empty:
        raise ValueError(f"no labelled rows in {relation(spec.features_relation)} for {start or '...'}..{end or '...'}")
    days = pd.to_datetime(frame[spec.date_column]).dt.date
    first, last = days.min(), days.max()
    meta = {
        "window": {"start": (start or first).isoformat(), "end": (end or last).isoformat()},
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "days": int(days.nunique()),
        "rows": len(frame),
        "positives": int(frame[spec.label].sum()),
        "valid_weeks": valid_weeks,
        "test_weeks": test_weeks,
        "label_corruption": label_corruption,
        "features_relation": spec.features_relation,
        "labels_relation": spec.labels_relation,
        "frame_sha256": training_set_hash(frame, spec),
        "feedback": {"as_of": feedback_as_of,
                     "labels_corrected": corrected_labels(con, spec, start, end, feedback_as_of)},
    }
    training_set = TrainingSet(frame, meta)
    split = training_set.split(spec)
    meta["split"] = split.summary()
    meta["training_set_hash"] = training_set_hash(split.train, spec)
    return training_set


def training_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What ``build_training_set`` needs to read the same training set again."""
    return {
        "start": meta["window"]["start"],
        "end": meta["window"]["end"],
        "valid_weeks": meta["valid_weeks"],
        "test_weeks": meta["test_weeks"],
        "label_corruption": meta["label_corruption"],
        # None for a training set built before feedback existed: no corrections applied.
        "feedback_as_of": (meta.get("feedback") or {}).get("as_of"),
    }
