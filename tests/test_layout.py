"""The package's architecture, kept by a test: layers as subpackages that import downward only, no import
circle, few modules at the top, names a reader cannot confuse, and a plugin that arrives from outside."""

from __future__ import annotations

import ast
import itertools
import os
import sys
from pathlib import Path

from typer.testing import CliRunner

import tiwbench
from tiwbench.cli import app
from tiwbench.registry import METHODS
from tiwbench.training.methods import Method

ROOT = Path(tiwbench.__file__).parent
# What each layer may import (README "Layout", and each subpackage's docstring). ``shared`` is the
# modules directly under tiwbench/ that every layer uses; the CLI sits above everything.
SHARED = "shared"
ALLOWED = {
    SHARED: {SHARED},
    "diffusion": {SHARED},
    "data": {SHARED},
    "report": {SHARED},
    "metrics": {SHARED, "data"},
    "ratios": {SHARED, "diffusion", "data"},
    "training": {SHARED, "diffusion", "data", "ratios"},
    "sweep": {SHARED, "diffusion", "data", "metrics", "ratios", "training", "report"},
}
TOP = {"cli", "__main__"}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, function-level imports included (they can close a circle)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name and t != "tiwbench":
                    deps.add(t)
        graph[name] = deps
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] not in ALLOWED:  # a module directly under tiwbench/
        return parts[1] if parts[1] in TOP else SHARED
    return parts[1] if len(parts) > 1 else SHARED


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], itertools.count()

    def visit(v):
        index[v] = low[v] = next(counter)
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downward_only():
    wrong = []
    for mod, deps in import_graph().items():
        mine = layer(mod)
        if mine in TOP:
            continue
        for d in deps:
            if layer(d) != mine and layer(d) not in ALLOWED[mine]:
                wrong.append(f"{mod} ({mine}) imports {d} ({layer(d)})")
    assert wrong == []


def test_no_two_subpackages_import_each_other():
    pairs = {(layer(m), layer(d)) for m, deps in import_graph().items() for d in deps if layer(m) != layer(d)}
    assert {(a, b) for a, b in pairs if (b, a) in pairs} == set()


def test_allowed_layers_form_an_order():
    # the declared rules themselves have no two-way pair, so the layers can be read in one import order
    assert not [(a, b) for a in ALLOWED for b in ALLOWED[a] if a != b and a in ALLOWED.get(b, ())]


def test_every_subpackage_says_what_it_holds_and_may_import():
    for sub in ALLOWED:
        if sub == SHARED:
            continue
        doc = ast.get_docstring(ast.parse((ROOT / sub / "__init__.py").read_text()))
        assert doc and "import" in doc, sub


def test_few_modules_at_the_top():
    top = [p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(top) <= 8, top


def test_no_two_module_names_a_reader_can_confuse():
    # the same name twice, or one name the start of another (estimate/estimators, nets/networks);
    # ``base`` is the one name kept per package on purpose: that package's base classes
    names = [p.stem for p in ROOT.rglob("*.py") if p.stem not in ("__init__", "base")]
    stems = sorted(set(names) | {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()})
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    close = [(a, b) for a, b in itertools.combinations(stems, 2)
             if os.path.commonprefix([a, b]) in (a, b) or len(os.path.commonprefix([a, b])) >= 6]
    assert close == []


PLUGIN = '''
from tiwbench.diffusion.losses import dsm_loss
from tiwbench.training.methods import Method


class HalfWeight(Method):
    """DSM on D_obs with D_bias samples at half weight (a third party's method)"""

    name = "half_weight"
    train_on = "obs"

    def loss(self, net, batch, ratio=None):
        return dsm_loss(net, batch) * (1 - 0.5 * (~batch.is_ref).float()).view(-1, *[1] * (batch.y.ndim - 1))
'''


def test_third_party_method_arrives_through_the_entry_point_group(install_plugin):
    install_plugin(METHODS, "tiwbench.methods", "half_weight_plugin", PLUGIN,
                   "half_weight = half_weight_plugin:HalfWeight")
    assert METHODS.origin("half_weight") == "entry point half_weight_plugin:HalfWeight"
    assert issubclass(METHODS.get("half_weight"), Method)
    r = CliRunner().invoke(app, ["ls", "methods"])
    assert any(line.startswith("half_weight ") and "entry point" in line for line in r.output.splitlines())
    sys.modules.pop("half_weight_plugin", None)


def test_the_command_layer_parses_and_delegates():
    """Every function of tiwbench/cli.py stays short (≤ 60 lines): a command builds one request and hands it
    to its layer; options with many fields live in a dataclass (cli.with_options)."""
    import ast
    from pathlib import Path

    import tiwbench

    tree = ast.parse((Path(tiwbench.__file__).parent / "cli.py").read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60}
    assert not long, long
