"""The layer order of docs/ARCHITECTURE.md, enforced over the import graph.

Every ``.py`` under ``mrcnet/``, ``runtime/`` (``mrcnet.runtime``), ``export/`` (``mrcnet.export``) and
``benchmarks/`` is parsed with :mod:`ast`; imports at module level and inside functions are collected, relative
imports resolved to absolute names through the ``package_dir`` mapping of ``setup.cfg``.

Layers (a lower layer never imports a higher one)::

    mrcnet.runtime  <-  mrcnet (reference: model, data, train, eval)  <-  mrcnet.export  <-  benchmarks
"""

import ast
import configparser

import pytest

from conftest import ROOT  # noqa: E402
RUNTIME = "mrcnet.runtime"
EXPORT = "mrcnet.export"


def _package_dirs():
    """``{import prefix: directory}`` from setup.cfg's ``[options] package_dir``, plus ``benchmarks``."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    dirs = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, path = line.partition("=")
        dirs[name.strip()] = ROOT / path.strip()
    dirs["benchmarks"] = ROOT / "benchmarks"
    return dirs


def _modules():
    """``{module name: (path, is_package)}`` for every project file; a file belongs to its longest prefix."""
    dirs = _package_dirs()
    mods = {}
    for prefix, base in sorted(dirs.items(), key=lambda kv: len(str(kv[1]))):
        for path in sorted(base.rglob("*.py")):
            if ".venv" in path.parts:
                continue
            rel = path.relative_to(base).with_suffix("")
            parts = list(rel.parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = (path, is_pkg)
    # a directory mapped to its own prefix (export/ -> mrcnet.export) wins over a parent's walk
    for prefix, base in dirs.items():
        for name in [m for m, (p, _) in mods.items() if not m.startswith(prefix)]:
            path = mods[name][0]
            if base in path.parents and not any(
                    other != base and other in path.parents and base in other.parents for other in dirs.values()):
                del mods[name]
    return mods


MODULES = _modules()


def _resolve(module, is_pkg, node):
    """Absolute names imported by an ``Import``/``ImportFrom`` node of ``module``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    else:
        base = node.module
    # ``from pkg import sub`` imports the submodule pkg.sub when it is one
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(top_level_only=False):
    """``[(module, path, line, imported name, source text)]`` over all project modules."""
    found = []
    for module, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else ast.walk(tree)
        if top_level_only:  # module level includes try/if blocks at the top, not function bodies
            nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                      ast.ClassDef))
                     for n in ast.walk(top)]
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _resolve(module, is_pkg, node):
                    found.append((module, path, node.lineno, name, ast.unparse(node)))
    return found


def _within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def _where(path, line, src):
    return f"{path.relative_to(ROOT)}:{line}: {src}"


def test_project_files_found():
    assert any(_within(m, RUNTIME) for m in MODULES) and any(_within(m, EXPORT) for m in MODULES)
    assert "mrcnet.model.mrcnet" in MODULES and "mrcnet.export.exporter" in MODULES
    assert MODULES["mrcnet.export.exporter"][0] == ROOT / "export" / "exporter.py"


#: what the runtime may import of mrcnet outside itself, and only in its assets locator: the torch-free
#: package root, whose folder holds the shipped demo assets (runtime/assets.py locates
#: ``mrcnet/assets/demo`` through ``mrcnet.__file__``)
ASSETS_LOCATOR = "mrcnet"
ASSETS_MODULE = "mrcnet.runtime.assets"


def test_runtime_imports_only_itself():
    """(a) mrcnet.runtime.* imports nothing of mrcnet but mrcnet.runtime.* and the assets locator (the
    exporter's engine builder is found through an entry point, never imported)."""
    bad = [_where(p, ln, src) for mod, p, ln, name, src in _imports()
           if _within(mod, RUNTIME) and _within(name, "mrcnet") and not _within(name, RUNTIME)
           and not (name == ASSETS_LOCATOR and mod == ASSETS_MODULE)]
    assert not bad, "the runtime imports outside itself:\n" + "\n".join(bad)


def test_reference_never_imports_export():
    """(b) the reference (mrcnet.* outside runtime and export) never imports mrcnet.export."""
    bad = [_where(p, ln, src) for mod, p, ln, name, src in _imports()
           if _within(mod, "mrcnet") and not _within(mod, RUNTIME) and not _within(mod, EXPORT)
           and _within(name, EXPORT)]
    assert not bad, "the reference imports the exporter:\n" + "\n".join(bad)


def test_no_module_level_import_cycles():
    """(c) no cycle between project modules through module-level imports."""
    graph, where = {}, {}
    for mod, p, ln, name, src in _imports(top_level_only=True):
        target = name
        while target and target not in MODULES:  # ``import a.b.func``-style names: nearest module
            target = target.rpartition(".")[0]
        if target and target != mod:
            graph.setdefault(mod, set()).add(target)
            where.setdefault((mod, target), _where(p, ln, src))
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cyc = stack[stack.index(nxt):] + [nxt]
                cycles.append(" -> ".join(cyc) + "\n    " + "\n    ".join(
                    where[(a, b)] for a, b in zip(cyc, cyc[1:])))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module, is_pkg, src, expected", [
    ("mrcnet.runtime.backends.tensorrt", False, "from ..manifest import Manifest", ["mrcnet.runtime.manifest"]),
    ("mrcnet.export", True, "from .subset import x", ["mrcnet.export.subset"]),
    ("mrcnet.data.video", False, "from . import scenes", ["mrcnet.data.scenes"]),
])
def test_relative_imports_resolve(module, is_pkg, src, expected):
    assert _resolve(module, is_pkg, ast.parse(src).body[0]) == expected


def test_benchmarks_use_public_apis():
    """(d) benchmarks/ import the exporter through its package API (``mrcnet.export``, no module of
    it), import no private (underscore) project name, and never extend ``sys.path``."""
    bad = []
    for mod, (path, _) in MODULES.items():
        if not _within(mod, "benchmarks"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mrcnet"):
                if node.module.startswith(EXPORT + "."):
                    bad.append(f"{path.name}:{node.lineno}: from {node.module} (use `from {EXPORT} import ...`)")
                bad += [f"{path.name}:{node.lineno}: private name {a.name}" for a in node.names
                        if a.name.startswith("_")]
                if any(part.startswith("_") for part in node.module.split(".")):
                    bad.append(f"{path.name}:{node.lineno}: private module {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in ("insert", "append") and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "path" and \
                    isinstance(node.value.value, ast.Name) and node.value.value.id == "sys":
                bad.append(f"{path.name}:{node.lineno}: sys.path.{node.attr}")
    assert not bad, "benchmarks reaching past the public APIs:\n" + "\n".join(bad)
