"""benchmarks/fps.py and benchmarks/parity.py end to end on tiny settings: their JSON, markdown
and PNG are written and hold the figures of the backends that ran."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from infer_fixtures import tiny_assets  # noqa: E402

import fps  # noqa: E402
import int8_variants  # noqa: E402
import ort_options  # noqa: E402
import parity  # noqa: E402

pytestmark = pytest.mark.slow  # an ONNX export and torch inference (~30 s on 2 shared cores)


def test_fps_default_random_model(tmp_path):
    out = tmp_path / "fps"
    res = CliRunner().invoke(fps.main, ["--preset", "small", "--detections-per-frame", "1,2", "--frames", "1",
                                        "--warmup", "0", "--backends", "torch,ort-fp32,ort-int8,trt-fp16",
                                        "--no-int8", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "fps.json").read_text())
    assert set(rep["results"]) == {"torch", "ort-fp32"}
    assert "ort-int8" in rep["skipped"] and "trt-fp16" in rep["skipped"]
    for key, per_d in rep["results"].items():
        assert set(per_d) == {"1", "2"}
        for d, r in per_d.items():
            assert r["detections"] == int(d) and r["frames"] == 1
            st = r["stages_ms"]
            assert set(st) == set(fps.STAGES)
            assert all(st[s]["p50"] <= st[s]["p90"] <= st[s]["p99"] for s in st)
            assert st["classifier"]["p50"] > 0 and st["regressor"]["p50"] > 0 and st["render"]["p50"] > 0
            assert sum(st[s]["p50"] for s in st) <= r["total_ms"]["p50"] * 1.01
            assert np.isclose(r["detections_per_s"], int(d) / (r["total_ms"]["mean"] / 1000), rtol=1e-6)
            assert np.isclose(r["vs_torch"], r["detections_per_s"] / rep["results"]["torch"][d]["detections_per_s"])
    assert rep["results"]["torch"]["1"]["vs_torch"] == 1.0
    par = rep["parity_vs_torch"]["ort-fp32"]  # the comparator: ORT against torch on the same crops
    assert par["max"] < 1e-3 and par["argmax_agree"] == 1.0 and par["rot_agree_5deg"] == 1.0
    assert rep["hardware"]["cpu"] and rep["hardware"]["cores"] >= 1
    assert "onnxruntime" in rep["libraries"] and "numpy" in rep["libraries"]
    md = (out / "fps.md").read_text()
    assert f"| {fps.TORCH_LABEL} | 1 |" in md and "| ort-fp32 | 2 |" in md and "Not run:" in md and "- ort-fp32: max" in md
    c = rep["compute"]
    assert c["matmul_gflops"] > 0 and c["gflop_per_crop"]["regressor"] > c["gflop_per_crop"]["classifier"] > 0
    for per_d in rep["results"].values():
        for r in per_d.values():
            assert r["gflops_per_s"] > 0 and np.isclose(r["share_of_matmul"], r["gflops_per_s"] / c["matmul_gflops"])
    assert "share of FP32 matmul" in md
    assert (out / "fps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fps_compute_rates():
    """Reference FLOPs per crop match the presets' documented cost (paper: about 33 and 36 GMAC per
    crop for the two stages); rates follow the stage times."""
    f = fps.model_flops("paper", 1, (0.05, 1.7), 4)
    assert 64e9 < f["classifier"] < 70e9 and 68e9 < f["regressor"] < 75e9
    small = fps.model_flops("small", 3, (0.05, 1.7), 4)
    assert small["classifier"] < f["classifier"] / 20
    res = {"x": {"2": {"stages_ms": {"classifier": {"p50": 100.0}, "regressor": {"p50": 300.0}}}}}
    fps.add_compute_rates(res, {"classifier": 1e9, "regressor": 3e9}, 80.0, 4)
    r = res["x"]["2"]
    assert np.isclose(r["gflops_per_s"], 4e9 * 8 / 0.4 / 1e9) and np.isclose(r["share_of_matmul"], 80.0 / 80.0)
    assert fps.matmul_rate(256, repeats=1) > 0


def test_ort_options_round_robin(tmp_path, tmp_path_factory):
    """Session-option candidates are timed on an export; the baseline is the reference (1.0x)."""
    a = tiny_assets(tmp_path_factory)
    so = ort_options.session_options(level="basic", threads=1, spinning=False, arena=False)
    assert so.intra_op_num_threads == 1 and not so.enable_cpu_mem_arena
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    cands = {"baseline": {"level": "all"}, "no-spinning": {"level": "all", "spinning": False}}
    res = ort_options.measure(Path(a.export), 1, 2, cands)
    assert set(res) == set(cands) and res["baseline"]["vs_baseline"] == 1.0
    assert all(0 < r["best_ms"] <= r["median_ms"] for r in res.values())
    r = CliRunner().invoke(ort_options.main, ["--model", str(a.export), "--detections", "1,x"])
    assert r.exit_code != 0 and "--detections" in r.output


def test_fps_tta1_and_bad_options(tmp_path, tmp_path_factory):
    a = tiny_assets(tmp_path_factory)
    r = CliRunner()
    res = r.invoke(fps.main, ["--model", str(a.export), "--tta", "1", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--tta 1 needs its own export" in res.output
    res = r.invoke(fps.main, ["--detections-per-frame", "1,x", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--detections-per-frame" in res.output
    res = r.invoke(fps.main, ["--backends", "ort-fp64", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "ort-fp64" in res.output
    # an export directory: ORT from it, torch from --checkpoint
    res = r.invoke(fps.main, ["--model", str(a.export), "--checkpoint", str(a.checkpoint), "--backends",
                              "torch,ort-fp32", "--detections-per-frame", "1", "--frames", "1", "--warmup", "0",
                              "--device", "cpu", "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "x" / "fps.json").read_text())
    assert set(rep["results"]) == {"torch", "ort-fp32"} and rep["settings"]["preset"] == "small"


def test_parity_on_tiny_split(tmp_path, tmp_path_factory):
    a = tiny_assets(tmp_path_factory)
    out = tmp_path / "parity"
    res = CliRunner().invoke(parity.main, ["--data", str(a.data), "--checkpoint", str(a.checkpoint), "--export",
                                           str(a.export), "--backends", "ort-fp32,ort-int8", "--metrics",
                                           "mssd,mspd", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "parity.json").read_text())
    assert set(rep["backends"]) == {"torch", "ort-fp32"} and "ort-int8" in rep["skipped"]
    ref, ort = rep["backends"]["torch"], rep["backends"]["ort-fp32"]
    assert ref["AR"] is None and rep["settings"]["delta_metric"] == "AR_MSSD"  # AR needs all three metrics
    assert 0.0 <= ort["AR_MSSD"] <= 1.0 and ort["abs_delta_AR"] <= 0.05
    assert ort["vs_torch"]["pairs"] == rep["n_estimates"] == 4
    assert ort["vs_torch"]["within"] == 1.0
    for key in ("torch", "ort-fp32"):
        assert Path(rep["backends"][key]["csv"]).is_file()
        assert (out / "results" / f"{key}_eval" / "scores_bop19.json").is_file()
    md = (out / "parity.md").read_text()
    assert "| ort-fp32 |" in md and "100.0%" in md


def test_int8_variants_table(tmp_path, monkeypatch, capsys):
    """benchmarks/int8_variants.py: the FP32 export and calibration made once in --work, the
    variant quantised from it, timed round-robin with FP32, its fused op counts and agreement in
    the table and the JSON; a second run reuses the files; unknown variants are refused."""
    work, out = tmp_path / "w", tmp_path / "v.json"
    argv = ["int8_variants.py", "--preset", "small", "--n-obj", "1", "--work", str(work), "--repeats", "1",
            "--calib-count", "4", "--variants", "u8s8 per-channel (default)", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    int8_variants.main()
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"fp32", "u8s8 per-channel (default)"} and rows["fp32"]["speedup_vs_fp32"] == 1.0
    q = rows["u8s8 per-channel (default)"]
    assert q["ops"]["QLinearConv"] > 0 and q["ops"]["Conv"] == 0 and rows["fp32"]["ops"]["QLinearConv"] == 0
    assert q["ms_per_det"] > 0 and q["vs_fp32"]["crops"] == 4
    assert "| u8s8 per-channel (default) |" in capsys.readouterr().out
    stamp = (work / "classifier.default.int8.onnx").stat().st_mtime
    int8_variants.main()  # reuses the export, calibration and quantised graphs
    assert (work / "classifier.default.int8.onnx").stat().st_mtime == stamp
    monkeypatch.setattr(sys, "argv", argv[:-4] + ["--variants", "u8s8 magic"])
    with pytest.raises(SystemExit, match="u8s8 magic"):
        int8_variants.main()
