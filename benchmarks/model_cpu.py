"""CPU time of the PyTorch model per detection (4 crops), stage 1 and stage 2 separately.

Paper preset (the official architecture, deterministic official-format weights, 2 objects), the
golden inputs of ``tests/data/golden_model_n2.npz``, float32, ``torch.no_grad``. Median of
``--runs`` runs after one warm-up. The official code takes about 1.6-1.9 s (stage 1) and 2.5 s
(stage 2) on the 2-core CPU machine kind of this project.

    python benchmarks/model_cpu.py [--threads 2] [--runs 5] [--preset paper] [--condconv auto]
                                   [--json out.json]

The load of the machine matters: 2 cores shared with other jobs can double the wall-clock figures;
the ``os.getloadavg()`` at the start and the process CPU time (about threads x wall time on an idle
machine, less sensitive to other jobs) are reported with them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from mrcnet.model import STAGE2_FEATURES, CondConv2d, build_model
from mrcnet.testing import golden_inputs, golden_model, load_golden


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--condconv", default="auto", choices=["auto", "conv", "matmul"],
                    help="per-object conv implementation (matmul = the exported graph's)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]

    inp = golden_inputs(load_golden())
    if args.preset == "paper":
        model = golden_model(2)
    else:
        torch.manual_seed(0)
        model = build_model(2, (0.05, 1.7), args.preset).eval()
    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.impl = args.condconv
    x, obj, fov, K, render = inp["crops"], inp["obj_index"], inp["fov"], inp["K_roi"], inp["render"]

    t1, t2, c1, c2 = [], [], [], []
    with torch.no_grad():
        for i in range(args.runs + 1):
            t0, p0 = time.perf_counter(), time.process_time()
            s1 = model.stage1(x, obj, fov, K)
            t_mid, p_mid = time.perf_counter(), time.process_time()
            model.stage2(render, obj, fov, K, **{k: s1[k] for k in STAGE2_FEATURES})
            t_end, p_end = time.perf_counter(), time.process_time()
            if i > 0:  # the first run warms up allocators and kernels
                t1.append(t_mid - t0)
                t2.append(t_end - t_mid)
                c1.append(p_mid - p0)
                c2.append(p_end - p_mid)
    res = {
        "preset": args.preset,
        "threads": args.threads,
        "condconv": args.condconv,
        "runs": args.runs,
        "stage1_s": statistics.median(t1),
        "stage2_s": statistics.median(t2),
        "stage1_cpu_s": statistics.median(c1),
        "stage2_cpu_s": statistics.median(c2),
        "stage1_all_s": t1,
        "stage2_all_s": t2,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min_at_start": load,
    }
    print(f"{args.preset} preset, condconv={args.condconv}, {args.threads} threads, 1 detection = 4 crops, median of {args.runs}: "
          f"stage 1 {res['stage1_s']:.3f} s, stage 2 {res['stage2_s']:.3f} s "
          f"(official code: ~1.6-1.9 s, ~2.5 s); process CPU time {res['stage1_cpu_s']:.3f} s, "
          f"{res['stage2_cpu_s']:.3f} s; load average at start {load:.2f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
