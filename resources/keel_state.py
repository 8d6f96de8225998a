"""The deployment (its state folder, use case and policies), as a Dagster resource."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from keel.core.config import Deployment, current
from keel.core.lock import hold
from keel.core.settings import KeelPaths
from keel.core.spec import UseCase
from keel.core.warehouse import connect, ensure_tables
from keel.data.feedback import ensure_table as ensure_feedback_table


# How a Dagster run names itself as the holder of the Keel home.
RUN_HOLDER = "dagster run "


class KeelState(dg.ConfigurableResource):
    """Where the landing zone and the DuckDB warehouse live, which use case runs, and the
    policies and thresholds everything decides with: the process's one deployment
    (``keel.core.config.current``; keel.toml and the environment configure it).

    A run that uses this resource holds the Keel home's writer lock (``keel.core.lock``) from
    its start to its end, so the daemon's runs and ``keel run`` never write at once; a run
    launched while another process holds it waits (``KEEL_LOCK_TIMEOUT``), saying for whom.
    Sensors build this resource too, outside any run, and take no lock."""

    def __init__(self, **fields):
        # The deployment comes from keel.toml and the environment, never from arguments here:
        # a stray ``home=`` would otherwise be accepted and silently ignored.
        if fields:
            raise TypeError(f"KeelState takes no arguments (got {', '.join(sorted(fields))}); "
                            "set KEEL_HOME or keel.toml to choose the deployment")
        super().__init__()

    @property
    def deployment(self) -> Deployment:
        return current()

    _lock: contextlib.ExitStack | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        if run is None:
            return
        stack = contextlib.ExitStack()
        stack.enter_context(hold(
            self.paths.home, f"{RUN_HOLDER}{run.run_id[:8]} ({run.job_name})",
            on_wait=context.log.info if context.log else None,
        ))
        self._lock = stack

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def paths(self) -> KeelPaths:
        return self.deployment.paths

    @property
    def usecase(self) -> UseCase:
        return self.deployment.usecase

    @contextmanager
    def warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.paths.warehouse) as con:
            ensure_tables(con, list(self.usecase.tables))
            if self.usecase.model is not None and self.usecase.model.corrections_relation is not None:
                # dbt reads it as a source: it exists, empty, before the first feedback.
                ensure_feedback_table(con)
            yield con
