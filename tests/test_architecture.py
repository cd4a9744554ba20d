"""The architecture as the README draws it: imports only point down, and dvc.yaml matches the code.

Both are read from the source, not run: every import counts, the ones inside functions too, so an
import hidden in a function cannot make a cycle or point up; and each stage's code dependencies,
data files and params are derived from what its function imports, touches and reads.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from char_rnn.layout import Layout
from char_rnn.params import Params
from char_rnn.stages import STAGES
from conftest import REPO

PACKAGES = {"char_rnn": REPO / "src" / "char_rnn", "pipelines": REPO / "pipelines"}
LINEAGE_CALLS = {"flat", "digest"}  # whole-params calls that are logged, never read to compute an output
# Layout paths that are no stage's input or output: checkpoints are out of DVC's reach on purpose (DVC deletes
# a stage's outputs before it runs; a resumed training needs them then).
NOT_DATA = {"root", "mlruns", "params", "checkpoints", "lock"}
# Inputs a stage finds by name rather than through the layout: `corpus.source`, the packaged seed
# sentence or a file that the README asks users to put under data/raw/. And ingest's dependency on the
# check stage's record, which it does not read: it only makes every stage wait for check.
BY_NAME = {
    "check": {"data/raw", "src/char_rnn/seed.txt"},
    "ingest": {"data/raw", "src/char_rnn/seed.txt", "reports/check.json"},
}
CHECKS_EVERY_PARAM = {"check"}  # loading params.yaml validates all of it: that is this stage's work


def module_path(module: str) -> Path:
    package, _, name = module.partition(".")
    return PACKAGES[package] / f"{name}.py"


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(module_path(module).read_text(encoding="utf-8"))


def all_modules() -> list[str]:
    return sorted(
        f"{package}.{path.stem}"
        for package, folder in PACKAGES.items()
        for path in folder.glob("*.py")
        if path.stem != "__init__"
    )


def walk_runtime(node: ast.AST):
    """`ast.walk`, minus `if TYPE_CHECKING:` blocks: annotations only, nothing there runs."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not (isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING"):
            yield from walk_runtime(child)


def imported(node: ast.AST) -> set[str]:
    """Project modules imported anywhere under `node`, inside functions too."""
    found: set[str] = set()
    for child in walk_runtime(node):
        if isinstance(child, ast.Import):
            found |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom) and child.module:
            found.add(child.module)
            found |= {f"{child.module}.{alias.name}" for alias in child.names}
    return {name for name in found if name in set(all_modules())}


def readme_layers() -> list[set[str]]:
    """The diagram in README.md: one row per layer, top to bottom, modules separated by '·'."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- import-layers -->\n```text\n(.*?)```", text, re.S)
    assert block, "README.md has no import diagram (a ```text block after <!-- import-layers -->)"
    rows = [line.split("#")[0] for line in block.group(1).splitlines()]
    return [{name.strip() for name in row.split("·")} for row in rows if row.strip()]


def test_imports_only_point_down_as_the_readme_draws_them() -> None:
    layers = readme_layers()
    layer_of = {module: depth for depth, row in enumerate(layers) for module in row}
    assert set(layer_of) == set(all_modules()), "the README's diagram must name every module exactly once"
    upward = [
        f"{module} -> {target}"
        for module in all_modules()
        for target in imported(tree(module))
        if target != module and layer_of[target] <= layer_of[module]
    ]
    assert upward == [], "imports that do not point down the README's diagram"


def test_the_import_graph_has_no_cycle() -> None:
    graph = {module: imported(tree(module)) - {module} for module in all_modules()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path[path.index(module) :], module))
        if module not in done:
            for target in graph[module]:
                visit(target, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


# ---- dvc.yaml against the stages' code ---------------------------------------------------------------


def functions() -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree("char_rnn.stages").body if isinstance(node, ast.FunctionDef)}


def reached(name: str) -> list[ast.FunctionDef]:
    """The stage function and every function of stages.py it calls, directly or not."""
    found, todo = {}, [name]
    while todo:
        function = functions()[todo.pop()]
        found[function.name] = function
        called = {
            node.func.id
            for node in ast.walk(function)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions()
        }
        todo += sorted(called - set(found))
    return list(found.values())


def code_deps(name: str) -> set[str]:
    """stages.py, what it imports at its top, what the stage's functions import, and all that imports."""
    top = imported(
        ast.Module(
            body=[n for n in tree("char_rnn.stages").body if not isinstance(n, ast.FunctionDef)], type_ignores=[]
        )
    )
    todo = {*top, *(module for f in reached(name) for module in imported(f))}
    closure = {"char_rnn.stages"}  # its other functions' imports are other stages' business
    while todo:
        module = todo.pop()
        closure.add(module)
        todo |= imported(tree(module)) - closure
    return {str(module_path(module).relative_to(REPO)) for module in closure | {"char_rnn.__init__"}}


def params_read(name: str) -> set[str]:
    """Dotted keys the stage reads, whole sections expanded; fails if `params` is handed on whole."""
    keys: set[str] = set()
    for function in reached(name):
        chains = {id(node.value): node for node in ast.walk(function) if isinstance(node, ast.Attribute)}
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id == "params" and isinstance(node.ctx, ast.Load):
                attribute = next((a for a in chains.values() if a.value is node), None)
                parent_call = any(
                    isinstance(c, ast.Call)
                    and node in c.args
                    and isinstance(c.func, ast.Name)
                    and c.func.id in functions()
                    for c in ast.walk(function)
                )
                assert attribute is not None or parent_call, f"{function.name} hands `params` on whole"
                if attribute is None or attribute.attr in LINEAGE_CALLS:
                    continue
                section = attribute.attr
                key = chains.get(id(attribute))
                keys |= {f"{section}.{key.attr}"} if key else section_keys(section)
    return keys


def section_keys(section: str) -> set[str]:
    return {f"{section}.{key}" for key in Params.model_fields[section].annotation.model_fields}


def all_keys() -> set[str]:
    return {key for section in Params.model_fields for key in section_keys(section)}


def declared_keys(entry: str | dict) -> set[str]:
    """A dvc.yaml params entry as dotted keys: `train.epochs`, a section, or `params.yaml:` (all of it)."""
    if isinstance(entry, dict):
        assert list(entry) == ["params.yaml"] and not entry["params.yaml"], entry
        return all_keys()
    return section_keys(entry) if entry in Params.model_fields else {entry}


def data_touched(name: str) -> set[str]:
    """Layout paths the stage's functions use (read or written), relative to the project root."""
    layout = Layout(Path("/project"))
    names = {
        node.attr
        for function in reached(name)
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "layout"
    }
    return {str(getattr(layout, attr).relative_to("/project")) for attr in names - NOT_DATA}


def paths(entries: list) -> set[str]:
    return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []}


@pytest.fixture(scope="module")
def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_dvc_yaml_has_the_stages_in_order_each_calling_its_cli_command(dvc_stages: dict[str, dict]) -> None:
    from typer.main import get_command

    from char_rnn.cli import app

    assert list(dvc_stages) == [stage.name for stage in STAGES]
    assert {name: spec["cmd"] for name, spec in dvc_stages.items()} == {s.name: f"char-rnn {s.name}" for s in STAGES}
    assert {s.name for s in STAGES} <= set(get_command(app).commands)


@pytest.mark.parametrize("name", [stage.name for stage in STAGES])
def test_dvc_yaml_declares_what_the_stage_code_imports_reads_and_writes(name: str, dvc_stages: dict) -> None:
    spec = dvc_stages[name]
    deps = paths(spec.get("deps"))
    assert {dep for dep in deps if dep.endswith(".py")} == code_deps(name), "code deps"
    declared = {key for entry in spec.get("params", []) for key in declared_keys(entry)}
    assert declared == (all_keys() if name in CHECKS_EVERY_PARAM else params_read(name)), "params"
    data = {dep for dep in deps if not dep.endswith(".py")}
    written = paths(spec.get("outs")) | paths(spec.get("metrics")) | paths(spec.get("plots"))
    assert data | written == data_touched(name) | BY_NAME.get(name, set()), "data deps and outputs"
