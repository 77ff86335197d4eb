"""The layer order of docs/ARCHITECTURE.md, enforced over the import graph.

Every ``.py`` under ``mrcnet/``, ``runtime/`` (``mrcnet.runtime``), ``export/`` (``mrcnet.export``) and
``benchmarks/`` is parsed with :mod:`ast`; imports at module level and inside functions are collected, relative
imports resolved to absolute names through the ``package_dir`` mapping of ``setup.cfg``.

Layers (a lower layer never imports a higher one)::

    mrcnet.runtime  <-  mrcnet (reference: model, data, train, eval)  <-  mrcnet.export  <-  benchmarks

Inside the reference, ``mrcnet.data`` is torch-free: it imports neither torch nor train / model / eval.
"""

import ast
import configparser
import subprocess
import sys

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


#: the data package (``mrcnet.data``) is torch-free: no torch, and nothing of the torch layers above it
DATA = "mrcnet.data"
TORCH_LAYERS = ("torch", "torchvision", "mrcnet.train", "mrcnet.model", "mrcnet.eval", "mrcnet.inference",
                "mrcnet.geometry", "mrcnet.checkpoint")
#: (module, imported name) allowed anyway, each with its reason
DATA_ALLOWED = {
    # deprecated alias: the torch Dataset moved to mrcnet.train.dataset; mrcnet.data.samples.__getattr__ imports
    # it only when one of its old names is asked for, so importing mrcnet.data.samples stays torch-free
    ("mrcnet.data.samples", "mrcnet.train.dataset"),
}


def test_data_package_is_torch_free():
    """(e) mrcnet.data.* imports neither torch nor the torch layers (train, model, eval) - the torch
    Dataset of training samples lives in mrcnet.train.dataset."""
    bad = [_where(p, ln, src) for mod, p, ln, name, src in _imports()
           if _within(mod, DATA) and any(_within(name, t) for t in TORCH_LAYERS)
           and (mod, name) not in DATA_ALLOWED]
    assert not bad, "the data package imports torch layers:\n" + "\n".join(bad)


def test_data_modules_import_without_torch():
    """Importing every mrcnet.data module leaves torch unloaded (a fresh interpreter)."""
    mods = sorted(m for m in MODULES if _within(m, DATA))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


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


# ------------------------------------------------------------------------ imports inside functions
#: third-party modules that may be imported inside a function (slow to import, or an optional extra);
#: the longest dotted prefix names the group (``torch.utils.tensorboard`` is not ``torch``)
HEAVY = {
    "tensorrt": "the gpu extras", "cuda": "cuda-python, the gpu extras", "pycuda": "the Jetson fallback",
    "onnxruntime": "the cpu / gpu extras (not gpu-trt11)", "onnx": "the train extra", "onnxslim": "the train extra",
    "torch": "the train extra; the runtime and the data generators are torch-free",
    "torch.utils.tensorboard": "tensorboard: slow, only when logging", "scipy": "the train extra, slow",
    "albumentations": "the train extra, slow (about 1.5 s)", "pycocotools": "the train extra (RLE masks)",
    "matplotlib": "slow, only for plots", "trimesh": "slow (about 0.5 s), only to build or load meshes",
}
#: files (or folders, ending in ``/``) another change is rewriting at the same time, exempt until it
#: lands; empty: every project file follows the rule
PENDING: tuple[str, ...] = ()


def _heavy_key(name):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in HEAVY:
            return ".".join(parts[:i])
    return None


def _project_module(name):
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _module_level_closure():
    """``{module: (project modules, heavy groups)}`` reached through module-level imports, transitively."""
    direct = {}
    for mod, p, ln, name, src in _imports(top_level_only=True):
        target = _project_module(name)
        mods, heavy = direct.setdefault(mod, (set(), set()))
        if target:
            mods.add(target)
        elif _heavy_key(name):
            heavy.add(_heavy_key(name))
    closure = {}
    for mod in MODULES:
        seen, stack, heavy = {mod}, [mod], set()
        while stack:
            m = stack.pop()
            mods, hv = direct.get(m, ((), ()))
            heavy |= set(hv)
            for t in mods:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        closure[mod] = (seen, heavy)
    return closure


def _function_imports():
    """``[(module, path, import node, has a comment)]`` for every import inside a function."""
    import io
    import tokenize

    out = []
    for module, (path, is_pkg) in MODULES.items():
        text = path.read_text()
        comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                    if tok.type == tokenize.COMMENT}
        own_line = {i + 1 for i, line in enumerate(text.splitlines()) if line.strip().startswith("#")}
        seen, explained_end = set(), set()  # end lines of imports that carry a reason
        for fn in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            nodes = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in seen]
            for node in sorted(nodes, key=lambda n: n.lineno):
                seen.add(id(node))
                # a reason above or at the end; or right below an import that has one (one reason per block)
                has = (node.lineno - 1 in own_line or node.lineno - 1 in explained_end
                       or any(ln in comments for ln in range(node.lineno, node.end_lineno + 1)))
                if has:
                    explained_end.add(node.end_lineno)
                out.append((module, path, node, has))
    return out


def test_imports_inside_functions_are_heavy_optional_or_cycle_breaking_with_a_reason():
    """Imports sit at the top of each module, except (a) a heavy or optional third-party module
    (:data:`HEAVY`) the module does not already import at its top, (b) a project module whose
    module-level imports pull in such a heavy module, (c) a project module that imports this one at
    module level (a cycle). Each kept-inside import has a one-line reason comment (on the line above
    or at its end; one comment covers a block of consecutive imports)."""
    closure = _module_level_closure()
    bad = []
    for module, path, node, has_comment in _function_imports():
        rel = str(path.relative_to(ROOT))
        if rel.startswith(PENDING) or any(rel == p for p in PENDING):
            continue
        own_heavy = closure[module][1]
        why = []
        for name in _resolve(module, MODULES[module][1], node):
            target = _project_module(name)
            if target:
                reached, heavy = closure[target]
                if heavy - own_heavy:
                    continue
                if module in reached:
                    continue
                why.append(f"{name}: a light project module, import it at the top")
            else:
                key = _heavy_key(name)
                if key is None:
                    why.append(f"{name}: not in HEAVY (slow or optional modules), import it at the top")
                elif key in own_heavy:
                    why.append(f"{name}: already imported at this module's top (through its imports)")
        if not why and not has_comment:
            why.append("no reason comment (a '# ...' line above or at the end of the import)")
        if why:
            bad.append(f"{_where(path, node.lineno, ast.unparse(node))}  <- {'; '.join(why)}")
    assert not bad, f"{len(bad)} import(s) inside functions:\n" + "\n".join(bad)


def test_pending_files_exist():
    """The exemptions above name real files (a stale entry would silently exempt nothing)."""
    for p in PENDING:
        assert (ROOT / p).exists(), p


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
