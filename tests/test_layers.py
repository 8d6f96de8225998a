"""The framework's layers, read from the imports themselves (AST), so that the rule survives.

``keel/<layer>`` may import only its own layer and the layers below it; no framework module
imports ``definitions``, ``assets``, ``resources``, ``sensors`` or ``usecases`` (only
``keel.app`` may load ``definitions``); there is no import cycle anywhere in the project; an
import inside a function says why in a comment; and no module is over 500 lines unless its
docstring says why it must be one piece; and only ``keel/core/env.py`` touches the process
environment (``os.environ``, ``os.getenv``), so every setting reaches Keel through the
deployment (``keel.core.config``).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "render", "data", "ml", "registry", "monitoring", "rollout", "serving", "app"]
APPLICATION = ("definitions", "assets", "resources", "sensors", "usecases")
PROJECT_DIRS = ("keel", "assets", "resources", "sensors", "usecases")
MAX_LINES = 500


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    found = {"definitions": root / "definitions.py"}
    for top in PROJECT_DIRS:
        for path in sorted((root / top).rglob("*.py")):
            found[_module_name(root, path)] = path
    return found


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, nested) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, nested))
                found.extend((f"{child.module}.{alias.name}", child.lineno, nested) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "keel" and parts[1] in LAYERS else None


def layering_violations(root: Path = ROOT) -> list[str]:
    modules = project_modules(root)
    problems = []
    for module, path in modules.items():
        if not module.startswith("keel"):
            continue
        layer = layer_of(module)
        for name, line, _ in imports_of(path):
            where = f"{path.relative_to(root)}:{line}"
            top = name.split(".")[0]
            if top in APPLICATION and not (layer == "app" and top == "definitions"):
                problems.append(f"{where} imports {name} (the framework never imports the application)")
            target = layer_of(name)
            if layer and target and LAYERS.index(target) > LAYERS.index(layer):
                problems.append(f"{where}: keel.{layer} imports the higher layer {name}")
            if layer is None and target and module not in ("keel", "keel.__main__"):
                problems.append(f"{where}: {module} is outside every layer")
    return sorted(set(problems))


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    modules = project_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _, _ in imports_of(path):
            target = _resolve(name, modules)
            # A package's __init__ is imported with every submodule; only edges between
            # distinct modules, and not to the enclosing package, can form a cycle.
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def unexplained_lazy_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for module, path in project_modules(root).items():
        lines = path.read_text().splitlines()
        for name, line, nested in imports_of(path):
            if not nested:
                continue
            context = lines[max(0, line - 5):line]
            if not any("#" in text for text in context):
                problems.append(f"{path.relative_to(root)}:{line} imports {name} inside a function without saying why")
    return sorted(set(problems))


def oversized_modules(root: Path = ROOT) -> list[str]:
    problems = []
    for module, path in project_modules(root).items():
        text = path.read_text()
        count = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if count > MAX_LINES and "one piece" not in doc.lower():
            problems.append(f"{path.relative_to(root)} has {count} lines")
    return problems


ENVIRONMENT_MODULE = "keel.core.env"
_ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(root: Path = ROOT) -> list[str]:
    """Every place outside ``keel/core/env.py`` that reads or sets an environment variable
    through ``os`` (``os.environ``, ``os.getenv``, ``from os import environ``, ...)."""
    problems = []
    for module, path in project_modules(root).items():
        if module == ENVIRONMENT_MODULE:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in _ENVIRONMENT_NAMES
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                name = f"os.{node.attr}"
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and node.level == 0:
                names = [alias.name for alias in node.names if alias.name in _ENVIRONMENT_NAMES]
                if not names:
                    continue
                name = "from os import " + ", ".join(names)
            else:
                continue
            problems.append(f"{path.relative_to(root)}:{node.lineno} uses {name} (read it through keel.core.env)")
    return sorted(problems)


def test_only_keel_core_env_touches_the_environment():
    assert environment_reads() == []


@pytest.mark.parametrize("source", [
    "import os\nHOME = os.environ.get('KEEL_HOME')\n",
    "import os\n\ndef threads():\n    return os.getenv('KEEL_TRAIN_THREADS')\n",
    "from os import environ\n",
])
def test_the_environment_check_catches_a_read_anywhere_else(tmp_path, source):
    root = _scratch_tree(tmp_path, {"resources/threads.py": source, "keel/core/env.py": source})
    assert [problem.split(":")[0] for problem in environment_reads(root)] == [os.path.join("resources", "threads.py")]


def test_framework_layers_import_only_downward_and_never_the_application():
    assert layering_violations() == []


def test_there_is_no_import_cycle_anywhere_in_the_project():
    assert import_cycles() == []


def test_imports_inside_functions_say_why():
    assert unexplained_lazy_imports() == []


def test_no_module_is_over_500_lines_unless_its_docstring_says_why():
    assert oversized_modules() == []


def _scratch_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "definitions.py").touch()
    return tmp_path


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"keel/core/a.py": "from keel.ml import b\n", "keel/ml/b.py": ""}, "imports the higher layer keel.ml"),
        ({"keel/data/a.py": "import resources.keel_state\n", "resources/keel_state.py": ""}, "never imports the application"),
        ({"keel/ml/a.py": "from definitions import defs\n"}, "never imports the application"),
    ],
)
def test_the_layering_check_catches_a_broken_rule(tmp_path, files, expected):
    root = _scratch_tree(tmp_path, files)
    assert any(expected in problem for problem in layering_violations(root))


def test_the_cycle_check_catches_a_cycle_through_a_function_level_import(tmp_path):
    root = _scratch_tree(tmp_path, {
        "keel/app/a.py": "from keel.app import b\n",
        "keel/app/b.py": "def f():\n    # lazy: start-up time\n    from keel.app import a\n",
    })
    assert import_cycles(root) == [["keel.app.a", "keel.app.b", "keel.app.a"]]


def test_the_size_check_catches_a_long_module_unless_its_docstring_says_why(tmp_path):
    body = "x = 1\n" * (MAX_LINES + 1)
    root = _scratch_tree(tmp_path, {
        "keel/core/long.py": '"""A long module."""\n' + body,
        "keel/core/whole.py": '"""Kept in one piece: the table below is read as a whole."""\n' + body,
    })
    assert oversized_modules(root) == [f"keel/core/long.py has {MAX_LINES + 2} lines"]


def drawing_outside_render(root: Path = ROOT) -> list[str]:
    """Modules outside ``keel/render`` that import matplotlib or build a Markdown table."""
    problems = []
    for module, path in project_modules(root).items():
        if module.startswith("keel.render"):
            continue
        rel = path.relative_to(root)
        problems += [f"{rel}:{line} imports {name}" for name, line, _ in imports_of(path)
                     if name.split(".")[0] == "matplotlib"]
        text = path.read_text()
        problems += [f"{rel} builds a Markdown table" for marker in ('"---|"', "|---", "to_markdown(") if marker in text]
    return problems


def test_every_plot_and_markdown_table_is_drawn_in_keel_render():
    assert drawing_outside_render() == []


def test_the_render_check_catches_a_plot_and_a_table_elsewhere(tmp_path):
    root = _scratch_tree(tmp_path, {
        "keel/ml/a.py": "def f():\n    # lazy: start-up time\n    from matplotlib.figure import Figure\n",
        "assets/b.py": 'HEADER = "|---|---|"\n',
        "keel/render/c.py": "import matplotlib\n",
    })
    assert drawing_outside_render(root) == [
        "keel/ml/a.py:3 imports matplotlib.figure", "keel/ml/a.py:3 imports matplotlib.figure.Figure",
        "assets/b.py builds a Markdown table",
    ]


# ------------------------------------------------------------------------------------------
# Tests share fixtures through conftest.py and plain helper modules, never through each other:
# a test module imported by another runs its module-level fixtures twice and ties the two
# modules' fates together (pytest also collects the imported fixtures under the new name).

TESTS = ROOT / "tests"


def cross_test_imports(root: Path = TESTS) -> list[str]:
    """``path:line imports test_x`` for every test module that imports another test module."""
    problems = []
    for path in sorted(root.glob("test_*.py")):
        for name, line, _ in imports_of(path):
            top = name.split(".")[0]
            if top.startswith("test_") and (root / f"{top}.py").exists():
                problems.append(f"{path.name}:{line} imports {top}")
    return sorted(set(problems))


def test_no_test_module_imports_another_test_module():
    assert cross_test_imports() == []


def test_the_test_import_check_catches_a_test_module_importing_another(tmp_path):
    (tmp_path / "test_a.py").write_text("from test_b import SPEC  # a fixture's data\n")
    (tmp_path / "test_b.py").write_text("SPEC = 1\n")
    (tmp_path / "helpers.py").write_text("SPEC = 1\n")
    (tmp_path / "test_c.py").write_text("from helpers import SPEC\nimport conftest\n")
    assert cross_test_imports(tmp_path) == ["test_a.py:1 imports test_b"]
