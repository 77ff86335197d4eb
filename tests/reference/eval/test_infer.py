"""mrcnet-infer on a tiny synthetic BOP split: torch (checkpoint) and ONNX Runtime (export) write
valid BOP'19 CSVs that mrcnet-eval reads and that agree; GT boxes vs detections; a corrupt image
is skipped with a message; an interrupted run resumes."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from mrcnet.data import bop  # noqa: E402
from mrcnet.eval import cli as eval_cli  # noqa: E402
from mrcnet.eval import infer  # noqa: E402
from mrcnet.eval import infer_cli  # noqa: E402
from mrcnet.runtime.detections import Detection  # noqa: E402

from infer_fixtures import tiny_assets  # noqa: E402

pytestmark = pytest.mark.slow  # torch inference of the small preset (~3 s per image on 2 cores)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def torch_csv(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "torch.csv"
    res = CliRunner().invoke(infer_cli.main, ["--data", str(assets.data), "--model", str(assets.checkpoint),
                                              "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "backend torch-cpu" in res.output
    return out


@pytest.fixture(scope="module")
def ort_csv(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort") / "ort.csv"
    res = CliRunner().invoke(infer_cli.main, ["--data", str(assets.data), "--model", str(assets.export),
                                              "--backend", "onnxruntime", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "backend onnxruntime" in res.output
    return out


def n_target_instances(data):
    return sum(t["inst_count"] for t in bop.load_test_targets(data / "test_targets_bop19.json"))


def test_torch_and_ort_csvs_valid_and_agree(assets, torch_csv, ort_csv):
    targets = bop.load_test_targets(assets.data / "test_targets_bop19.json")
    want = sorted((t["scene_id"], t["im_id"], t["obj_id"]) for t in targets for _ in range(t["inst_count"]))
    assert len(want) == 4  # 2 images x 2 objects
    for path in (torch_csv, ort_csv):
        assert path.read_text().splitlines()[0] == bop.RESULTS_HEADER
        rows = bop.load_bop_results(path)
        assert sorted((r["scene_id"], r["im_id"], r["obj_id"]) for r in rows) == want
        for r in rows:
            assert np.allclose(r["R"] @ r["R"].T, np.eye(3), atol=1e-4)
            assert np.isfinite(r["t"]).all()
            assert r["time"] > 0 and r["score"] == 1.0
        times = {}
        for r in rows:  # the official convention: one time per image
            times.setdefault((r["scene_id"], r["im_id"]), set()).add(r["time"])
        assert all(len(v) == 1 for v in times.values())
        assert not path.with_name(path.name + ".partial").exists()
        assert not path.with_name(path.name + ".progress.jsonl").exists()
    cmp = infer.compare_results(torch_csv, ort_csv)
    assert cmp["pairs"] == 4 and cmp["unpaired"] == 0
    assert cmp["within"] == 1.0, cmp  # within 1 deg and 1 mm of torch
    assert cmp["trans_mm"]["max"] < 0.1 and cmp["rot_deg"]["max"] < 0.05


def test_mrcnet_eval_reads_the_csvs(assets, torch_csv, ort_csv, tmp_path):
    scores = {}
    for name, path in (("torch", torch_csv), ("ort", ort_csv)):
        res = CliRunner().invoke(eval_cli.main, ["--data", str(assets.data), "--results", str(path),
                                                 "--out", str(tmp_path / name), "-q"])
        assert res.exit_code == 0, res.output
        s = json.loads((tmp_path / name / "scores_bop19.json").read_text())
        assert 0.0 <= s["AR"] <= 1.0
        assert s["average_time_per_image"] > 0
        scores[name] = s["AR"]
    assert abs(scores["torch"] - scores["ort"]) < 0.05


def test_gt_boxes_vs_detections(assets, ort_csv, tmp_path):
    """Detections holding exactly the bbox_visib boxes (plus weaker duplicates and a non-target
    object) give the GT-box rows; a target without detections is reported and has no row."""
    ds = bop.BopDataset(assets.data, "test")
    targets = ds.targets()
    dets = []
    for rec in ds:
        for inst in rec.instances:
            x, y, w, h = inst.info["bbox_visib"]
            d = {"scene_id": rec.scene_id, "image_id": rec.im_id, "category_id": inst.obj_id,
                 "score": 0.9, "bbox": [x, y, w, h]}
            dets.append(d)
            dets.append({**d, "score": 0.3, "bbox": [x + 5, y + 5, w, h]})  # weaker duplicate: not used
    in_image0 = {t["obj_id"] for t in targets if t["im_id"] == 0}
    other = sorted({1, 2, 3} - in_image0)[0]  # 2 of the 3 objects are in each image
    # a confident detection of an object that is no target of image 0: ignored
    dets.append({"scene_id": 0, "image_id": 0, "category_id": other, "score": 0.99, "bbox": [1, 1, 30, 30]})
    det_file = tmp_path / "dets.json"
    bop.save_detections(det_file, dets)
    out = tmp_path / "det.csv"
    s = infer.infer_split(assets.data, assets.export, out, backend="onnxruntime", detections=det_file,
                          progress=False)
    assert s.complete and s.missing_detections == 0 and s.estimates == 4
    gt_rows, det_rows = bop.load_bop_results(ort_csv), bop.load_bop_results(out)
    assert [r["score"] for r in det_rows] == [0.9] * 4
    for a, b in zip(gt_rows, det_rows):
        assert (a["scene_id"], a["im_id"], a["obj_id"]) == (b["scene_id"], b["im_id"], b["obj_id"])
        assert np.allclose(a["R"], b["R"], atol=1e-6) and np.allclose(a["t"], b["t"], atol=1e-4)

    # drop the detections of one target: one fewer row, reported as missing
    dropped = targets[0]
    bop.save_detections(det_file, [d for d in dets if not (d["image_id"] == dropped["im_id"]
                                                            and d["category_id"] == dropped["obj_id"])])
    res = CliRunner().invoke(infer_cli.main, ["--data", str(assets.data), "--model", str(assets.export),
                                              "--detections", str(det_file), "--out", str(out), "-q",
                                              "--no-resume"])
    assert res.exit_code == 0, res.output
    assert "1 target instance(s) had no detection" in res.output
    rows = bop.load_bop_results(out)
    assert len(rows) == 3
    assert (dropped["im_id"], dropped["obj_id"]) not in {(r["im_id"], r["obj_id"]) for r in rows}


def test_select_detections_best_scores_per_inst_count(assets):
    ds = bop.BopDataset(assets.data, "test")
    rec = next(iter(ds))
    oid = rec.instances[0].obj_id
    dets = [{"category_id": oid, "score": s, "bbox": [10 * i, 5, 20, 20]} for i, s in enumerate((0.2, 0.8, 0.5))]
    dets.append({"category_id": 99, "score": 1.0, "bbox": [0, 0, 5, 5]})
    chosen, missing = infer.select_detections(rec, [{"obj_id": oid, "inst_count": 2}], dets)
    assert [d.score for d in chosen] == [0.8, 0.5] and missing == []
    assert isinstance(chosen[0], Detection) and np.allclose(chosen[0].box, [10, 5, 30, 25])
    chosen, missing = infer.select_detections(rec, [{"obj_id": oid, "inst_count": 4}], dets)
    assert len(chosen) == 3 and missing == [(oid, 1)]
    # GT mode: bbox_visib (x, y, w, h) -> xyxy
    chosen, missing = infer.select_detections(rec, [{"obj_id": oid, "inst_count": 1}], None)
    x, y, w, h = rec.instances[0].info["bbox_visib"]
    assert np.allclose(chosen[0].box, [x, y, x + w, y + h]) and chosen[0].source == "gt" and missing == []


def test_corrupt_image_is_skipped_with_message(assets, ort_csv, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(assets.data, data)
    bad = data / "test" / "000000" / "rgb" / "000001.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "bad.csv"
    res = CliRunner().invoke(infer_cli.main, ["--data", str(data), "--model", str(assets.export),
                                                              "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "skipped scene 0 image 1" in res.stderr and "000001.png" in res.stderr
    assert "1 image(s) skipped" in res.stdout
    rows = bop.load_bop_results(out)
    assert {r["im_id"] for r in rows} == {0} and len(rows) == 2
    ref = [r for r in bop.load_bop_results(ort_csv) if r["im_id"] == 0]
    assert all(np.allclose(a["t"], b["t"], atol=1e-4) for a, b in zip(rows, ref))


def test_interrupted_run_resumes(assets, ort_csv, tmp_path, renderer):
    out = tmp_path / "resume.csv"
    s1 = infer.infer_split(assets.data, assets.export, out, backend="onnxruntime", progress=False, limit=1,
                           renderer=renderer)
    partial = out.with_name(out.name + ".partial")
    assert not s1.complete and not out.exists() and partial.is_file()
    assert len(bop.load_bop_results(partial)) == 2
    with open(partial, "a") as f:  # a torn row of an image that was being written
        f.write("0,1,2,0.5,1 0 0")
    s2 = infer.infer_split(assets.data, assets.export, out, backend="onnxruntime", progress=False,
                           renderer=renderer)
    assert s2.complete and s2.resumed == 1 and s2.done == 1 and out.is_file() and not partial.exists()
    a, b = bop.load_bop_results(out), bop.load_bop_results(ort_csv)
    assert [(r["im_id"], r["obj_id"]) for r in a] == [(r["im_id"], r["obj_id"]) for r in b]
    assert all(np.allclose(x["t"], y["t"], atol=1e-4) for x, y in zip(a, b))
    # other settings refuse to resume over the interrupted run
    infer.infer_split(assets.data, assets.export, out, backend="onnxruntime", progress=False, limit=1,
                      renderer=renderer)
    with pytest.raises(infer.InferError, match="other settings"):
        infer.infer_split(assets.data, assets.export, out, backend="onnxruntime", progress=False,
                          detections=assets.detections, renderer=renderer)


def test_bad_inputs_are_one_line_errors(assets, tmp_path):
    r = CliRunner()
    res = r.invoke(infer_cli.main, ["--data", str(assets.data), "--model", str(tmp_path / "nope"), "-q"])
    assert res.exit_code != 0 and "--model" in res.output and "nope" in res.output
    res = r.invoke(infer_cli.main, ["--data", str(assets.data), "--model", str(assets.checkpoint),
                                    "--backend", "onnxruntime", "-q"])
    assert res.exit_code != 0 and "export it" in res.output
    res = r.invoke(infer_cli.main, ["--data", str(assets.data), "--model", str(assets.export),
                                    "--backend", "torch", "-q"])
    assert res.exit_code != 0 and "needs a .pth checkpoint" in res.output
    res = r.invoke(infer_cli.main, ["--data", str(tmp_path / "nodata"), "--model", str(assets.export),
                                    "-q"])
    assert res.exit_code != 0 and "nodata" in res.output and "Traceback" not in res.output


def test_checkpoint_manifest_official_fov(assets):
    from mrcnet.checkpoint import load_checkpoint

    model = load_checkpoint(assets.checkpoint)
    m = infer.checkpoint_manifest(model, assets.data)
    assert m.fov_variant == "inference" and m.obj_ids == [1, 2, 3] and m.n_rot == m.bn_group == 4
    assert m.model_path(2) == (assets.data / "models" / "obj_000002.ply").resolve()
    model.meta["fov_variant"] = "training"
    assert infer.checkpoint_manifest(model, assets.data).fov_variant == "training"
