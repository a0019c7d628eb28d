"""The package's import structure: no cycles (module-level and function-level imports alike), every
import points to the same or a lower layer, and only the command-line layer parses argv. The layer
table is the one docs/architecture.md draws."""

from __future__ import annotations

import ast
import os
from typing import Optional

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rm_jax")

# Lowest first, one package each (the folders are the layers). A module may import its own package and the
# packages before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("rm_jax", "rm_jax.core")),
    ("data", ("rm_jax.data",)),
    ("models", ("rm_jax.models",)),
    ("engine", ("rm_jax.engine",)),
    ("runs", ("rm_jax.runs",)),
    ("evaluation", ("rm_jax.evaluation",)),
    ("policy", ("rm_jax.policy",)),
    ("steer", ("rm_jax.steer",)),
    ("training", ("rm_jax.training",)),
    ("sweeps", ("rm_jax.sweeps",)),
    ("serving", ("rm_jax.serving",)),
    ("cli", ("rm_jax.cli",)),
]


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> Optional[int]:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return None if best is None else best[0]


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported rm_jax module, line) for every import statement anywhere in the module."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "rm_jax"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "rm_jax":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return [(m, n) for m, n in out if m in MODULES]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in imports_of(m) if t != m}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_point_downward():
    bad = []
    for m in MODULES:
        for t, line in imports_of(m):
            if layer_of(t) > layer_of(m):
                bad.append(
                    f"{MODULES[m]}:{line}: {m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                )
    assert bad == []


def test_only_the_cli_parses_argv():
    bad = []
    for m, path in MODULES.items():
        if layer_of(m) == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                bad.append(f"{path}:{node.lineno}: imports argparse")
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
                bad.append(f"{path}:{node.lineno}: imports from argparse")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr == "argv"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                bad.append(f"{path}:{node.lineno}: reads sys.argv")
    assert bad == []


def test_the_checker_sees_what_it_should():
    """The walk is not vacuous: known edges, function-level ones included, are found."""
    assert any(t == "rm_jax.engine.train_step" for t, _ in imports_of("rm_jax.training.loop"))
    assert any(t == "rm_jax.data.pipeline" for t, _ in imports_of("rm_jax.data.stats"))  # inside a function
    assert layer_of("rm_jax.cli.eval") == len(LAYERS) - 1 and layer_of("rm_jax.models.llama") == 2


def test_the_top_level_holds_packages_only():
    loose = [f for f in os.listdir(ROOT) if f.endswith(".py") and f not in ("__init__.py", "__main__.py")]
    assert loose == []


def test_module_names_say_what_they_hold():
    """No two modules share a basename (the command modules of cli/, named after their commands, aside), and
    no ``X.py`` sits beside ``Xs.py`` or a package ``X…/`` of the same stem."""
    seen: dict[str, str] = {}
    clashes = []
    for dirpath, dirs, files in os.walk(ROOT):
        stems = {f[:-3] for f in files if f.endswith(".py") and f != "__init__.py"}
        for stem in stems:
            for other in stems | set(dirs):
                if other != stem and other.startswith(stem) and other[len(stem) :] in ("s", "es", "_", "ing"):
                    clashes.append(f"{dirpath}: {stem}.py beside {other}")
            if os.path.basename(dirpath) == "cli" or stem == "__main__":
                continue
            path = os.path.join(dirpath, stem + ".py")
            if stem in seen:
                clashes.append(f"{path} and {seen[stem]}")
            seen.setdefault(stem, path)
    assert clashes == []
