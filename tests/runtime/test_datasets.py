"""Datasets found as bop_toolkit finds them ($BOP_PATH/NAME or a folder), the models folder each split
renders / evaluates with (presets' official model_folders, models_eval, --models), BOP results
names and the detection choice of mrcnet-infer (best inst_count or all)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mrcnet.data.bop import ImageRecord
from mrcnet.eval.infer import InferError, results_path, select_detections
from mrcnet.runtime.datasets import (DatasetPathError, dataset_name, eval_models_dir, find_dataset,
                                     render_models_dir)
from mrcnet.runtime.formats.bop import bop_results_name
from mrcnet.runtime.presets import DATASETS, get_dataset


def _models(folder):
    folder.mkdir(parents=True)
    (folder / "models_info.json").write_text("{}")
    return folder


def test_presets_know_the_official_models_folders():
    tless = get_dataset("tless")
    assert tless.models_for("test_primesense") == "models_cad" and tless.models_for("train_pbr") == "models_cad"
    assert tless.models_for("train_render_reconst") == "models_cad"  # not named: the preset's usual folder
    for name in ("lmo", "ycbv", "itodd"):
        assert get_dataset(name).models_for("test") == "models" and get_dataset(name).models_for(None) == "models"
    assert get_dataset("synth").models_for("test") == "models"
    assert get_dataset("lmo").official_decoders == 15
    assert all(p.official_decoders is None for p in DATASETS.values() if p.name != "lmo")


def test_find_dataset_as_bop_toolkit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bop = tmp_path / "bop"
    (bop / "tless").mkdir(parents=True)
    env = {"BOP_PATH": str(bop)}
    assert find_dataset("tless", env=env) == bop / "tless"
    assert find_dataset(str(bop / "tless"), env={}) == bop / "tless"  # an explicit folder
    (tmp_path / "tless").mkdir()
    assert find_dataset("tless", env=env) == tmp_path.joinpath("tless").relative_to(tmp_path)  # ./tless first
    with pytest.raises(DatasetPathError) as e:
        find_dataset("ycbv", env=env)
    msg = str(e.value)
    assert "\n" not in msg and f"$BOP_PATH/ycbv = {bop / 'ycbv'}" in msg and "--data ycbv" in msg
    with pytest.raises(DatasetPathError, match=r"\$BOP_PATH is not set"):
        find_dataset("ycbv", env={})
    with pytest.raises(DatasetPathError, match="looked in /no/such/lmo\\)"):
        find_dataset("/no/such/lmo", env=env)  # a path is not looked up under BOP_PATH
    assert dataset_name(bop / "tless") == "tless" and dataset_name(tmp_path, "LMO") == "lmo"
    assert dataset_name(tmp_path / "mydata") is None


def test_models_folders_render_eval_and_override(tmp_path):
    root = tmp_path / "tless"
    cad, ev = _models(root / "models_cad"), _models(root / "models_eval")
    assert render_models_dir(root, None, "test_primesense") == cad  # T-LESS renders with the CAD models
    assert eval_models_dir(root) == ev  # BOP's metrics: models_eval
    assert render_models_dir(root, None, "test_primesense", "models_eval") == ev
    other = _models(tmp_path / "elsewhere")
    assert render_models_dir(root, None, None, str(other)) == other and eval_models_dir(root, str(other)) == other
    with pytest.raises(DatasetPathError, match=r"--models nope: no models_info.json in .*tless/nope"):
        render_models_dir(root, None, None, "nope")
    plain = tmp_path / "ycbv"
    with pytest.raises(DatasetPathError) as e:
        render_models_dir(plain, None, "test")
    assert "\n" not in str(e.value) and str(plain / "models") in str(e.value)
    m = _models(plain / "models")
    assert render_models_dir(plain, None, "test") == m and eval_models_dir(plain) == m  # no models_eval
    synth = tmp_path / "data"
    assert render_models_dir(_models(synth / "models").parent, "tless", "test_primesense") == synth / "models"


def test_bop_results_names(tmp_path):
    assert bop_results_name("mrcnet", "tless", "test") == "mrcnet_tless-test.csv"
    assert bop_results_name("mrcnet-trt-fp16", "itodd", "val") == "mrcnet-trt-fp16_itodd-val.csv"
    for bad in (("my_method", "tless", "test"), ("m", "t-less", "test"), ("m", "tless", "test_primesense")):
        with pytest.raises(ValueError, match="BOP results name"):
            bop_results_name(*bad)
    data = tmp_path / "tless"
    data.mkdir()
    assert results_path(None, data, "x.pth", "test").as_posix() == "results/mrcnet_tless-test.csv"
    assert results_path(tmp_path / "out", data, "x.pth", "test", method="run1") == \
        tmp_path / "out" / "run1_tless-test.csv"
    assert results_path(tmp_path / "a.csv", data, "x.pth", "test") == tmp_path / "a.csv"
    assert results_path("r", data, "x.pth", "test_primesense").name == "mrcnet_tless-test.csv"  # the folder name
    # the dataset: --dataset, else the folder's name when it names a preset, else an export's manifest
    other = tmp_path / "mydata"
    other.mkdir()
    assert results_path("r", other, "x.pth", "test", dataset="lmo").name == "mrcnet_lmo-test.csv"
    export = tmp_path / "exp"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"dataset": "ycbv"}))  # unreadable as a manifest
    assert results_path("r", other, export, "test").name == "mrcnet_mydata-test.csv"
    with pytest.raises(InferError, match="method 'a_b'.*pass --method"):
        results_path("r", data, "x.pth", "test", method="a_b")


def test_all_detections_or_the_best_inst_count():
    rec = ImageRecord(scene_id=1, im_id=2, K=np.eye(3), depth_scale=1.0, image_path=None, depth_path=None,
                      scene_dir=None, instances=[], camera={})
    dets = [{"category_id": 5, "score": s, "bbox": [10 * i, 0, 5, 5]} for i, s in enumerate((0.2, 0.9, 0.5))]
    dets.append({"category_id": 7, "score": 0.99, "bbox": [0, 0, 5, 5]})
    targets = [{"obj_id": 5, "inst_count": 1}]
    best, missing = select_detections(rec, targets, dets)
    assert [d.score for d in best] == [0.9] and missing == []
    every, _ = select_detections(rec, targets, dets, all_detections=True)
    assert [d.score for d in every] == [0.9, 0.5, 0.2]  # every detection of the target object, best first
    none, missing = select_detections(rec, [{"obj_id": 9, "inst_count": 2}], dets, all_detections=True)
    assert none == [] and missing == [(9, 2)]


def test_train_and_eval_take_models(tmp_path):
    """mrcnet-train and mrcnet-eval: --models names the folder; a wrong one is a one-line error."""
    from mrcnet.eval import cli as eval_cli
    from mrcnet.train import cli as train_cli

    data = tmp_path / "tless"
    _models(data / "models_cad")
    (data / "train_pbr" / "000000").mkdir(parents=True)
    res = CliRunner().invoke(train_cli.main, ["--data", str(data), "--split", "train_pbr", "--dataset", "tless",
                                              "--models", "nope", "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "--models nope: no models_info.json" in res.output
    res = CliRunner().invoke(eval_cli.main, ["--data", str(data), "--results", str(tmp_path / "r.csv"),
                                             "--models", "nope", "-q"])
    assert res.exit_code != 0 and "--models nope: no models_info.json" in res.output
