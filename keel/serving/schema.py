"""Request and event rows as pydantic models, typed by the data contract of their table.

Built at run time from the deployment's configuration, so this module does not use
``from __future__ import annotations``: pydantic must see the real annotation objects.
"""

import datetime as dt
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Strict, create_model

from keel.core.spec import TableSpec

_PYTHON_TYPES = {"BIGINT": int, "INTEGER": int, "DOUBLE": float, "VARCHAR": str, "BOOLEAN": bool,
                 "TIMESTAMP": dt.datetime}


def row_model(table: TableSpec, columns: tuple[str, ...], name: str) -> type[BaseModel]:
    """A pydantic model of one row of ``table``'s ``columns``, typed by its contract: numbers
    must be JSON numbers (never strings), text JSON strings, time stamps ISO 8601 strings;
    nullable columns may be null or left out; any other field is rejected."""
    fields: dict[str, Any] = {}
    for column in columns:
        kind = table.duckdb_type(column)
        python_type = _PYTHON_TYPES[kind]
        annotation: Any = python_type if kind == "TIMESTAMP" else Annotated[python_type, Strict()]
        if table.schema.columns[column].nullable:
            fields[column] = (Optional[annotation], None)
        else:
            fields[column] = (annotation, ...)
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
