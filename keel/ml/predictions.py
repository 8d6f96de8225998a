"""``serving.predictions``: the scores served, one row per prediction target and day.

The table is keyed by the model's own key and date columns (the ``ModelSpec``'s), then holds
the score, the tier and the model version that produced it. A run replaces its days in one
transaction. Kept apart from scoring so that readers of the table do not load LightGBM.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import duckdb
import pandas as pd

from keel.core.spec import ModelSpec
from keel.core.warehouse import ident, relation

# After the model's key and date columns (the ModelSpec's), every prediction row holds these.
PREDICTION_FIELDS = ("score", "tier", "model_name", "model_version", "scored_at")


def prediction_columns(key: str, date_column: str) -> tuple[str, ...]:
    """The columns of ``serving.predictions`` for a model keyed by ``key`` on ``date_column``."""
    return (key, date_column, *PREDICTION_FIELDS)


def serving_ddl(spec: ModelSpec) -> list[str]:
    """``serving.predictions``, keyed by the spec's key (as text) and date columns."""
    key, day = ident(spec.key), ident(spec.date_column)
    return [
        "create schema if not exists serving",
        f"""create table if not exists serving.predictions (
        {key} varchar, {day} date, score double, tier varchar, model_name varchar,
        model_version integer, scored_at timestamp)""",
    ]


def served_date_column(con: duckdb.DuckDBPyConnection) -> str:
    """The date column of an existing ``serving.predictions`` (its second column, see
    :func:`prediction_columns`), for readers that know the table but not the model."""
    (name,) = con.execute(
        "select column_name from information_schema.columns "
        "where table_schema = 'serving' and table_name = 'predictions' and ordinal_position = 2"
    ).fetchone()
    return name


def ensure_serving(con: duckdb.DuckDBPyConnection, spec: ModelSpec) -> None:
    for statement in serving_ddl(spec):
        con.execute(statement)


def write_predictions(
    con: duckdb.DuckDBPyConnection, spec: ModelSpec, predictions: pd.DataFrame, days: Sequence[dt.date]
) -> None:
    """Replace ``days`` of serving.predictions with ``predictions``, in one transaction."""
    ensure_serving(con, spec)
    rows = predictions[list(prediction_columns(spec.key, spec.date_column))].astype({"model_version": "int32"})
    key, day = ident(spec.key), ident(spec.date_column)
    con.execute("begin transaction")
    try:
        con.execute(f"delete from serving.predictions where {day} between ? and ?", [min(days), max(days)])
        con.register("scored_rows", rows)
        con.execute(
            f"insert into serving.predictions select {key}, cast({day} as date), score, tier, "
            "model_name, model_version, scored_at from scored_rows"
        )
        con.unregister("scored_rows")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def served_predictions(con: duckdb.DuckDBPyConnection, spec: ModelSpec, first: dt.date, last: dt.date) -> pd.DataFrame:
    """The served rows of ``first..last`` in (day, key) order: ``day``, ``score``, ``tier``,
    ``model_name`` and ``model_version``."""
    ensure_serving(con, spec)
    key, day = ident(spec.key), ident(spec.date_column)
    return con.execute(
        f"select {day} as day, score, tier, model_name, model_version from serving.predictions "
        f"where {day} between ? and ? order by {day}, {key}",
        [first, last],
    ).df()


def labelled_predictions(con: duckdb.DuckDBPyConnection, spec: ModelSpec, first: dt.date, last: dt.date) -> pd.DataFrame:
    """Served scores of ``first..last`` joined with their labels (unlabelled rows left out):
    ``day``, ``score``, ``model_name``, ``model_version`` and ``label`` (0/1)."""
    ensure_serving(con, spec)
    key, day, label = ident(spec.key), ident(spec.date_column), ident(spec.label)
    return con.execute(
        f"select predictions.{day} as day, predictions.score, predictions.model_name, "
        f"predictions.model_version, cast(labels.{label} as integer) as label "
        f"from serving.predictions as predictions "
        f"join {relation(spec.labels_relation)} as labels on labels.{key} = predictions.{key} "
        f"where predictions.{day} between ? and ? and labels.{label} is not null "
        f"order by predictions.{day}, predictions.{key}",
        [first, last],
    ).df()


# ``serving.shadow_predictions``: during a rollout, the candidate set's score of every row batch
# scoring scored, beside the champion's, with the row's arm (``keel.ml.assignment``: the same
# hash the API assigns by, so a key has one arm online and in batch) and the rollout.
SHADOW_FIELDS = ("rollout_id", "stage", "arm", "score", "tier", "model_name", "model_version",
                 "champion_score", "champion_tier", "champion_model_version", "scored_at")


def shadow_columns(key: str, date_column: str) -> tuple[str, ...]:
    return (key, date_column, *SHADOW_FIELDS)


def shadow_ddl(spec: ModelSpec) -> list[str]:
    key, day = ident(spec.key), ident(spec.date_column)
    return [
        "create schema if not exists serving",
        f"""create table if not exists serving.shadow_predictions (
        {key} varchar, {day} date, rollout_id varchar, stage varchar, arm varchar, score double,
        tier varchar, model_name varchar, model_version integer, champion_score double,
        champion_tier varchar, champion_model_version integer, scored_at timestamp)""",
    ]


def write_shadow_predictions(con: duckdb.DuckDBPyConnection, spec: ModelSpec, rows: pd.DataFrame,
                             days: Sequence[dt.date], rollout_id: str) -> None:
    """Replace this rollout's rows of ``days`` in serving.shadow_predictions, in one transaction."""
    for statement in shadow_ddl(spec):
        con.execute(statement)
    columns = list(shadow_columns(spec.key, spec.date_column))
    frame = rows[columns].astype({"model_version": "Int32", "champion_model_version": "Int32"})
    key, day = ident(spec.key), ident(spec.date_column)
    con.execute("begin transaction")
    try:
        con.execute(f"delete from serving.shadow_predictions where rollout_id = ? and {day} between ? and ?",
                    [rollout_id, min(days), max(days)])
        con.register("shadow_rows", frame)
        con.execute(
            f"insert into serving.shadow_predictions select cast({key} as varchar), cast({day} as date), "
            "rollout_id, stage, arm, score, tier, model_name, model_version, champion_score, champion_tier, "
            "champion_model_version, scored_at from shadow_rows"
        )
        con.unregister("shadow_rows")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
