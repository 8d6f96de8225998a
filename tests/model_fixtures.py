"""Helpers of the model, monitoring and retraining tests, beside the homes conftest.py
builds (``template``, ``home``, ``trained``): the names the tests read, and the runs that
materialize the reference and monitor days."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from conftest import (  # noqa: F401 (re-exported for the test modules)
    PRIMARY, RANGE_END, RANGE_START, TEMPLATE_END, TEMPLATE_START, USECASE, copy_home, registry, score, train,
    write_config,
)
from keel.core.config import current
from keel.registry.promotion import registered_names

START, END = TEMPLATE_START, TEMPLATE_END
NAMES = registered_names(USECASE.name)


def materialize_reference() -> dg.ExecuteInProcessResult:
    # The definitions load only in the tests that run jobs (about 4 s).
    from definitions import defs

    return dg.materialize(
        [defs.get_assets_def(dg.AssetKey(["monitoring", "reference"]))],
        instance=dg.DagsterInstance.get(),
        resources={"keel": defs.resources["keel"], "mlflow": defs.resources["mlflow"]},
    )


def monitor(first: dt.date, last: dt.date, *, evidently: str = "never",
            threshold: float | None = None) -> dg.ExecuteInProcessResult:
    """``monitor_daily`` over ``first..last``: one partition, or a range in one run."""
    # The definitions load only in the tests that run jobs (about 4 s).
    from definitions import defs

    config = {"evidently_html": evidently}
    # A threshold is the deployment's, set in keel.toml for this run only.
    written = None if threshold is None else write_config(
        current().home, retraining={"calibrated_drift_share": threshold})
    partition = {"partition_key": first.isoformat()} if first == last else {
        "tags": {RANGE_START: first.isoformat(), RANGE_END: last.isoformat()}}
    try:
        return defs.resolve_job_def("monitor_daily").execute_in_process(
            instance=dg.DagsterInstance.get(), raise_on_error=False,
            run_config={"ops": {"monitoring__feature_drift": {"config": config}}}, **partition,
        )
    finally:
        if written is not None:
            written.unlink()
