"""Markdown tables, as the Dagster UI and the evaluation report show them: one builder, one
way of writing a cell."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd


def cell(value: Any, digits: int = 4) -> str:
    """One value as a person reads it: ``-`` for a missing or undefined value, ``yes``/``no``,
    integers with thousands separators (also whole floats of 100 and more, counts that share
    a column with metrics), other floats with ``digits`` decimals, text as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) >= 100:
            return f"{int(value):,}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, digits: int = 4) -> str:
    """A Markdown table of ``rows`` under ``header``, each value written by :func:`cell`
    (pass a value as text to write it differently)."""
    lines = ["| " + " | ".join(str(name) for name in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value, digits) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_table(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """A DataFrame as a Markdown table: its columns as the header, its index left out."""
    return markdown_table([str(c) for c in frame.columns], frame.itertuples(index=False), digits=digits)
