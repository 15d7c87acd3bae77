"""The package's shape: the layering table of docs/architecture.md (which part of gptjax may
import which), no import cycle between modules, every import counted (function-local ones
included), modules and functions of a readable size, configs not installed as a package, no
data-source branches outside the data package's registry."""

import ast
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = REPO / "gptjax"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_PACKAGE_MODULES = 12
CONFIG_LISTINGS = ("defaults.py",)  # one function listing every key with its comment
TOP_LEVEL = {"__init__", "__main__", "cli", "errors", "workdir"}

# Which parts of gptjax each part may import (besides itself): the table of
# docs/architecture.md, lowest layer first. A part is a subpackage or a top-level module.
_BELOW_TRAINING = {"config", "data", "errors", "hardware", "inference", "metrics", "model",
                   "parallel", "storage", "workdir"}
LAYERS = {
    "errors": set(),
    "config": {"errors"},
    "hardware": {"errors"},
    "model": {"config", "errors"},
    "parallel": {"config", "errors", "model"},
    "storage": {"errors", "parallel"},
    "data": {"config", "errors", "storage"},
    "metrics": {"errors", "storage"},
    "workdir": {"config", "data", "errors", "model", "parallel", "storage"},
    "inference": {"config", "data", "errors", "model", "parallel", "storage", "workdir"},
    "training": _BELOW_TRAINING,
    "evaluation": _BELOW_TRAINING | {"training"},
    "compression": _BELOW_TRAINING | {"training", "evaluation", "performance"},
    "scaling": _BELOW_TRAINING | {"training"},
    "performance": _BELOW_TRAINING | {"training"},
    "serving": {"config", "data", "errors", "model", "parallel", "storage", "workdir",
                "inference"},
    "commands": _BELOW_TRAINING | {"training", "evaluation", "compression", "scaling",
                                   "performance", "serving"},
    "cli": {"commands", "config", "errors"},
    "__main__": {"cli"},
    "__init__": set(),
}
# The only gptjax imports inside a function: each defers a heavy third-party import.
LAZY = {("gptjax.data.tfds_text", "gptjax.data.local_text"): "imports tensorflow_datasets"}


def _modules(root: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> dict[str, bool]:
    """gptjax modules `name` imports -> whether every import of it is inside a function.
    Every import statement counts: module level, inside functions, under `if`/`try`."""
    found: dict[str, bool] = {}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                              ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from pkg import module` needs pkg.module; `from pkg import name` needs pkg.
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [base] + subs
        else:
            continue
        for t in targets:
            # A module's parent packages are initialised before it anyway: not an edge.
            if t in modules and not (name + ".").startswith(t + "."):
                found[t] = found.get(t, True) and id(node) in local
    return found


def _graph(root: pathlib.Path = PACKAGE) -> dict[str, dict[str, bool]]:
    modules = _modules(root)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def forbidden_edges(graph: dict) -> list[str]:
    """Imports the layering table does not allow (a part missing from it allows nothing)."""
    bad = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = _part(name), _part(target)
            if src != dst and dst not in LAYERS.get(src, set()):
                bad.append(f"{name} -> {target} ({src} may not import {dst})")
    return bad


def find_cycle(graph: dict) -> list[str] | None:
    """One import cycle among modules, or None. A package's __init__ runs before its submodules:
    `gptjax.data.x` importing `gptjax.data` is not a cycle unless `gptjax.data` (transitively)
    imports `gptjax.data.x` back."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def local_imports(graph: dict) -> list[str]:
    return [f"{name} imports {target} inside a function"
            for name, targets in sorted(graph.items())
            for target, inside in sorted(targets.items())
            if inside and (name, target) not in LAZY]


def test_layers_are_respected():
    assert not forbidden_edges(_graph()), "\n".join(forbidden_edges(_graph()))


def test_no_import_cycles():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_gptjax_imports_inside_functions():
    assert not local_imports(_graph()), "\n".join(local_imports(_graph()))


def test_a_planted_edge_is_caught(tmp_path):
    """The checks read every import: a function-local import of the training loop from the
    model is a forbidden edge, a cycle (train -> ... -> model -> train) and a local import."""
    root = tmp_path / "gptjax"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert not forbidden_edges(_graph(root)) and find_cycle(_graph(root)) is None
    with open(root / "model" / "gpt.py", "a") as f:
        f.write("\n\ndef planted():\n    from gptjax.training import train  # noqa\n"
                "    return train\n")
    graph = _graph(root)
    assert forbidden_edges(graph) == ["gptjax.model.gpt -> gptjax.training.train "
                                      "(model may not import training)"]
    cycle = find_cycle(graph)
    assert cycle is not None and "gptjax.model.gpt" in cycle and "gptjax.training.train" in cycle
    assert local_imports(graph) == ["gptjax.model.gpt imports gptjax.training.train inside a "
                                    "function"]


def test_no_module_named_like_a_builtin():
    import builtins
    shadowing = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                 if p.stem in dir(builtins) or p.stem in sys.stdlib_module_names]
    assert not shadowing, f"modules named like a builtin or a standard module: {shadowing}"


def test_layout_by_concern():
    """Top level: the entry points, errors, the workdir, and subpackages; each subpackage says
    its idea in its docstring and holds at most MAX_PACKAGE_MODULES modules."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL, f"modules outside a subpackage: {sorted(top - TOP_LEVEL)}"
    parts = {p.parent.relative_to(PACKAGE).parts[0] for p in PACKAGE.glob("*/__init__.py")}
    assert parts <= set(LAYERS), f"subpackages missing from LAYERS: {sorted(parts - set(LAYERS))}"
    architecture = (REPO / "docs" / "architecture.md").read_text()
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(REPO)}: say what the package holds"
        modules = [p for p in init.parent.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_PACKAGE_MODULES, f"{init.parent.name}: {len(modules)} modules"
    for part in [p for p in LAYERS if not p.startswith("__")]:
        assert re.search(rf"\b{re.escape(part)}\b", architecture), f"architecture.md: {part}"


# `python -m` entry points that live beside their library (docs/scaling.md, docs/evaluation.md).
MODULE_MAINS = {"gptjax/scaling/mup.py"}


def test_commands_apart_from_the_library():
    """Only gptjax/commands/ (and cli.py's dispatch) parse arguments: every subcommand of the
    table has its module there, and no library module defines add_args / run(args) or imports
    argparse."""
    from gptjax import cli
    for name in cli.COMMANDS:
        module = cli.command_module(name)
        assert module.__name__.startswith("gptjax.commands."), name
        assert callable(module.add_args) and callable(module.run), name
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel.startswith("gptjax/commands/") or rel in {"gptjax/cli.py", *MODULE_MAINS}:
            continue
        tree = ast.parse(path.read_text())
        commandlike = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                       and (n.name == "add_args" or [a.arg for a in n.args.args] == ["args"])]
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not commandlike, f"{rel} defines {commandlike}: a command's, in gptjax/commands/"
        assert "argparse" not in imports, f"{rel} parses arguments: move that to gptjax/commands/"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_module_and_function_sizes(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.name}: {len(lines)} lines"
    if path.name in CONFIG_LISTINGS:
        return
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(ast.parse("\n".join(lines)))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_configs_are_not_an_installed_package():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(not pattern.startswith("configs") for pattern in include)
    assert not (REPO / "configs" / "__init__.py").exists()


def test_lint_clean():
    """pyproject.toml's lint rules ([tool.ruff]: pyflakes, pycodestyle, import order, bugbear)
    hold in every file."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                          "--output-format", "concise", "."], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
