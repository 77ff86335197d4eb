"""A crowded frame: D detections in one frame of the demo clip, through the torch-free pipeline.

The frame's own detections (the shipped ``detections.json``) are repeated with small box jitter
(seeded) up to ``--detections``. ``--mode chunked`` runs them in one ``estimate_frame`` call (the
pipeline chunks them to ``--chunk`` detections per backend call); ``--mode batches`` calls
``estimate_frame`` once per ``--chunk`` detections with an unbounded backend (the reference);
``--mode one-batch`` sends all of them in one backend call (what the runtime did before chunking:
about 84 MB per detection with ONNX Runtime on the CPU). Reports the peak RSS of the process
(``resource.getrusage``), the wall time and writes the poses (``--out`` .npz).

    .venv/bin/python benchmarks/crowded_frame.py --model EXPORT --detections 200 --mode chunked --out a.npz
    .venv/bin/python benchmarks/crowded_frame.py --model EXPORT --detections 200 --mode batches --out b.npz
    .venv/bin/python benchmarks/crowded_frame.py --compare a.npz b.npz
"""
from __future__ import annotations

import json
import resource
import time

import click
import numpy as np

from mrcnet.runtime import manifest as M
from mrcnet.runtime.backends import create_backend
from mrcnet.runtime.detections import JsonDetections
from mrcnet.runtime.pipeline import Pipeline
from mrcnet.runtime.render import Renderer
from mrcnet.runtime.video_io import Camera, FrameSource


def crowded_detections(frame_dets, n: int, seed: int = 0) -> list:
    """``n`` (obj_id, box) pairs: the frame's detections cycled, each box jittered by up to 4 px."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = frame_dets[i % len(frame_dets)]
        out.append((d.obj_id, tuple(np.asarray(d.box, np.float64) + rng.uniform(-4, 4, 4))))
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


@click.command()
@click.option("--model", type=click.Path(exists=True), default=None, help="Export directory [demo export].")
@click.option("--detections", "n", default=200, show_default=True)
@click.option("--chunk", default=8, show_default=True, help="Detections per backend call.")
@click.option("--mode", type=click.Choice(["chunked", "batches", "one-batch"]), default="chunked", show_default=True)
@click.option("--frame", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the poses (.npz).")
@click.option("--compare", nargs=2, type=click.Path(exists=True), default=None, help="Compare two .npz files.")
def main(model, n, chunk, mode, frame, threads, out, compare):
    if compare:
        a, b = (np.load(p) for p in compare)
        dr = np.abs(a["R"] - b["R"]).max()
        dt = np.abs(a["t"] - b["t"]).max() / max(np.abs(b["t"]).max(), 1e-30)
        click.echo(json.dumps({"poses": [len(a["t"]), len(b["t"])], "max_abs_R": float(dr), "max_rel_t": float(dt),
                               "identical": bool(np.array_equal(a["R"], b["R"]) and np.array_equal(a["t"], b["t"]))}))
        return
    man = M.load_manifest(model or M.DEMO_EXPORT_DIR)
    src = FrameSource(M.DEMO_DIR / M.DEMO_CLIP)
    img = next(f.image for f in src if f.index == frame)
    K = Camera.load(M.DEMO_DIR / M.DEMO_CAMERA).K(frame)
    dets = crowded_detections(JsonDetections(M.DEMO_DIR / M.DEMO_DETECTIONS)(frame, img), n)
    limit = None if mode != "chunked" else chunk
    be = create_backend(man, "onnxruntime-cpu", threads=threads, max_detections=limit)
    pipe = Pipeline(be, man, Renderer())
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    if mode == "batches":
        poses = [p for a in range(0, n, chunk) for p in pipe.estimate(img, K, dets[a:a + chunk])]
    else:
        poses = pipe.estimate(img, K, dets)
    wall = time.perf_counter() - t0
    if out:
        np.savez(out, R=np.stack([p.R for p in poses]), t=np.stack([p.t for p in poses]))
    click.echo(json.dumps({"mode": mode, "detections": n, "chunk": chunk, "poses": len(poses),
                           "wall_s": round(wall, 2), "peak_rss_mib_before": round(rss0), "peak_rss_mib": round(peak_rss_mib())}))


if __name__ == "__main__":  # pragma: no cover
    main()
