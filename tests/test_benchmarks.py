"""The benchmarks import llamarec lazily, inside functions, so a renamed library function breaks them only hours
into a run. Every name they import from llamarec_cli must exist."""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def llamarec_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llamarec_cli")
        for alias in node.names
    ]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_exist(path):
    imports = llamarec_imports(path)
    missing = [f"{module}.{name}" for module, name in imports if not hasattr(importlib.import_module(module), name)]
    assert not missing, f"{path.name} imports names llamarec_cli no longer has: {missing}"
