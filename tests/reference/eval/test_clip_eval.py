"""Pose-track scoring against a clip's ground truth (mrcnet.eval.clip_eval) on the shipped demo clip."""
import json

import numpy as np
import pytest

from mrcnet.data import bop
from mrcnet.eval.clip_eval import evaluate_clip
from mrcnet.runtime.geometry import rotz
from mrcnet.runtime.assets import DEMO_CAMERA, DEMO_DIR, DEMO_MODELS


def _write_track(path, gt, edit=lambda oid, R, t: (R, t), drop=()):
    with open(path, "w") as f:
        for frame, insts in sorted(gt.items()):
            objs = []
            for g in insts:
                if (frame, g["obj_id"]) in drop:
                    continue
                R, t = edit(g["obj_id"], np.asarray(g["cam_R_m2c"]).reshape(3, 3), np.asarray(g["cam_t_m2c"]).reshape(3))
                objs.append({"obj_id": g["obj_id"], "R": R.tolist(), "t": t.tolist(), "score": 1.0})
            f.write(json.dumps({"frame": frame, "objects": objs}) + "\n")


@pytest.fixture(scope="module")
def clip():
    gt = bop.load_scene_gt(DEMO_DIR / "scene_gt.json")
    K = np.asarray(json.loads((DEMO_DIR / DEMO_CAMERA).read_text())["cam_K"]).reshape(3, 3)
    return gt, K


def test_ground_truth_track_scores_one(tmp_path, clip):
    gt, K = clip
    _write_track(tmp_path / "p.jsonl", gt)
    r = evaluate_clip(tmp_path / "p.jsonl", DEMO_DIR / "scene_gt.json", DEMO_MODELS, K)
    assert r["overall"]["AR"] == 1.0 and r["overall"]["within_5deg_5cm"] == 1.0
    assert r["overall"]["rot_err_deg"] < 1e-3


def test_offsets_and_misses(tmp_path, clip):
    gt, K = clip
    frames = sorted(gt)
    drop = {(frames[0], g["obj_id"]) for g in gt[frames[0]]}
    # 100 mm along z for object 1 (beyond every MSSD threshold of a 136 mm part): never correct;
    # the others exact, but frame 0 missing.
    _write_track(tmp_path / "p.jsonl", gt, edit=lambda o, R, t: (R, t + [0, 0, 100.0]) if o == 1 else (R, t), drop=drop)
    r = evaluate_clip(tmp_path / "p.jsonl", DEMO_DIR / "scene_gt.json", DEMO_MODELS, K)
    n_frames = len(frames)
    assert r["per_object"][1]["AR_MSSD"] == 0.0
    assert r["per_object"][1]["trans_err_mm"] == pytest.approx(100.0, abs=1e-6)
    for o in (2, 3):
        assert r["per_object"][o]["AR_MSSD"] == pytest.approx((n_frames - 1) / n_frames)
        assert r["per_object"][o]["found"] == n_frames - 1


def test_symmetric_turn_is_not_an_error(tmp_path, clip):
    gt, K = clip
    infos = bop.load_models_info(DEMO_MODELS / "models_info.json")
    sym = np.asarray(infos[3].symmetries_discrete[0]).reshape(4, 4)  # the plate's discrete symmetry
    _write_track(tmp_path / "p.jsonl", gt,
                 edit=lambda o, R, t: (R @ sym[:3, :3], t + R @ sym[:3, 3]) if o == 3 else (R, t))
    r = evaluate_clip(tmp_path / "p.jsonl", DEMO_DIR / "scene_gt.json", DEMO_MODELS, K)
    assert r["per_object"][3]["AR_MSSD"] == 1.0 and r["per_object"][3]["rot_err_deg"] < 1e-3
    # a turn about the camera axis that is not a symmetry is a rotation error
    _write_track(tmp_path / "q.jsonl", gt, edit=lambda o, R, t: (rotz(np.radians(20.0)) @ R, t) if o == 1 else (R, t))
    r = evaluate_clip(tmp_path / "q.jsonl", DEMO_DIR / "scene_gt.json", DEMO_MODELS, K)
    assert r["per_object"][1]["rot_err_deg"] == pytest.approx(20.0, abs=1e-3)


def test_cli_scores_the_demo_clip_and_rejects_bad_input(tmp_path, clip):
    import subprocess
    import sys

    gt, _ = clip
    _write_track(tmp_path / "p.jsonl", gt)

    ok = subprocess.run([sys.executable, "-m", "mrcnet.eval.clip_eval", str(tmp_path / "p.jsonl"),
                         "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "| all |" in ok.stdout and "AR (mean of AR_MSSD and AR_MSPD): 1.000" in ok.stdout
    assert json.loads((tmp_path / "r.json").read_text())["overall"]["AR"] == 1.0
    (tmp_path / "bad.jsonl").write_text('{"frame": 0, "objects": [{"obj_id": 1}]}\n')
    bad = subprocess.run([sys.executable, "-m", "mrcnet.eval.clip_eval", str(tmp_path / "bad.jsonl")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "bad.jsonl:1: malformed pose record" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = subprocess.run([sys.executable, "-m", "mrcnet.eval.clip_eval", str(tmp_path / "none.jsonl")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "poses file not found" in missing.stderr
