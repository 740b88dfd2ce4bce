"""The rules of the house (README "Architecture"), checked on every test run.

- the layer contracts of ``[tool.importlinter]`` in pyproject.toml hold (``lint-imports``);
- imports sit at the top of modules: the only deferred imports are optional heavy libraries, the command
  line loading a command when it runs, the package's PEP 562 names and the deprecation shims, and each
  carries a one-line comment giving its reason;
- no private name of one moekit module is used by another;
- no module is over 1,000 lines.

Only moekit/ is scanned (tests may use whatever they test). Each scan lists its offenders as file:line.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "moekit"

# Heavy libraries that may be imported inside a function, and why. Nothing else: scipy, scikit-learn,
# safetensors, pyarrow, tqdm and torch (torch.distributed included) are core dependencies, imported at
# the top of the modules that use them.
DEFERRABLE = {
    "matplotlib": "slow to import (about 0.3 s) and needed only when a picture is drawn, so that report, "
                  "plotting and the commands that import them load fast for everything else",
    "pandas": "slow to import (about 0.65 s): needed only when a user's DataFrame comes in or a DataFrame "
              "(a coefficient table) is asked for",
    "formulaic": "slow to import (about 0.9 s with pandas): needed only by models written as formulas",
}
# modules whose deferred imports are the command line's per-command loading (and nothing else)
CLI_LOADERS = {"moekit/cli/__init__.py"}
# PEP 562 module __getattr__ that loads public names on first use: {module: function name}
LAZY_GETATTR = {"moekit/__init__.py": "__getattr__", "moekit/mdn.py": "__getattr__"}
# deprecated paths: thin modules that re-export from the new homes with a DeprecationWarning
SHIMS = {"moekit/hme.py", "moekit/hierarchy.py", "moekit/metrics.py", "moekit/tracking.py"}

# Files another change is still moving into the house (issue 11); their offences are checked apart, as an
# expected failure, so that the rest of the house is held to the rules now. Remove the entry when it passes.
IN_PROGRESS: tuple = ()

MAX_LINES = 1000
LONG = 500


def _in_progress(rel: str) -> bool:
    return rel.startswith(IN_PROGRESS)


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    """Whether a dotted name of moekit is a module or package (not a name defined in one)."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` reads from, when it is moekit's; else None."""
    if node.level == 0:
        mod = node.module or ""
        return mod if mod == "moekit" or mod.startswith("moekit.") else None
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _comments(source: str) -> dict[int, str]:
    """Comment text by line number."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def _is_reason(comment: str | None) -> bool:
    """A comment that says why: words left after tool directives (noqa, pragma, type: ignore)."""
    if not comment:
        return False
    text = re.sub(r"#\s*(noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?|pragma:[^-]*|type:\s*ignore(\[[^\]]*\])?)", "#", comment)
    return len(re.findall(r"[A-Za-z]{2,}", text)) >= 3


def _is_dynamic_import(node: ast.AST) -> bool:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return name in ("import_module", "__import__")


def _deferred_imports(tree: ast.Module):
    """(node, names of the enclosing functions and classes, imported top-level packages) of every import
    that runs later than the module's own import: inside a function or class, or a dynamic import anywhere."""
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            inner = scope + [child.name] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                else scope + ["<lambda>"] if isinstance(child, ast.Lambda) else scope
            if scope and isinstance(child, ast.Import):
                found.append((child, scope, {a.name.split(".")[0] for a in child.names}))
            elif scope and isinstance(child, ast.ImportFrom):
                found.append((child, scope, {"moekit" if child.level else (child.module or "").split(".")[0]}))
            elif _is_dynamic_import(child):
                found.append((child, scope, {"<dynamic>"}))
            visit(child, inner)

    visit(tree, [])
    return found


def _allowed(rel: str, scope: list, packages: set) -> bool:
    if packages <= set(DEFERRABLE):
        return True
    if rel in CLI_LOADERS or rel in SHIMS:
        return True
    return rel in LAZY_GETATTR and scope[:1] == [LAZY_GETATTR[rel]]


def _deferred_offences(in_progress: bool) -> list[str]:
    out = []
    for path in _modules():
        rel = _rel(path)
        if _in_progress(rel) != in_progress:
            continue
        source = path.read_text(encoding="utf-8")
        comments = _comments(source)
        explained_until = -1  # the last line of a run of imports under one reason comment
        for node, scope, packages in sorted(_deferred_imports(ast.parse(source)), key=lambda t: t[0].lineno):
            where = f"{rel}:{node.lineno} ({'.'.join(scope) or 'module level'}): {ast.unparse(node)}"
            if not _allowed(rel, scope, packages):
                what = ", ".join(sorted(packages)).replace("<dynamic>", "a module named at run time")
                out.append(f"{where}: a deferred import of {what} (move it to the top)")
                continue
            if _is_reason(comments.get(node.lineno)) or _is_reason(comments.get(node.lineno - 1)) \
                    or explained_until == node.lineno - 1:
                explained_until = node.end_lineno
            else:
                out.append(f"{where}: no one-line comment giving the reason (same line or the line before)")
    return out


def _private_uses(path: Path, source: str) -> list[str]:
    """Private names of other moekit modules that one module uses: ``from moekit.x import _name`` and
    ``x._name`` where ``x`` is a moekit module (private modules such as ``moekit._validation`` are fine)."""
    rel, own = _rel(path), _module_name(path)
    tree = ast.parse(source)
    out = []
    modules = {}  # local name -> the moekit module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "moekit" or a.name.startswith("moekit."):
                    modules[a.asname or "moekit"] = a.name if a.asname else "moekit"
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(path, node)
            if src is None:
                continue
            for a in node.names:
                if _is_module(f"{src}.{a.name}"):
                    modules[a.asname or a.name] = f"{src}.{a.name}"
                elif _private(a.name) and src != own:
                    out.append(f"{rel}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not (isinstance(base, ast.Name) and base.id in modules):
            continue
        mod = modules[base.id]
        for attr in chain:  # down the chain of modules to the first name that is not a module
            if _is_module(f"{mod}.{attr}"):
                mod = f"{mod}.{attr}"
                continue
            if _private(attr) and mod != own:
                out.append(f"{rel}:{node.lineno}: {mod}.{attr}")
            break
    return sorted(set(out), key=lambda s: (int(s.split(":")[1]), s))


def _private_offences(in_progress: bool) -> list[str]:
    out = []
    for path in _modules():
        if _in_progress(_rel(path)) == in_progress:
            out += _private_uses(path, path.read_text(encoding="utf-8"))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _sizes(in_progress: bool) -> dict[str, int]:
    return {_rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()
            if _in_progress(_rel(p)) == in_progress}


# ------------------------------------------------------------------ the layer contracts
def _lint_imports_command() -> list[str]:
    exe = Path(sys.executable).parent / ("lint-imports.exe" if os.name == "nt" else "lint-imports")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("lint-imports")
    if found:
        return [found]
    return [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def test_layer_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    # it reads [tool.importlinter] from pyproject.toml in the folder it runs in
    r = subprocess.run(_lint_imports_command() + ["--no-cache", "--no-logo"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, f"lint-imports found broken contracts:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"


# ------------------------------------------------------------------ imports at the top
def test_imports_sit_at_the_top():
    bad = _deferred_offences(in_progress=False)
    assert not bad, "imports inside functions that should be at the top of their module, or that lack " \
                    "their reason:\n" + "\n".join(bad)


# ------------------------------------------------------------------ private names
def test_no_private_names_across_modules():
    bad = _private_offences(in_progress=False)
    assert not bad, "private names of one moekit module used in another (make them public, or move the " \
                    "code to where it is used):\n" + "\n".join(bad)


# ------------------------------------------------------------------ size
def test_no_module_over_1000_lines():
    sizes = _sizes(in_progress=False)
    over = [f"{m}: {n} lines" for m, n in sorted(sizes.items()) if n > MAX_LINES]
    long = [f"{m}: {n}" for m, n in sorted(sizes.items(), key=lambda t: -t[1]) if n > LONG]
    assert not over, f"modules over {MAX_LINES} lines (split them by concept):\n" + "\n".join(over) + \
        f"\n(over {LONG} lines: {', '.join(long)})"


# ------------------------------------------------------------------ the checks themselves
def test_the_scans_see_what_they_should(tmp_path, monkeypatch):
    src = (
        "import math\n"
        "def f():\n"
        "    import scipy.special\n"
        "    import matplotlib.pyplot as plt\n"
        "    # slow to import, needed for plots only\n"
        "    import pandas as pd\n"
        "    from matplotlib import colors  # noqa: F401\n"
        "    return importlib.import_module('x')\n"
    )
    tree = ast.parse(src)
    found = [(n.lineno, sorted(p)) for n, _, p in _deferred_imports(tree)]
    assert found == [(3, ["scipy"]), (4, ["matplotlib"]), (6, ["pandas"]), (7, ["matplotlib"]), (8, ["<dynamic>"])]
    assert _is_reason("# slow to import, needed for plots only")
    assert not _is_reason("# noqa: F401") and not _is_reason("# pragma: no cover")
    assert _is_reason("# noqa: SIM115 - the pipe reader left; say nothing more")
    assert _resolve(PKG / "cli" / "evaluate.py", ast.parse("from ..report import x").body[0]) == "moekit.report"
    assert _resolve(PKG / "datasets" / "__init__.py", ast.parse("from . import x").body[0]) == "moekit.datasets"
    assert _is_module("moekit.report") and _is_module("moekit.cli") and not _is_module("moekit.report.make_report")
    src = (
        "import moekit.report\n"
        "from .. import report as R, _validation\n"
        "from ..report import _LABELS, make_report\n"
        "from .parser import __all__, _x\n"
        "R._fmt(R.make_report, moekit.report._CSS, _validation.check_int, moekit.__version__)\n"
    )
    assert _private_uses(PKG / "cli" / "parser.py", src) == [
        "moekit/cli/parser.py:3: from ..report import _LABELS",
        "moekit/cli/parser.py:5: moekit.report._CSS",
        "moekit/cli/parser.py:5: moekit.report._fmt",
    ]
