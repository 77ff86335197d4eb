"""A stage-2 render of N crops of the demo objects two ways (public renderer API only): the
general path (``render(...).network_input()``: colour repeat, depth copy, box map, then the network
tensor) against ``render_network_input`` (the tensor straight from the framebuffer read). Both
include the same draw and read, so the difference is the host-side work.

    .venv/bin/python benchmarks/render_host.py --crops 32 --repeats 50

Prints the minimum over ``--repeats`` of each (ms) and checks the two tensors are identical.
"""
from __future__ import annotations

import time

import click
import numpy as np

from mrcnet.runtime.assets import DEMO_MODELS
from mrcnet.runtime.render import Renderer, load_mesh


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


@click.command()
@click.option("--crops", default=32, show_default=True)
@click.option("--repeats", default=50, show_default=True)
@click.option("--render-device", "device", default=None, help="Renderer device (default: the renderer's).")
def main(crops, repeats, device):
    r = Renderer(device=device)
    ids = []
    for p in sorted(DEMO_MODELS.glob("obj_*.ply")):
        ids.append(int(p.stem[4:]))
        r.add_object(ids[-1], load_mesh(p))
    rng = np.random.default_rng(0)
    obj = np.array([ids[i % len(ids)] for i in range(crops)])
    R = np.tile(np.eye(3), (crops, 1, 1))
    t = np.tile([0, 0, 600.0], (crops, 1)) + rng.uniform(-20, 20, (crops, 3))
    K = np.tile(np.array([[600.0, 0, 128], [0, 600, 128], [0, 0, 1]]), (crops, 1, 1))
    def general():
        return r.render(obj, R, t, K, 256, 256).network_input()

    def direct():
        return r.render_network_input(obj, R, t, K, 256)

    old, new = best_ms(general, repeats), best_ms(direct, repeats)
    same = np.array_equal(general(), direct())
    click.echo(f"{crops} crops, renderer {r.description}: render + host-side "
               f"{old:.2f} ms -> {new:.2f} ms ({old / new:.1f}x); identical: {same}")


if __name__ == "__main__":  # pragma: no cover
    main()
