"""The benchmark scripts still import what they name: they run outside the suite, so a renamed
framework function would otherwise break one silently until someone measures again."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("keel", "assets", "resources", "sensors", "usecases", "definitions")


def unresolved_imports(script: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT):
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            if hasattr(module, alias.name):
                continue
            try:
                importlib.import_module(f"{node.module}.{alias.name}")
            except ImportError:
                missing.append(f"{script.name}:{node.lineno} from {node.module} import {alias.name}")
    return missing


def test_every_benchmark_script_imports_names_that_exist():
    # Regression: bench_serving.py imported keel.core.settings.load_usecase after the deployment
    # configuration replaced it, and stopped after its load phases.
    scripts = sorted((ROOT / "bench").glob("bench_*.py"))
    assert len(scripts) >= 6
    assert [m for s in scripts for m in unresolved_imports(s)] == []
