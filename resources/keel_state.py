"""The deployment's state folder and configuration, as a Dagster resource."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb

from keel.settings import DEFAULT_USECASE, KeelPaths, keel_home
from keel.spec import UseCase
from keel.warehouse import connect, ensure_tables


class KeelState(dg.ConfigurableResource):
    """Where the landing zone and the DuckDB warehouse live, and which use case runs."""

    home: str = ""
    usecase_module: str = ""

    @property
    def paths(self) -> KeelPaths:
        return KeelPaths(Path(self.home).resolve() if self.home else keel_home())

    @property
    def usecase(self) -> UseCase:
        import importlib

        module = self.usecase_module or os.environ.get("KEEL_USECASE", DEFAULT_USECASE)
        return importlib.import_module(module).USECASE

    @contextmanager
    def warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.paths.warehouse) as con:
            ensure_tables(con, list(self.usecase.tables))
            yield con
