"""scripts/gpu_finetune_demo.sh (how run 12 of the demo model was made on a GPU machine) end to end on
the CPU with tiny settings: scenes rendered in chunks until the deadline, the probe, a schedule sized to
the time left, the slimmed checkpoints and the logs."""
import os
import subprocess
import tarfile

import pytest
import torch

from conftest import ROOT
from mrcnet.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # renders scenes and trains a few dozen steps (about 2 min here)


def test_gpu_finetune_script_runs_within_its_budget(tmp_path):
    env = dict(os.environ, WORK=str(tmp_path / "w"), OUT=str(tmp_path / "out"), RENDER_END="15", CHUNK="3",
               BATCH="4", WK="0", PSTEPS="4", BUDGET="170", DEV="cpu", NPREV="1", CKE="2")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_finetune_demo.sh")], env=env, capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "chunks: g1_0" in r.stdout and "epochs" in r.stdout
    init = load_checkpoint(ROOT / "mrcnet" / "assets" / "demo" / "model.pth")
    end = load_checkpoint(tmp_path / "out" / "ck_end.pth")
    assert end.meta["obj_ids"] == [1, 2, 3]
    a, b = init.state_dict(), end.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # it trained
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as t:
        names = set(t.getnames())
    assert {"logs/plan.txt", "logs/train.txt", "logs/history.json"} <= names
