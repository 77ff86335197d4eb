"""Bad inputs of ``mrcnet-infer``: checkpoints that are not checkpoints, an unwritable --out or
--summary, negative --threads; targets naming images that are not in the dataset are reported
(they used to be skipped without a word); results finished before are left untouched."""
import json
import os
import pickle

import pytest
from badinput_checks import assert_ok, assert_one_line_error, invoke, tree_digest

from mrcnet.eval.infer_cli import main

from infer_fixtures import tiny_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def bad_model(kind, path):
    {"empty": lambda: path.write_bytes(b""), "text": lambda: path.write_text("hello"),
     "pickle": lambda: path.write_bytes(pickle.dumps({"network": os.getcwd}))}[kind]()
    return path


@pytest.mark.parametrize("kind, needle", [("empty", "empty file"), ("text", "not a readable PyTorch checkpoint"),
                                          ("pickle", "not a readable PyTorch checkpoint")])
def test_bad_checkpoint_is_one_line(kind, needle, assets, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("earlier results\n")
    m = bad_model(kind, tmp_path / f"{kind}.pth")
    r = invoke(main, ["--data", assets.data, "--model", m, "--out", out, "-q"])
    assert_one_line_error(r, 1, m.name, needle)
    assert out.read_text() == "earlier results\n"


@pytest.mark.parametrize("option", ["--out", "--summary"])
def test_unwritable_outputs_are_one_line(option, assets, tmp_path):
    (tmp_path / "f").write_text("x")
    before = tree_digest(tmp_path)
    args = ["--data", assets.data, "--model", assets.export, "-q", "--out", tmp_path / "o.csv"]
    args += [option, tmp_path / "f" / "x.json"]
    r = invoke(main, args)
    assert_one_line_error(r, 1, option, "f/x.json", "not a folder")
    assert tree_digest(tmp_path) == before


def test_negative_threads(assets, tmp_path):
    r = invoke(main, ["--data", assets.data, "--model", assets.export, "--threads", "-1"])
    assert_one_line_error(r, 2, "--threads")


def test_targets_naming_missing_images_are_reported(assets, tmp_path):
    """Class 6: targets of images that are not in the dataset count as misses, and the run says so."""
    targets = json.loads((assets.data / "test_targets_bop19.json").read_text())
    extra = [{"scene_id": 0, "im_id": 77, "obj_id": 1, "inst_count": 1},
             {"scene_id": 5, "im_id": 0, "obj_id": 1, "inst_count": 1}]
    tp = tmp_path / "targets.json"
    tp.write_text(json.dumps(targets + extra))
    r = invoke(main, ["--data", assets.data, "--model", assets.export, "--backend", "onnxruntime",
                      "--targets", tp, "--out", tmp_path / "r.csv", "-q", "--summary", tmp_path / "s.json"])
    assert_ok(r)
    assert "2 target image(s) are not in" in r.output and "scene 0 image 77" in r.output
    assert json.loads((tmp_path / "s.json").read_text())["unknown_targets"] == [[0, 77], [5, 0]]


def test_precision_on_onnx_runtime_is_refused(assets, tmp_path):
    """Class 6: --precision was silently ignored on ONNX Runtime."""
    r = invoke(main, ["--data", assets.data, "--model", assets.export, "--backend", "onnxruntime",
                      "--precision", "fp16", "--out", tmp_path / "r.csv", "-q"])
    assert_one_line_error(r, 1, "--precision fp16", "TensorRT")
    assert not (tmp_path / "r.csv").exists()
