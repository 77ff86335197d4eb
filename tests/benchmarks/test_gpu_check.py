"""benchmarks/gpu_check.sh runs here (no GPU) and says the GPU parts are skipped; its GPU steps,
pointed at the CPU, run and report (so they are ready for a GPU machine)."""
import json
import subprocess

import pytest

from conftest import ROOT  # noqa: E402
import gpu_check  # noqa: E402  (benchmarks/ is on sys.path through tests/conftest.py)


def test_gpu_check_script_skips_the_gpu_parts_and_says_so(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--skip-gpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "GPU parts are SKIPPED" in r.stdout
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rep["gpu_mode"] is False
    st = rep["steps"]
    assert st["environment"]["status"] == "pass" and st["render_golden"]["status"] == "pass"
    for name in ("cuda_roundtrip", "torch_clip", "fps", "amp_train", "gpu_tests"):
        assert st[name]["status"] == "skipped" and "skipped" in st[name]["reason"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "GPU parts SKIPPED" in md and "| render_golden | pass |" in md


def _ctx(tmp_path, **kw):
    return {"skip_gpu": False, "device": "cpu", "frames": 2, "amp_steps": 2, "amp_batch": 8, "fps_frames": 1,
            "out": tmp_path, **kw}


def test_gpu_steps_run_on_the_cpu(tmp_path):
    clip = gpu_check.step_torch_clip(_ctx(tmp_path))
    assert clip["poses"] > 0 and clip["max_abs_R"] == 0.0 and clip["max_rel_t"] == 0.0
    amp = gpu_check.step_amp_train(_ctx(tmp_path))
    assert amp["steps"] == 2 and all(v == v for v in amp["losses"])
    assert ["torch.float16", "torch.float16"] in [list(d) for d in amp["batchnorm_io_dtypes"]]
    with pytest.raises(gpu_check.Skip):
        gpu_check.step_torch_clip(_ctx(tmp_path, skip_gpu=True))
