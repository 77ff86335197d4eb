"""Benchmark of training speed: steps per second of ``mrcnet-train`` for a model preset.

Runs the real trainer (:func:`mrcnet.train.trainer.train`: data loading, stage 1, the renderer in
the loop, stage 2, losses, AdamW; mixed precision on GPU) for ``--warmup + --steps`` steps and
reports the rate over the last ``--steps`` (each step's wall clock is in the run's history).
Without ``--data`` it first writes a small synthetic BOP split (3 procedural objects, 24 images)
into the run folder.

    python benchmarks/train_speed.py --preset paper --batch-size 2 --steps 4
    python benchmarks/train_speed.py --preset small --batch-size 16 --steps 30 --data runs/demo/data

Prints one markdown row and writes ``<out>/train_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from mrcnet.data.objects import write_objects
from mrcnet.data.scenes import SceneConfig, generate_scenes
from mrcnet.model import get_config
from mrcnet.train.trainer import TrainConfig, train


def synthetic_split(root: Path, images: int = 24) -> Path:
    """3 procedural objects and ``images`` 640x480 training images under ``root`` (kept if present)."""
    if not (root / "models" / "models_info.json").is_file():
        write_objects(root, 3, seed=0, progress=False, eval_copy=False)
    generate_scenes(root / "models", root, images, SceneConfig(split="train_pbr"), seed=1, progress=False)
    return root


def measure(preset: str, batch_size: int, steps: int, warmup: int, data: Path, out: Path, device=None,
            workers: int = 1) -> dict:
    """Steps/s (and samples/s) over ``steps`` steps after ``warmup`` steps."""
    cfg = TrainConfig(data=str(data), out=str(out), preset=preset, dataset="synth", objects=[1, 2, 3],
                      split="train_pbr", epochs=1000, batch_size=batch_size, warmup=10, workers=workers,
                      max_steps=warmup + steps, ckpt_every=10**9, device=device, progress=True)
    res = train(cfg)
    wall = np.array([h["wall_s"] for h in res["history"]], np.float64)
    dt = wall[-1] - wall[warmup - 1] if warmup > 0 else wall[-1]
    rate = steps / dt
    return {"preset": preset, "batch_size": batch_size, "steps_timed": steps, "warmup_steps": warmup,
            "crop_size": get_config(preset).crop_size, "steps_per_s": rate, "samples_per_s": rate * batch_size,
            "s_per_step": 1.0 / rate, "device": str(device or ("cuda:0" if torch.cuda.is_available() else "cpu")),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    ap.add_argument("--data", type=Path, default=None, help="BOP dataset with train_pbr (default: a small synthetic one)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="mrcnet-train-speed-"))
    data = a.data or synthetic_split(out / "data")
    r = measure(a.preset, a.batch_size, a.steps, a.warmup, data, out / "run", a.device, a.workers)
    (out / "train_speed.json").write_text(json.dumps(r, indent=1))
    print("| preset | crop | batch | device | steps/s | samples/s | s/step |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['preset']} | {r['crop_size']} | {r['batch_size']} | {r['device']} | {r['steps_per_s']:.3f} | "
          f"{r['samples_per_s']:.2f} | {r['s_per_step']:.2f} |")
    print(f"written: {out / 'train_speed.json'}")


if __name__ == "__main__":
    main()
