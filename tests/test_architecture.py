"""The layout's rules, checked on the source: layers point one way, the two pipelines do not
import each other, no module imports another that imports it back (a function-level import
counts too), and each flow's signature is its settings model.

Imports are read with ``ast`` (nothing is imported to check them), at any depth of the module.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("emotion_model", "tasks", "flows", "cli", "deployments")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module named by an import anywhere in ``path`` (top level or in a function),
    with its line; ``from a.b import c`` names ``a.b`` and, when it is a module, ``a.b.c``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def _graph() -> dict[str, dict[str, int]]:
    """Project module -> {project module it imports: line}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for target, line in _imports(path):
            if target in MODULES and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


GRAPH = _graph()


def _imports_of(prefix: str) -> Iterator[tuple[str, str, int]]:
    """(module, imported name, line) for every import made by modules under ``prefix``."""
    for name, path in MODULES.items():
        if name == prefix or name.startswith(prefix + "."):
            for target, line in _imports(path):
                yield name, target, line


def _starts(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_modules_were_found() -> None:
    assert {"emotion_model.video", "tasks.batch.infer", "tasks.training.split",
            "flows.batch_inference", "cli.main"} <= set(MODULES)


def test_no_import_cycles_even_through_function_bodies() -> None:
    """Tarjan's strongly connected components of the import graph: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    described = [
        " <-> ".join(f"{m} (imports {', '.join(sorted(set(GRAPH[m]) & set(c)))})" for m in c)
        for c in cycles
    ]
    assert not cycles, "import cycles: " + "; ".join(described)


@pytest.mark.parametrize(("layer", "forbidden"), [
    # the model library: no orchestration, no storage clients, no project layer above it
    ("emotion_model", ("tasks", "flows", "cli", "deployments", "prefect", "prefect_dask",
                       "s3fs", "boto3", "botocore", "distributed")),
    ("tasks", ("flows", "cli", "deployments")),
    # flows only wire tasks: no tensors, codecs, tables or the model library directly
    ("flows", ("cli", "emotion_model", "torch", "av", "numpy", "pandas", "pyarrow")),
    ("tasks.common", ("tasks.batch", "tasks.training")),
    ("tasks.batch", ("tasks.training",)),
    ("tasks.training", ("tasks.batch",)),
    ("deployments", ("flows", "cli")),
])
def test_layers_point_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = [f"{module}:{line} imports {target}" for module, target, line in _imports_of(layer)
           if _starts(target, *forbidden)]
    assert not bad, "\n".join(bad)


def test_nothing_in_the_packages_imports_the_tests() -> None:
    bad = [f"{module}:{line}" for pkg in PACKAGES for module, target, line in _imports_of(pkg)
           if _starts(target, "tests", "video_fixtures", "conftest")]
    assert not bad


@pytest.mark.parametrize(("flow_path", "settings_path"), [
    ("flows.batch_inference:batch_inference", "tasks.batch.settings:BatchSettings"),
    ("flows.retrain:retrain", "tasks.training.settings:RetrainSettings"),
    ("flows.distill:distill", "tasks.training.distill_settings:DistillSettings"),
])
def test_each_flow_signature_is_its_settings_model(flow_path: str, settings_path: str) -> None:
    """Parameters are declared once, as settings fields: the flow's signature must name the
    same parameters with the same defaults (Prefect builds the deployment's schema from it),
    and its docstring describes each one (from the fields)."""
    import importlib

    def load(spec: str) -> object:
        module, attr = spec.split(":")
        return getattr(importlib.import_module(module), attr)

    flow, settings = load(flow_path), load(settings_path)
    signature = inspect.signature(flow.fn)  # type: ignore[attr-defined]
    fields = settings.model_fields  # type: ignore[attr-defined]
    assert set(signature.parameters) == set(fields)
    for name, parameter in signature.parameters.items():
        field = fields[name]
        if field.is_required():
            assert parameter.default is inspect.Parameter.empty, name
        else:
            assert parameter.default == field.get_default(), name
        assert f"    {name}: {field.description}" in (flow.fn.__doc__ or ""), name  # type: ignore[attr-defined]


def _readme_tree() -> set[str]:
    """The paths the README's "The tree" block lists (folders end in ``/``)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### The tree", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0]
        if "/" not in name and "." not in name:  # a continuation of the previous description
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(folder for _, folder in stack) + name
        listed.add(path)
        if name.endswith("/"):
            stack.append((indent, name))
    return listed


def test_the_readme_tree_lists_every_module_and_nothing_else() -> None:
    listed = _readme_tree()
    modules = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
               if p.name != "__init__.py"}
    assert modules - listed == set(), "modules missing from the README's tree"
    listed_modules = {p for p in listed if p.endswith(".py")}
    assert {p for p in listed_modules if not (ROOT / p).exists()} == set(), "listed, not there"
    folders = {p for p in listed if p.endswith("/")}
    assert {p for p in folders if not (ROOT / p).is_dir()} == set()


def test_tests_named_in_the_docs_exist() -> None:
    """docs/reliability.md and the README cite tests as ``tests/...py::name``: each exists."""
    import re

    cited = set()
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        cited |= set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc.read_text()))
    assert cited
    missing = [f"{path}::{name}" for path, name in sorted(cited)
               if not (ROOT / path).exists()
               or not re.search(rf"^(async )?def {name}\b", (ROOT / path).read_text(), re.M)]
    assert not missing
