"""Quality evidence per arm of a rollout: the scores each arm served on keys whose labels matured.

``matured_scores(paths, spec, rollout_id, since)`` reads the rows each arm served since
``since`` from the API's prediction log files (``serving/predictions/`` for the champion and
canary answers, ``serving/shadow/`` for the shadow candidate's scores; both through
``keel.serving.evidence.log_rows``). The log files are the real path here, not the
warehouse's ``serving.online_predictions``: that table is loaded a day at a time by a run and
keeps neither the ``arm`` nor the ``rollout_id`` of a row, so it cannot say which arm served
what. The rows are joined by key to the use case's labels relation in the warehouse, with the
label corrections in effect applied exactly as ``monitoring/served_outcomes`` and training
read them (``keel.ml.datasets.labels_sql``), over a read-only connection
(``keel.core.warehouse.connect_for_reading``). A key whose label is null or absent has not
matured and is not counted; with ``as_of`` and a ``label_resolved_column`` in the spec, neither
is an upstream label resolved after ``as_of`` (a replay's clock may stand before labels the
warehouse already holds). A label set by a correction in effect counts whatever ``as_of``.

The sequential test (``keel.rollout.sequential.quality``) takes rows as independent: a key
asked several times counts once per arm, at the score that arm served it last. Returns, for
each of ``champion``, ``canary`` and ``shadow``::

    {"keys": [str], "scores": [float], "labels": [0/1], "served": int, "labelled": int}

``keys`` are the matured keys (sorted as text), ``scores`` and ``labels`` in their order;
``served`` counts the distinct keys the arm scored, ``labelled`` those with a matured label
(the length of ``keys``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from keel.core.spec import ModelSpec
from keel.core.warehouse import READ_WAIT_S, connect_for_reading, ident, table_exists
from keel.ml.assignment import CANARY, CHAMPION, SHADOW
from keel.ml.datasets import LATEST_FEEDBACK, labels_sql, latest_feedback
from keel.serving.evidence import ARMS, log_rows

FOLDERS = {"predictions": (CHAMPION, CANARY), "shadow": (SHADOW,)}


def served_scores(serving_root: Path, rollout_id: str, since: dt.datetime) -> dict[str, dict[str, float]]:
    """Per arm, each key's last score served for ``rollout_id`` since ``since`` (rows without
    a score, or a shadow row that logged an error, left out)."""
    latest: dict[str, dict[str, tuple[str, float]]] = {arm: {} for arm in ARMS}
    for folder, arms in FOLDERS.items():
        for row in log_rows(serving_root, folder, since):
            arm = row.get("arm") or CHAMPION
            if row.get("rollout_id") != rollout_id or arm not in arms or row.get("score") is None:
                continue
            if folder == "shadow" and row.get("error"):
                continue
            key, stamp = str(row["key"]), str(row["served_at"])
            seen = latest[arm].get(key)
            if seen is None or stamp >= seen[0]:
                latest[arm][key] = (stamp, float(row["score"]))
    return {arm: {key: score for key, (_, score) in rows.items()} for arm, rows in latest.items()}


def matured_labels(con, spec: ModelSpec, keys: list[str], *, as_of: dt.datetime | None = None,
                   feedback_as_of: str | None | object = LATEST_FEEDBACK) -> dict[str, int]:
    """The matured label (0/1) of each of ``keys`` that has one, corrections in effect applied."""
    schema, table = spec.labels_relation.split(".")
    if not keys or not table_exists(con, schema, table):
        return {}
    if feedback_as_of is LATEST_FEEDBACK:
        feedback_as_of = latest_feedback(con, spec)
    resolved_column = spec.label_resolved_column if as_of is not None else None
    labels, params = labels_sql(spec, feedback_as_of, (resolved_column,) if resolved_column else ())
    key, label = ident(spec.key), ident(spec.label)
    where = f"labels.{label} is not null and list_contains(cast(? as varchar[]), cast(labels.{key} as varchar))"
    extra: list[Any] = [sorted(set(keys))]
    if resolved_column:
        # A label corrected by feedback is known (the feedback is in the warehouse); an
        # upstream one once it resolved.
        where += (f" and (labels.corrected_at is not null or cast(labels.{ident(resolved_column)} as timestamp)"
                  " <= cast(? as timestamp))")
        moment = as_of if as_of.tzinfo is None else as_of.astimezone(dt.timezone.utc).replace(tzinfo=None)
        extra.append(moment)
    rows = con.execute(f"select cast(labels.{key} as varchar), cast(labels.{label} as integer) "
                       f"from {labels} as labels where {where}", [*params, *extra]).fetchall()
    return {str(k): int(v) for k, v in rows}


def matured_scores(paths, spec: ModelSpec, rollout_id: str, since: dt.datetime, *,
                   as_of: dt.datetime | None = None, feedback_as_of: str | None | object = LATEST_FEEDBACK,
                   wait_s: float = READ_WAIT_S) -> dict[str, dict[str, Any]]:
    """Each arm's scores and matured labels for ``rollout_id`` since ``since`` (an aware
    datetime; a naive one is taken as UTC). ``paths`` is the home's ``KeelPaths`` or the home
    folder. No warehouse yet, or no labels relation in it: nothing has matured."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    # A Path has a ``home`` too (the user's): only a KeelPaths is asked for its home.
    home = Path(paths) if isinstance(paths, (str, os.PathLike)) else Path(paths.home)
    served = served_scores(home / "serving", rollout_id, since)
    every_key = sorted({key for rows in served.values() for key in rows})
    labels: dict[str, int] = {}
    warehouse = home / "warehouse.duckdb" if isinstance(paths, (str, os.PathLike)) else Path(paths.warehouse)
    if every_key and warehouse.is_file():
        with connect_for_reading(warehouse, wait_s) as con:
            labels = matured_labels(con, spec, every_key, as_of=as_of, feedback_as_of=feedback_as_of)
    out = {}
    for arm in ARMS:
        keys = sorted(key for key in served[arm] if key in labels)
        out[arm] = {"keys": keys, "scores": [served[arm][key] for key in keys], "labels": [labels[key] for key in keys],
                    "served": len(served[arm]), "labelled": len(keys)}
    return out
