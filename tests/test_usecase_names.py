"""The framework knows no use case: no module of keel/, assets/, resources/ or sensors/ (nor
the framework's dbt macros) mentions a table or column name of any use case.

The names are read from the use cases themselves (every module of ``usecases/`` with a
``USECASE``): tables, contract columns and the upstream files' header names, the feature and
label relations, the key, date, label, feature and slice columns. The framework reads all of
them from the configuration; a name written into the framework is a use case leaking in,
whether as code, a string or a comment.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK = ("keel", "assets", "resources", "sensors")
# Use-case column names that are also ordinary words of the framework's own vocabulary (a
# model's name, a day, Python's type, the drift distance, argparse's dest, a temp table...).
ORDINARY_WORDS = frozenset({
    "name", "day", "model", "type", "month", "year", "hour", "minute", "distance", "temp",
    "origin", "dest", "speed", "engine", "tz", "band",
})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def usecase_modules(root: Path = ROOT) -> list[str]:
    return [f"usecases.{p.stem}" for p in sorted((root / "usecases").glob("*.py"))
            if p.stem != "__init__" and "USECASE =" in p.read_text()]


def usecase_names(module: str) -> set[str]:
    usecase = importlib.import_module(module).USECASE
    names = {usecase.name}
    for table in usecase.tables:
        names |= {table.name, *table.columns, *table.file_columns}
    model = usecase.model
    if model is not None:
        names |= {relation.split(".")[-1] for relation in (model.features_relation, model.labels_relation)}
        names |= {model.key, model.date_column, model.label, *model.features, *model.categorical,
                  *model.slices, *model.derived}
    return names - ORDINARY_WORDS


def framework_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for top in FRAMEWORK for p in (root / top).rglob("*") if p.suffix in (".py", ".sql"))


def mentions(files: list[Path], names: set[str], root: Path = ROOT) -> list[str]:
    """``path:line: name`` for every whole word of ``files`` that is one of ``names``."""
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for word in sorted(set(_WORD.findall(line)) & names):
                found.append(f"{path.relative_to(root)}:{number}: {word}")
    return found


def test_there_are_two_use_cases_to_read_names_from():
    modules = usecase_modules()
    assert {"usecases.flights", "usecases.electricity"} <= set(modules)
    assert {"flight_features", "dep_delay"} <= usecase_names("usecases.flights")
    assert {"demand_features", "interval_start", "IntervalStart"} <= usecase_names("usecases.electricity")


@pytest.mark.parametrize("module", ["usecases.flights", "usecases.electricity"])
def test_no_framework_module_mentions_a_table_or_column_of_the_use_case(module):
    leaks = mentions(framework_files(), usecase_names(module))
    assert not leaks, f"the framework names {module}'s tables or columns:\n" + "\n".join(leaks)


def test_a_name_put_back_into_the_framework_is_found(tmp_path):
    leaked = tmp_path / "keel" / "ml" / "scoring.py"
    leaked.parent.mkdir(parents=True)
    leaked.write_text((ROOT / "keel" / "ml" / "scoring.py").read_text()
                      + '\nDAY_COLUMN = "flight_date"  # the demo\'s\n'
                      + "# read marts.demand_features\n")
    names = usecase_names("usecases.flights") | usecase_names("usecases.electricity")
    found = mentions(framework_files(tmp_path), names, root=tmp_path)
    assert [f.rsplit(": ", 1)[1] for f in found] == ["flight_date", "demand_features"]
    assert found[0].startswith("keel/ml/scoring.py:")
