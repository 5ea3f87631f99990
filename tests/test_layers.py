"""No import runs up the layers: a module may import from its own layer and the ones below it, never from above.

Every module under llamarec_cli/ is parsed (no import is executed), relative imports are resolved, and every import
is checked, at any nesting level: lazy imports inside functions count the same as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llamarec_cli"

# Low to high. A module belongs to the layer of the longest name below that is, or contains, it.
LAYERS: list[tuple[str, ...]] = [
    ("llamarec_cli.errors",),
    ("llamarec_cli.version", "llamarec_cli.files"),  # leaves: __version__ and versions(); sha256, atomic writes
    (
        "llamarec_cli.settings",
        "llamarec_cli.workspace",
        "llamarec_cli.quiet",
        "llamarec_cli.layout",
    ),  # environment, layout
    ("llamarec_cli.config",),  # config dataclasses: option(), checks, --set parsing, layered defaults
    ("llamarec_cli.artifacts",),  # sealed manifests and their checks, finishing a run, the resume state
    # the training loop both trainers share, the reporter protocol, the device; the dtype --dtype auto picks
    ("llamarec_cli.training", "llamarec_cli.precision"),
    # the catalogue losses a retriever's contract trains with (torch only)
    ("llamarec_cli.retrieval.losses",),
    # the plugin contracts: what a dataset plugin fills in, what a retriever plugin subclasses
    ("llamarec_cli.data.spec", "llamarec_cli.retrieval.contract"),
    # the plugin manager and its registries: every stage looks its components up by name here; the built-ins are
    # loaded by module name, as pluggy and simonw/llm load default plugins, so the manager depends on none of them
    ("llamarec_cli.plugins", "llamarec_cli.registry", "llamarec_cli.hookspecs"),
    ("llamarec_cli.evaluation",),
    ("llamarec_cli.data",),
    ("llamarec_cli.retrieval",),
    ("llamarec_cli.ranking",),
    # the stages as services (preprocess, retrieve-train, candidates, rank-train, evaluate, the pipeline): each
    # takes a dataset (by name or loaded) and the work directory, and reads what the stages before it wrote
    ("llamarec_cli.stages",),
    ("llamarec_cli.serving",),
    (
        "llamarec_cli.cli",
        "llamarec_cli.__main__",
        "llamarec_cli.builtins",  # the built-in plugin: llamarec's own datasets, retriever and commands
        "llamarec_cli.testing",  # for plugin authors' tests: a synthetic dataset, a retriever's end-to-end check
        "llamarec_cli",  # the package itself: the public API that plugins import
    ),
]

# (importing module, imported module or package): the upward imports that stay, each for the reason given.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    best = None  # (length of the matching name, layer)
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def imported_modules(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The llamarec_cli modules an import statement reads: ``from .. import plugins`` is the module plugins,
    ``from .. import ConfigError`` is the package itself."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "llamarec_cli"]
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "llamarec_cli":
        return []
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def excepted(module: str, target: str) -> tuple[str, str] | None:
    for key in EXCEPTIONS:
        if key[0] == module and (target == key[1] or target.startswith(key[1] + ".")):
            return key
    return None


def imports() -> list[tuple[str, ast.Import | ast.ImportFrom, list[str]]]:
    """Every import statement of every module (lazy ones included), with the llamarec_cli modules it reads."""
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append((module, node, imported_modules(module, node)))
    return found


def test_no_import_runs_up_the_layers():
    found = []
    for module, node, targets in imports():
        own = layer_of(module)
        assert own is not None, f"{module} is in no layer: add it to LAYERS"
        for target in targets:
            assert target in MODULES, f"{module}:{node.lineno} imports {target}, which does not exist"
        above = [t for t in targets if layer_of(t) > own and not excepted(module, t)]
        if above:
            found.append(f"{module}:{node.lineno}: {ast.unparse(node)}  (above it: {', '.join(above)})")
    assert not found, "Imports from a higher layer:\n" + "\n".join(found)


def test_every_exception_is_still_needed():
    used = {excepted(module, target) for module, _, targets in imports() for target in targets}
    assert not set(EXCEPTIONS) - used, f"Exceptions no import needs any more: {sorted(set(EXCEPTIONS) - used)}"


def test_the_checker_sees_a_lazy_upward_import():
    tree = ast.parse("def f():\n    if True:\n        from ..cli.output import stderr\n")
    (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    (target,) = imported_modules("llamarec_cli.retrieval.train", node)
    assert target == "llamarec_cli.cli.output"
    assert layer_of(target) > layer_of("llamarec_cli.retrieval.train")
