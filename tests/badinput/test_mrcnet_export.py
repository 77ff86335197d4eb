"""Bad inputs of ``mrcnet-export``: checkpoints that are not checkpoints, an --out that is not an
export directory, broken meshes; a good export is world-readable and records its files' hashes."""
import json
import os
import pickle
import stat

import numpy as np
import pytest
from badinput_checks import assert_ok, assert_one_line_error, invoke, tree_digest

torch = pytest.importorskip("torch")

from mrcnet.export.cli import main  # noqa: E402
from mrcnet.testing import box_mesh, write_box_ply, write_ply  # noqa: E402

OBJ_IDS = [1, 2, 3]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from mrcnet.checkpoint import save_checkpoint
    from mrcnet.model import build_model

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(d / "small.pth", build_model(3, (0.05, 1.7), "small").eval(), dataset="synth", obj_ids=OBJ_IDS)
    models = d / "models"
    models.mkdir()
    for i in OBJ_IDS:
        write_box_ply(models / f"obj_{i:06d}.ply")
    return d / "small.pth", models


@pytest.fixture(scope="module")
def good_export(ckpt, tmp_path_factory):
    """One successful export (made under umask 022)."""
    out = tmp_path_factory.mktemp("good") / "export"
    old = os.umask(0o022)
    try:
        r = invoke(main, ["--checkpoint", ckpt[0], "--models", ckpt[1], "--out", out, "--quiet"])
    finally:
        os.umask(old)
    assert_ok(r)
    return out


def test_export_files_are_world_readable_and_hashed(good_export):
    """Class 8 (files readable by their owner only) and class 1 (hashes in the manifest)."""
    files = [p for p in good_export.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.name.startswith(".")]
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044, f"{p}: {oct(p.stat().st_mode)}"
    raw = json.loads((good_export / "manifest.json").read_text())
    assert set(raw["files"]) >= {"classifier.onnx", "regressor.onnx", "models/obj_000001.ply"}
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in raw["files"].values())


def _bad_ckpt(kind, d):
    p = d / f"{kind}.pth"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a checkpoint\n")
    elif kind == "pickle":
        p.write_bytes(pickle.dumps({"network": os.getcwd}))  # a callable: refused by weights_only
    return p


@pytest.mark.parametrize("kind, needle", [
    ("empty", "empty file (0 bytes)"),
    ("text", "not a readable PyTorch checkpoint"),
    ("truncated", "not a readable PyTorch checkpoint"),
    ("pickle", "not a readable PyTorch checkpoint"),
])
def test_bad_checkpoint_is_one_line(kind, needle, ckpt, tmp_path):
    """Class 5: a truncated, text, pickle or 0-byte checkpoint (the 0-byte one broke the error
    formatting itself)."""
    if kind == "truncated":
        p = tmp_path / "truncated.pth"
        p.write_bytes(ckpt[0].read_bytes()[:5000])
    else:
        p = _bad_ckpt(kind, tmp_path)
    r = invoke(main, ["--checkpoint", p, "--models", ckpt[1], "--out", tmp_path / "o"])
    assert_one_line_error(r, 2, p.name, needle)
    assert not (tmp_path / "o" / "manifest.json").exists()


def _bop_dataset(root):
    (root / "models").mkdir(parents=True)
    write_box_ply(root / "models" / "obj_000001.ply")
    (root / "test" / "000001").mkdir(parents=True)
    (root / "test_targets_bop19.json").write_text("[]")
    return root


@pytest.mark.parametrize("where, needle", [
    ("dataset", "not an export directory"),
    ("file", "is a file"),
    ("under a file", "cannot create"),
])
def test_out_that_is_not_an_export_directory_is_refused(where, needle, ckpt, tmp_path):
    """Class 4 (an export into a BOP dataset overwrote its models/) and class 5 (unwritable --out)."""
    if where == "dataset":
        out = _bop_dataset(tmp_path / "ds")
    elif where == "file":
        out = tmp_path / "f"
        out.write_text("x")
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub"
    before = tree_digest(tmp_path)
    r = invoke(main, ["--checkpoint", ckpt[0], "--models", ckpt[1], "--out", out])
    assert_one_line_error(r, 2, str(out), needle)
    assert tree_digest(tmp_path) == before


def _broken_mesh(kind, path):
    v, f = box_mesh(60.0)
    if kind == "no faces":
        path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                        "property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
        return
    if kind == "NaN vertex":
        v = v.copy()
        v[0, 0] = np.nan
    elif kind == "bad indices":
        f = f.copy()
        f[0, 0] = 10_000
    write_ply(path, v, f)


@pytest.mark.parametrize("kind", ["no faces", "NaN vertex", "bad indices"])
def test_broken_mesh_is_refused_at_export_and_the_old_export_survives(kind, ckpt, good_export, tmp_path):
    """Class 6: PLY files with no faces, NaN vertices or bad indices (the error used to appear only
    later, on the device); an export already in --out is left as it was."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(ckpt[1], models)
    _broken_mesh(kind, models / "obj_000002.ply")
    out = tmp_path / "export"
    shutil.copytree(good_export, out)
    before = tree_digest(out)
    r = invoke(main, ["--checkpoint", ckpt[0], "--models", models, "--out", out, "--quiet"])
    assert_one_line_error(r, 2, "obj_000002.ply")
    assert tree_digest(out) == before
