"""The GPU check: what only a CUDA machine can tell, in one run (started by ``benchmarks/gpu_check.sh``,
which sets up the offline packages first).

Steps (each timed; status ``pass`` / ``fail`` / ``skipped`` with the reason):

1. ``environment``: Python, torch and its CUDA, the GPU, the EGL devices, the renderer picked.
2. ``render_golden``: the renderer's golden tests (``tests/runtime/render/test_golden_render.py``) on the renderer's
   default device: the NVIDIA EGL device of CUDA device 0 (fails when it falls back to llvmpipe
   on a GPU machine).
3. ``cuda_roundtrip``: host -> device -> host through the runtime's CUDA wrapper (``CudaApi``:
   pinned buffers, async copies on its stream), bytes compared.
4. ``torch_clip``: the PyTorch reference pipeline (``TorchBackend``, the demo model) on CUDA over
   the first ``--frames`` frames of the demo clip, against the same run on the CPU: poses equal
   within 1e-3 of scale (t: max |dt| / max |t|; R: max |dR|).
5. ``fps``: ``benchmarks/fps.py`` rows for torch on CUDA: the demo model (1 and 4 detections) and
   the paper preset (random weights) with 1 and 4 detections.
6. ``amp_train``: a few mixed-precision (float16 autocast + GradScaler) optimiser steps of the
   small preset on synthetic targets: finite losses and gradients, the BatchNorm statistics in
   float32.
7. ``gpu_tests``: the TensorRT / ONNX Runtime GPU tests (``pytest -m gpu``) where ``tensorrt`` or
   onnxruntime's CUDA provider imports (and ``onnx``, which the tests need).

``--skip-gpu`` (or no CUDA device) runs steps 1-2 on what is there and marks the GPU steps
skipped, saying so. Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import click
import numpy as np

from mrcnet.eval.infer import checkpoint_manifest
from mrcnet.runtime import manifest as M
from mrcnet.runtime.assets import DEMO_CHECKPOINT, DEMO_MODELS
from mrcnet.runtime.backends import BackendError, CudaApi, device_properties
from mrcnet.runtime.detections import JsonDetections
from mrcnet.runtime.pipeline import Pipeline
from mrcnet.runtime.presets import get_dataset
from mrcnet.runtime.render import Renderer
from mrcnet.runtime.render.context import gpu_machine, is_software, list_devices
from mrcnet.runtime.video_io import Camera, FrameSource

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-3


class Skip(Exception):
    """A step that cannot run here (the message says why)."""


def _torch(ctx):
    """torch, with the check's device usable (``ctx["device"]``: "cuda", or "cpu" to try the steps)."""
    if ctx["skip_gpu"]:
        raise Skip("GPU parts skipped")
    import torch  # the steps before it run where torch is not installed yet

    if ctx["device"] == "cuda" and not torch.cuda.is_available():
        raise Skip("no CUDA device visible to torch")
    return torch


def step_environment(ctx) -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "gpu_mode": not ctx["skip_gpu"]}
    try:
        import torch  # reported when present: the check runs where it is not installed yet

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    except ImportError as e:
        info["torch"] = f"not importable ({e})"

    try:
        info["egl_devices"] = [f"{d.index}: {d.kind}" + (f" cuda:{d.cuda}" if d.cuda is not None else "")
                               for d in list_devices()]
    except Exception as e:  # the report says what is missing
        info["egl_devices"] = f"unavailable ({str(e).splitlines()[0]})"
    for mod in ("numpy", "cv2", "moderngl", "trimesh", "onnxruntime", "tensorrt", "onnx"):
        try:
            m = __import__(mod)
            info.setdefault("packages", {})[mod] = getattr(m, "__version__", "?")
        except ImportError:
            info.setdefault("packages", {})[mod] = None
    return info


def step_render_golden(ctx) -> dict:
    name = Renderer().description
    out = {"renderer": name}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/runtime/render/test_golden_render.py"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    out["pytest"] = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode != 0:
        raise RuntimeError(f"golden render tests failed: {out['pytest']}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    if not ctx["skip_gpu"] and gpu_machine() and is_software(name):
        raise RuntimeError(f"the renderer fell back to the CPU ({name}) on a GPU machine")
    return out


def step_cuda_roundtrip(ctx) -> dict:
    if ctx["skip_gpu"]:
        raise Skip("GPU parts skipped")
    try:
        api = CudaApi(0)
    except BackendError as e:
        raise Skip(str(e)) from None
    try:
        src = np.random.default_rng(0).random((4, 4, 256, 256), dtype=np.float32)
        host_in, host_out = api.pinned(src.shape, src.dtype), api.pinned(src.shape, src.dtype)
        host_in[...] = src
        host_out[...] = 0
        ptr, keep = api.malloc(src.nbytes)
        t0 = time.perf_counter()
        api.h2d(ptr, host_in)
        api.d2h(host_out, ptr)
        api.sync()
        ms = (time.perf_counter() - t0) * 1e3
        api.free(keep)
        if not np.array_equal(host_out, src):
            raise RuntimeError("bytes differ after the round trip")
        return {"bytes": int(src.nbytes), "ms": round(ms, 3), "device": device_properties(0),
                "api": "cuda-python" if api.cudart else "pycuda"}
    finally:
        api.close()


def _clip_poses(model, device: str, frames: int):
    from mrcnet.inference import TorchBackend  # torch: absent where the GPU steps are skipped

    man = checkpoint_manifest(model, M.DEMO_DIR, "models")
    pipe = Pipeline(TorchBackend(model, device), man, Renderer())
    cam = Camera.load(M.DEMO_DIR / M.DEMO_CAMERA)
    detect = JsonDetections(M.DEMO_DIR / M.DEMO_DETECTIONS)
    out, t0 = [], time.perf_counter()
    for f in FrameSource(M.DEMO_DIR / M.DEMO_CLIP):
        if f.index >= frames:
            break
        for p in pipe.estimate(f.image, cam.K(f.index), detect(f.index, f.image)):
            out.append((f.index, p.obj_id, p.R, p.t))
    return out, time.perf_counter() - t0


def step_torch_clip(ctx) -> dict:
    _torch(ctx)
    from mrcnet.checkpoint import load_checkpoint  # torch: absent where the GPU steps are skipped

    dev = ctx["device"]
    cpu, s_cpu = _clip_poses(load_checkpoint(DEMO_CHECKPOINT, device="cpu"), "cpu", ctx["frames"])
    gpu, s_gpu = _clip_poses(load_checkpoint(DEMO_CHECKPOINT, device=dev), dev, ctx["frames"])
    if [(a[0], a[1]) for a in cpu] != [(b[0], b[1]) for b in gpu]:
        raise RuntimeError("CPU and CUDA runs estimated different detections")
    t_cpu, t_gpu = np.stack([a[3] for a in cpu]), np.stack([b[3] for b in gpu])
    dR = float(np.abs(np.stack([a[2] for a in cpu]) - np.stack([b[2] for b in gpu])).max())
    dt = float(np.abs(t_cpu - t_gpu).max() / np.abs(t_cpu).max())
    res = {"frames": ctx["frames"], "poses": len(cpu), "max_abs_R": dR, "max_rel_t": dt,
           "cpu_s": round(s_cpu, 2), "cuda_s": round(s_gpu, 2)}
    if max(dR, dt) > TOL:
        raise RuntimeError(f"CUDA poses differ from the CPU's beyond {TOL} of scale: {res}")
    return res


def step_fps(ctx) -> dict:
    _torch(ctx)
    rows = {}
    n = ctx["fps_frames"]
    runs = {"demo": ["--model", str(DEMO_CHECKPOINT), "--detections-per-frame", "1,4", "--frames", str(2 * n)],
            "paper": ["--preset", "paper", "--detections-per-frame", "1,4", "--frames", str(n)]}
    for name, args in runs.items():
        out = ctx["out"] / f"fps_{name}"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "fps.py"), *args, "--backends", "torch",
               "--device", ctx["device"], "--warmup", str(min(3, n)), "--models", str(DEMO_MODELS), "--out", str(out)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"fps.py {name} failed: {(r.stderr or r.stdout)[-1500:]}")
        rep = json.loads((out / "fps.json").read_text())
        rows[name] = {d: {"total_p50_ms": round(v["total_ms"]["p50"], 2), "detections_per_s": round(v["detections_per_s"], 2),
                          **{f"{s}_p50_ms": round(x["p50"], 2) for s, x in v["stages_ms"].items()}}
                      for d, v in rep["results"]["torch"].items()}
    return rows


def step_amp_train(ctx) -> dict:
    torch = _torch(ctx)
    # torch: absent where the GPU steps are skipped
    from mrcnet.model import build_model
    from mrcnet.model.layers import GroupBatchNorm2d

    torch.manual_seed(0)
    dev = torch.device(ctx["device"])
    model = build_model(3, get_dataset("synth").depth_range, "small").to(dev).train()
    model.set_bn_group(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type)
    n, s = ctx["amp_batch"], model.cfg.crop_size
    g = torch.Generator(device="cpu").manual_seed(0)
    crops = (torch.rand(n, 4, s, s, generator=g) * 255.0).to(dev)  # unnormalised: large activations
    obj = (torch.arange(n) // 4 % 3).to(dev)
    fov = torch.tensor([[0.0, 0.0, 0.3]]).repeat(n, 1).to(dev)
    K = torch.tensor([[700.0, 0, s / 2], [0, 700.0, s / 2], [0, 0, 1]]).repeat(n, 1, 1).to(dev)
    dtypes = set()
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.add((str(i[0].dtype), str(o.dtype))))
             for m in model.modules() if isinstance(m, GroupBatchNorm2d)]
    losses = []
    for _ in range(ctx["amp_steps"]):
        with torch.autocast(dev.type, dtype=torch.float16):
            out = model.stage1(crops, obj, fov, K)
            target = {k: torch.randint(0, out[k].shape[1], (n,), generator=g).to(dev)
                      for k in ("pose_logits", "depth_logits", "trans_logits")}
            loss = sum(torch.nn.functional.cross_entropy(out[k].float(), target[k]) for k in target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        if not (np.isfinite(losses[-1]) and grads_finite):
            raise RuntimeError(f"non-finite loss or gradients at AMP step {len(losses)}: {losses}")
    for h in hooks:
        h.remove()
    return {"steps": len(losses), "losses": [round(v, 4) for v in losses], "batchnorm_io_dtypes": sorted(dtypes),
            "grad_scale": float(scaler.get_scale())}


def step_gpu_tests(ctx) -> dict:
    _torch(ctx)
    have = []
    try:
        import tensorrt  # noqa: F401  (optional)
        have.append("tensorrt")
    except ImportError:
        pass
    try:
        import onnxruntime as ort  # optional here: only its CUDA provider counts

        if "CUDAExecutionProvider" in ort.get_available_providers():
            have.append("onnxruntime-gpu")
    except ImportError:
        pass
    if not have:
        raise Skip("neither tensorrt nor onnxruntime with the CUDA provider imports")
    try:
        import onnx  # noqa: F401  (the GPU tests build graphs with it)
    except ImportError:
        raise Skip(f"{', '.join(have)} import, but onnx (needed by the tests) does not") from None
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                        "tests/export/test_tensorrt.py", "tests/runtime/test_runtime.py", "tests/runtime/test_gpu_runtime.py"],
                       cwd=ROOT, capture_output=True, text=True, timeout=400)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode not in (0, 5):
        raise RuntimeError(f"GPU tests failed: {last}\n{r.stdout[-2000:]}")
    return {"libraries": have, "pytest": last}


STEPS = [("environment", step_environment), ("render_golden", step_render_golden),
         ("cuda_roundtrip", step_cuda_roundtrip), ("torch_clip", step_torch_clip), ("fps", step_fps),
         ("amp_train", step_amp_train), ("gpu_tests", step_gpu_tests)]


def markdown(report: dict) -> str:
    env = report["steps"]["environment"].get("result", {})
    lines = ["# GPU check", "", f"Machine: {env.get('gpu') or 'no GPU'}; Python {env.get('python')}, "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}). Mode: "
             + ("GPU" if report["gpu_mode"] else "GPU parts SKIPPED") + f". Total {report['seconds']:.0f} s.", "",
             "| step | status | s | result |", "|---|---|---|---|"]
    for name, st in report["steps"].items():
        res = st.get("result", st.get("reason", st.get("error", "")))
        text = json.dumps(res, default=str) if not isinstance(res, str) else res
        lines.append(f"| {name} | {st['status']} | {st['seconds']:.1f} | {text[:400].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--out", "out_dir", default="out/gpu_check", show_default=True, type=click.Path(file_okay=False))
@click.option("--skip-gpu", is_flag=True, help="Skip the GPU parts (also automatic without a CUDA device).")
@click.option("--frames", default=30, show_default=True, help="Demo-clip frames of the CPU/CUDA comparison.")
@click.option("--amp-steps", default=5, show_default=True)
@click.option("--only", default=None, help="Comma-separated subset of the steps.")
def main(out_dir, skip_gpu, frames, amp_steps, only):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not skip_gpu:
        try:
            import torch  # optional: without it the GPU parts are skipped

            if not torch.cuda.is_available():
                skip_gpu = True
                click.echo("gpu_check: torch sees no CUDA device: the GPU parts are SKIPPED")
        except ImportError:
            skip_gpu = True
            click.echo("gpu_check: torch is not importable: the GPU parts are SKIPPED")
    else:
        click.echo("gpu_check: --skip-gpu: the GPU parts are SKIPPED")
    ctx = {"skip_gpu": skip_gpu, "frames": frames, "amp_steps": amp_steps, "out": out, "device": "cuda",
           "fps_frames": 10, "amp_batch": 16}
    wanted = None if only is None else {s.strip() for s in only.split(",")}
    report = {"gpu_mode": not skip_gpu, "steps": {}, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]])}
    t_all = time.perf_counter()
    failed = False
    for name, fn in STEPS:
        if wanted is not None and name not in wanted and name != "environment":
            continue
        t0 = time.perf_counter()
        try:
            st = {"status": "pass", "result": fn(ctx)}
        except Skip as e:
            st = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # every step reports; the check goes on
            st = {"status": "fail", "error": f"{type(e).__name__}: {str(e)[:2000]}",
                  "traceback": traceback.format_exc()[-3000:]}
            failed = True
        st["seconds"] = round(time.perf_counter() - t0, 2)
        report["steps"][name] = st
        click.echo(f"gpu_check: {name:15s} {st['status']:8s} {st['seconds']:7.1f} s"
                   + (f"  ({st.get('reason') or st.get('error', '').splitlines()[0]})" if st["status"] != "pass" else ""))
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    click.echo(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
