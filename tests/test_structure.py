"""The package's shape: no import cycles between gptjax modules, modules and functions of a
readable size, configs not installed as a package, no data-source branches outside the data
package's registry."""

import ast
import pathlib
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = REPO / "gptjax"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
CONFIG_LISTINGS = ("defaults.py",)  # one function listing every key with its comment


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """gptjax modules `name` imports at import time (module level, not inside functions)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.parse(path.read_text()).body:
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
        # A module's parent packages are initialised before it anyway: not an edge.
        found |= {t for t in targets if t in modules and not (name + ".").startswith(t + ".")}
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package's __init__ runs before its submodules: `gptjax.data.x` importing `gptjax.data`
    # is not a cycle unless `gptjax.data` (transitively) imports `gptjax.data.x` back.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


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
