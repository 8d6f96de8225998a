"""The frames models learn from and score: features joined with labels, read from the warehouse.

A *training set* is every labelled row of the feature mart in a window of days, cut in time
(train on the past, validate on the following weeks, test on the most recent ones) with
``keel.modeling.time_split``. It is written once per training run as Parquet under
``KEEL_HOME/models/training_set/`` so that the three models and the evaluation read the
warehouse once, and it is rebuilt from the warehouse, for the same window, by ``keel
reproduce``.

Relations and columns come from the deployment's ``ModelSpec`` and are quoted with
``keel.warehouse.ident``; values are bound parameters.
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

from keel.modeling import Split, time_split, training_set_hash
from keel.spec import ModelSpec
from keel.warehouse import ident

LABEL_CORRUPTIONS = ("none", "shuffle", "invert")
"""Drills for the promotion gates: the training and validation labels are shuffled or
inverted (never the test labels), and the gates must block the model that learns from them."""

FRAME_FILE = "training_set.parquet"
META_FILE = "training_set.json"
MIN_TRAIN_DAYS = 14


def relation(name: str) -> str:
    """``schema.table`` of the configuration, quoted."""
    return ".".join(ident(part) for part in name.split("."))


def with_derived(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """``frame`` with the spec's derived reporting columns (slices) added."""
    if not spec.derived:
        return frame
    return frame.assign(**{name: derive(frame) for name, derive in spec.derived.items()})


def labelled_frame(
    con: duckdb.DuckDBPyConnection, spec: ModelSpec, start: dt.date | None, end: dt.date | None
) -> pd.DataFrame:
    """Feature rows that have a label, between ``start`` and ``end`` (None: unbounded), with
    the label as 0/1 and the derived columns."""
    date, key, label = ident(spec.date_column), ident(spec.key), ident(spec.label)
    frame = con.execute(
        f"select features.*, cast(labels.{label} as integer) as {label} "
        f"from {relation(spec.features_relation)} as features "
        f"join {relation(spec.labels_relation)} as labels on labels.{key} = features.{key} "
        f"where (cast(? as date) is null or features.{date} >= ?) "
        f"and (cast(? as date) is null or features.{date} <= ?) "
        f"order by features.{date}, features.{key}",
        [start, start, end, end],
    ).df()
    return with_derived(frame, spec)


def feature_rows(con: duckdb.DuckDBPyConnection, spec: ModelSpec, first: dt.date, last: dt.date) -> pd.DataFrame:
    """The feature mart's rows (scheduled flights) of ``first..last``, for scoring."""
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
        f"where features.{date} between ? and ?",
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
) -> TrainingSet:
    """Read ``start..end`` (None: every labelled day) and describe it. Raises ValueError when
    the window holds no labelled rows or is too short for the split."""
    if label_corruption not in LABEL_CORRUPTIONS:
        raise ValueError(f"label corruption must be one of {LABEL_CORRUPTIONS}, got {label_corruption!r}")
    frame = labelled_frame(con, spec, start, end)
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
    }
