"""The house rules, checked on the code: one import root, layers, no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: folder -> the package it installs as (pyproject.toml's package-dir)
ROOTS = {"shared": "fedaug", "server": "fedaug.server", "client": "fedaug.client",
         "simulations": "fedaug.simulations"}
#: what each layer may import from the others (the common package imports none of them)
ALLOWED = {
    "fedaug": set(),
    "fedaug.client": set(),
    "fedaug.server": set(),
    "fedaug.simulations": {"fedaug.client", "fedaug.server"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            if "benchmarks" in rel.parts:  # scripts, not part of the package
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _layer(module: str) -> str:
    for layer in ("fedaug.simulations", "fedaug.server", "fedaug.client"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return "fedaug"


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        graph[mod] = {m for m in _imports(mod, path) if m in mods and m != mod}
    return graph


def test_the_common_package_imports_nothing_above_it():
    # Prepare / Execute
    bad = [(mod, dep) for mod, deps in _graph().items() for dep in deps
           if _layer(dep) != _layer(mod) and _layer(dep) != "fedaug"
           and _layer(dep) not in ALLOWED[_layer(mod)]]

    # Assert
    assert bad == []


def test_no_module_imports_a_generic_top_level_name():
    # Prepare
    generic = {"shared", "server", "client", "simulations"}

    # Execute
    bad = [(mod, name) for mod, path in _modules().items()
           for name in _imports(mod, path) if name.split(".")[0] in generic]

    # Assert
    assert bad == []


def test_there_is_no_import_circle():
    # Prepare: every import, lazy ones inside functions included
    graph = _graph()
    # a package's __init__ re-exports its modules: an edge into a module's own package is
    # not a circle through that package's concepts
    for mod in graph:
        graph[mod] = {d for d in graph[mod] if not mod.startswith(d + ".")}

    # Execute: Tarjan's strongly connected components
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    # Assert
    assert cycles == []


@pytest.mark.parametrize("name", ["server", "client", "shared", "simulations"])
def test_generic_top_level_names_are_not_installed(name, tmp_path, monkeypatch):
    # Prepare: a folder outside the repository
    import importlib.util
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if Path(p or ".").resolve() not in (REPO, REPO / "tests")])

    # Execute / Assert
    assert importlib.util.find_spec(name) is None


def test_the_distribution_installs_only_fedaug():
    # Prepare: the installed metadata (site-packages), not the build's egg-info in the repo
    import site
    from importlib.metadata import distributions

    dists = [d for d in distributions(path=site.getsitepackages()) if d.metadata["Name"] == "fedaug"]

    # Execute
    files = {f.parts[0] for d in dists for f in (d.files or ()) if f.suffix in (".py", ".pth")}
    top = {t for d in dists for t in (d.read_text("top_level.txt") or "fedaug").split()}

    # Assert: an editable install lists its finder, a built wheel the package's files
    assert dists and top == {"fedaug"}
    assert {f for f in files if not f.startswith("__editable__")} <= {"fedaug"}
