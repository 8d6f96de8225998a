"""Evidently's own HTML drift report of a day, beside Keel's figures.

Keel decides drift with :mod:`keel.monitoring.drift` (the same tests and thresholds, in
milliseconds); Evidently's report is what a person opens to look at the distributions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from keel.core.settings import offline_environment
from keel.data.landing import write_atomically

MODES = ("always", "drifted", "never")


def evidently_report(
    reference_sample: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str],
    path: Path,
) -> float:
    """Evidently's DataDriftPreset of ``current`` against ``reference_sample`` as HTML at
    ``path``; returns the seconds it took.

    Evidently raises on a column without a single current (or reference) value, such as wind
    gusts on a calm day; such columns are left out of its report. Keel's own figures list
    them as ``flagged_features`` (no_current_values)."""
    offline_environment()  # before Evidently is imported: no usage reports
    # Lazy: Evidently takes about 5 s to import, and only runs that write a report need it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    present = [c for c in [*numeric, *categorical]
               if current[c].notna().any() and reference_sample[c].notna().any()]
    numeric = [c for c in numeric if c in present]
    categorical = [c for c in categorical if c in present]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    columns = [*numeric, *categorical]
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(reference_sample[columns], data_definition=definition),
    )
    write_atomically(path, snapshot.get_html_str(as_iframe=False).encode("utf-8"))
    return time.perf_counter() - started
