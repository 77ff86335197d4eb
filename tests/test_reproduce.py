"""docs/REPRODUCE.md run end to end on synthetic look-alikes of T-LESS, LM-O, YCB-V and ITODD
(:mod:`mrcnet.data.lookalike`), found through ``$BOP_PATH`` as bop_toolkit finds them, with
random-weight ``small`` checkpoints in the official layout ``chkpt_<dataset>/<dataset>.pth``:
the commands run and write correctly named, well-formed results (not accuracy)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mrcnet.checkpoint import save_checkpoint
from mrcnet.data.lookalike import detections_path, write_lookalike
from mrcnet.eval import cli as eval_cli
from mrcnet.eval import infer_cli
from mrcnet.export import cli as export_cli
from mrcnet.model import build_model
from mrcnet.runtime.formats.bop import load_bop_results, load_test_targets
from mrcnet.runtime.presets import get_dataset
from mrcnet.runtime.render import Renderer

DATASETS = ("tless", "lmo", "ycbv", "itodd")
#: the split options of each dataset's test split (T-LESS: test_primesense, results named tless-test)
SPLIT_ARGS = {"tless": ["--split", "test", "--split-type", "primesense"]}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bop_root(tmp_path_factory):
    """``$BOP_PATH`` with one image per dataset, and the working folder with the checkpoints."""
    root = tmp_path_factory.mktemp("bop")
    work = tmp_path_factory.mktemp("work")
    r = Renderer()
    for i, name in enumerate(DATASETS):
        write_lookalike(name, root, n_images=1, seed=i, objects_per_image=(1, 2), renderer=r)
        p = get_dataset(name)
        torch.manual_seed(i)
        (work / f"chkpt_{name}").mkdir()
        save_checkpoint(work / f"chkpt_{name}" / f"{name}.pth", build_model(p.n_objects, p.depth_range, "small"),
                        dataset=name, half=True)
    r.release()
    return root, work


@pytest.fixture
def in_work(bop_root, monkeypatch):
    root, work = bop_root
    monkeypatch.setenv("BOP_PATH", str(root))
    monkeypatch.chdir(work)
    return root, work


def _run(cmd, args):
    res = CliRunner().invoke(cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _check_results(csv: Path, root: Path, name: str) -> list[dict]:
    """Well-formed BOP'19 rows: one per target instance of the split, objects of the dataset."""
    rows = load_bop_results(csv)  # parses and checks every row (rotations, header)
    targets = load_test_targets(root / name / "test_targets_bop19.json")
    assert len(rows) == sum(t["inst_count"] for t in targets) > 0
    assert {r["obj_id"] for r in rows} <= set(get_dataset(name).obj_ids)
    for r in rows:
        assert np.allclose(r["R"] @ r["R"].T, np.eye(3), atol=1e-4) and r["t"][2] > 0
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name", DATASETS)
def test_torch_inference_and_evaluation(in_work, name):
    root, work = in_work
    det = detections_path(root, name)
    _run(infer_cli.main, ["--data", name, *SPLIT_ARGS.get(name, []), "--model", f"chkpt_{name}/{name}.pth",
                          "--detections", str(det), "--out", "results/torch", "-q"])
    csv = work / "results" / "torch" / f"mrcnet_{name}-test.csv"  # BOP's METHOD_DATASET-SPLIT.csv
    _check_results(csv, root, name)
    split, split_args = "test", SPLIT_ARGS.get(name, [])
    if name == "tless":  # renders with models_cad (the preset's); --models picks another, a wrong one is refused
        res = CliRunner().invoke(infer_cli.main, ["--data", name, *split_args, "--model", f"chkpt_{name}/{name}.pth",
                                                  "--models", "models", "--out", "results/x", "-q"])
        assert res.exit_code != 0 and "--models models: no models_info.json" in res.output
        (root / name / "models_cad").rename(root / name / "cad")
        try:
            _run(infer_cli.main, ["--data", name, *split_args, "--model", f"chkpt_{name}/{name}.pth", "--models",
                                  str(root / name / "cad"), "--detections", str(det), "--out", "results/cad.csv",
                                  "-q"])
        finally:
            (root / name / "cad").rename(root / name / "models_cad")
        _check_results(work / "results" / "cad.csv", root, name)
    if name == "itodd":  # the test split has no ground truth: BOP's server scores it; val here
        assert not list((root / "itodd" / "test").glob("*/scene_gt.json"))
        res = CliRunner().invoke(infer_cli.main, ["--data", "itodd", "--model", "chkpt_itodd/itodd.pth",
                                                  "--out", "results/gtless", "-q"])
        assert res.exit_code != 0 and "has no ground truth" in res.output and "--detections" in res.output
        split, split_args = "val", ["--split", "val"]
        _run(infer_cli.main, ["--data", name, *split_args, "--model", f"chkpt_{name}/{name}.pth",
                              "--out", "results/torch", "-q"])
        csv = work / "results" / "torch" / "mrcnet_itodd-val.csv"
    res = _run(eval_cli.main, ["--data", name, *split_args, "--results", str(csv), "-q"])
    scores = json.loads((csv.parent / f"{csv.stem}_eval" / "scores_bop19.json").read_text())
    assert 0.0 <= scores["AR"] <= 1.0 and scores["inputs"]["models"].endswith("models_eval")
    assert f"{split}" in res.output


@pytest.mark.slow
def test_tless_export_chain_and_parity(in_work):
    """mrcnet-export --dataset tless (no --checkpoint: chkpt_tless/tless.pth and $BOP_PATH/tless/models_cad)
    -> mrcnet-infer --model EXPORT -> mrcnet-eval -> benchmarks/parity.py."""
    root, work = in_work
    res = _run(export_cli.main, ["--dataset", "tless", "-q"])
    export = work / "export_tless"
    man = json.loads((export / "manifest.json").read_text())
    assert man["dataset"] == "tless" and len(man["obj_ids"]) == 30
    assert "export_tless" in res.output
    det = detections_path(root, "tless")
    _run(infer_cli.main, ["--data", "tless", *SPLIT_ARGS["tless"], "--model", "export_tless", "--detections",
                          str(det), "--out", "results/onnx", "-q"])
    csv = work / "results" / "onnx" / "mrcnet_tless-test.csv"
    _check_results(csv, root, "tless")
    _run(eval_cli.main, ["--data", "tless", *SPLIT_ARGS["tless"], "--results", str(csv), "-q"])
    assert (csv.parent / "mrcnet_tless-test_eval" / "scores_bop19.json").is_file()
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "parity.py"), "--data", str(root / "tless"),
                          "--split", "test_primesense", "--checkpoint", "chkpt_tless/tless.pth", "--export",
                          "export_tless", "--detections", str(det), "--backends", "ort-fp32", "--out", "parity"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    parity = json.loads((work / "parity" / "parity.json").read_text())
    assert "ort-fp32" in json.dumps(parity) and (work / "parity" / "parity.md").is_file()


def test_export_without_checkpoint_says_where_it_looked(bop_root, tmp_path, monkeypatch):
    root, _ = bop_root
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOP_PATH", raising=False)
    res = CliRunner().invoke(export_cli.main, ["--dataset", "ycbv"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "chkpt_ycbv/ycbv.pth" in line and "pass --checkpoint FILE" in line
    (tmp_path / "chkpt_ycbv").mkdir()
    (tmp_path / "chkpt_ycbv" / "ycbv.pth").write_bytes(b"x")
    res = CliRunner().invoke(export_cli.main, ["--dataset", "ycbv"])  # no BOP_PATH: no models
    line = res.output.strip()
    assert res.exit_code == 2 and "\n" not in line
    assert "$BOP_PATH is not set" in line and "--models DIR" in line
    res = CliRunner().invoke(export_cli.main, ["--dataset", "ycbv", "--checkpoint", "chkpt_ycbv/ycbv.pth",
                                               "--out", "o"])  # a named checkpoint: the dataset's models too
    assert res.exit_code == 2 and "--models: not given and no ycbv models" in res.output
    monkeypatch.setenv("BOP_PATH", str(tmp_path / "nowhere"))
    res = CliRunner().invoke(export_cli.main, ["--dataset", "ycbv"])
    assert res.exit_code == 2 and str(tmp_path / "nowhere" / "ycbv") in res.output
    monkeypatch.setenv("BOP_PATH", str(root))  # models found; the 1-byte checkpoint is refused by name
    res = CliRunner().invoke(export_cli.main, ["--dataset", "ycbv"])
    assert res.exit_code == 2 and "chkpt_ycbv/ycbv.pth" in res.output and "not a readable PyTorch" in res.output


def test_weights_of_another_dataset_are_one_line(in_work):
    """T-LESS weights on LM-O data: the missing object model is named in one line (no traceback)."""
    root, _ = in_work
    res = CliRunner().invoke(infer_cli.main, ["--data", "lmo", "--model", "chkpt_tless/tless.pth", "--out", "r", "-q"])
    assert res.exit_code == 1, res.output
    line = res.output.strip().splitlines()[-1]
    assert "--model chkpt_tless/tless.pth" in line and "obj_000016.ply" in line
