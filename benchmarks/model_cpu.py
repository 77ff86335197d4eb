"""CPU time of the PyTorch model per detection (4 crops), stage 1 and stage 2 separately.

Paper preset (the official architecture, deterministic official-format weights, 2 objects), the
golden inputs of ``tests/data/golden_model_n2.npz``, float32, ``torch.no_grad``. Median of
``--runs`` runs after one warm-up. The official code takes about 1.6-1.9 s (stage 1) and 2.5 s
(stage 2) on the 2-core CPU machine kind of this project.

    python benchmarks/model_cpu.py [--threads 2] [--runs 5] [--preset paper] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mrcnet.model import STAGE2_FEATURES, build_model
    from mrcnet.testing import golden_inputs, golden_model, load_golden

    inp = golden_inputs(load_golden())
    if args.preset == "paper":
        model = golden_model(2)
    else:
        torch.manual_seed(0)
        model = build_model(2, (0.05, 1.7), args.preset).eval()
    x, obj, fov, K, render = inp["crops"], inp["obj_index"], inp["fov"], inp["K_roi"], inp["render"]

    t1, t2 = [], []
    with torch.no_grad():
        for i in range(args.runs + 1):
            t0 = time.perf_counter()
            s1 = model.stage1(x, obj, fov, K)
            t_mid = time.perf_counter()
            model.stage2(render, obj, fov, K, **{k: s1[k] for k in STAGE2_FEATURES})
            t_end = time.perf_counter()
            if i > 0:  # the first run warms up allocators and kernels
                t1.append(t_mid - t0)
                t2.append(t_end - t_mid)
    res = {
        "preset": args.preset,
        "threads": args.threads,
        "runs": args.runs,
        "stage1_s": statistics.median(t1),
        "stage2_s": statistics.median(t2),
        "stage1_all_s": t1,
        "stage2_all_s": t2,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(f"{args.preset} preset, {args.threads} threads, 1 detection = 4 crops, median of {args.runs}: "
          f"stage 1 {res['stage1_s']:.3f} s, stage 2 {res['stage2_s']:.3f} s "
          f"(official code: ~1.6-1.9 s, ~2.5 s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
