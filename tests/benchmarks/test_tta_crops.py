"""benchmarks/tta_crops.py: the per-crop errors of a TTA group agree with the official selection's pose."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from common import random_model, save_random_checkpoint  # noqa: E402
from mrcnet.data.video import generate_video  # noqa: E402
from mrcnet.runtime.assets import DEMO_MODELS  # noqa: E402

import tta_crops  # noqa: E402


def test_summary_counts():
    rows = [{"errors_deg": [10, 170, 175, 20], "selected_error_deg": 170.0},  # right upright crop not taken
            {"errors_deg": [160, 10, 100, 5], "selected_error_deg": 5.0},
            {"errors_deg": [179, 178, 177, 176], "selected_error_deg": 178.0}]
    s = tta_crops.summarise(rows)
    assert s["frames"] == 3 and s["selected_flipped"] == 2 and s["upright_right"] == 1
    assert s["right_crop_not_taken"] == 1 and s["turned_crops"] == 9 and s["turned_crops_flipped"] == 6
    np.testing.assert_allclose(s["median_error_deg"], [160, 170, 175, 20])
    assert tta_crops.summarise([])["median_error_deg"] is None


def test_clip_crops_match_the_selection(tmp_path):
    clip = tmp_path / "clip"
    generate_video(DEMO_MODELS, clip, n_frames=4, width=160, height=120, seed=1, progress=False)
    ck = save_random_checkpoint(random_model("small"), tmp_path / "random.pth")
    out = tmp_path / "out"
    r = CliRunner().invoke(tta_crops.main, ["--clip", str(clip), "--checkpoint", str(ck), "--object-id", "2",
                                            "--every", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "tta_crops.json").read_text())
    assert [row["frame"] for row in rep["rows"]] == [0, 2]
    for row in rep["rows"]:
        assert len(row["errors_deg"]) == len(row["scores"]) == 4
        assert all(0.0 <= e <= 180.0 for e in row["errors_deg"])
        assert row["selected"] == int(np.argmax(row["scores"]))
        # the crop's rotation turned back by hand is the pose tta_select returns for that crop
        assert abs(row["errors_deg"][row["selected"]] - row["selected_error_deg"]) < 1e-3
    assert rep["summary"]["frames"] == 2 and "2 frames: returned pose" in r.output
    r = CliRunner().invoke(tta_crops.main, ["--clip", str(clip), "--checkpoint", str(ck), "--object-id", "9",
                                            "--out", str(out)])
    assert r.exit_code != 0 and "--object-id" in r.output and "not in the checkpoint" in r.output
