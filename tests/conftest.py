"""Shared test fixtures and paths."""
import os
import pathlib
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
TESTS = pathlib.Path(__file__).resolve().parent  # the helper modules (infer_fixtures, trt_fakes, ...) live here
ROOT = TESTS.parent  # the repository
DATA = TESTS / "data"
BENCHMARKS = ROOT / "benchmarks"  # the benchmark scripts, imported by their tests as top-level modules
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(scope="module")
def renderer():
    """A fresh ``mrcnet.runtime.render.Renderer`` per test module (EGL; Mesa llvmpipe without a GPU),
    released after the module; skips the module's tests where no EGL exists. A module that needs
    objects in it extends this fixture under the same name (``def renderer(renderer): ...``)."""
    from mrcnet.runtime.render import RenderContextError, Renderer

    try:
        r = Renderer()
    except RenderContextError as e:  # pragma: no cover - no EGL at all
        pytest.skip(f"no EGL renderer: {e}")
    yield r
    r.release()


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory):
    """The shipped demo checkpoint exported by ``mrcnet-export`` with its defaults (once per session)."""
    from click.testing import CliRunner

    from mrcnet.export.cli import main as export_main  # needs torch: imported only by the tests that use it

    out = tmp_path_factory.mktemp("demo") / "export"
    r = CliRunner().invoke(export_main, ["--out", str(out), "--quiet"])  # default checkpoint and models: the demo's
    assert r.exit_code == 0, r.output
    return out
