"""Benchmark of the renderer: time per ``Renderer.render`` call of N views (MRC-Net: 4 x 256x256).

Renders a ~20k-triangle model (an icosphere, 20,480 triangles, radius 50 mm at 400 mm, covering
about the share of a crop a detected object covers) at N in-plane rotations of one pose, the way
stage 2 renders one detection's TTA group, and reports the median wall time per call over
``--calls`` calls after ``--warmup`` calls. For reference it also times, in the same process, a
bare moderngl loop (same mesh and views, position-only shader, one read-back) and ``render`` with
back-face culling. Anchors on this machine kind's CPU: the official PyTorch3D renderer 17.8 s per
call; a bare moderngl/llvmpipe loop about 3.4 ms.

    python benchmarks/render.py [--device cpu|0|cuda:0] [--json runs/benchmarks/render.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import moderngl
import numpy as np

from mrcnet.runtime.render import Mesh, Renderer
from mrcnet.runtime.render.camera import projection
from mrcnet.runtime.render.context import describe

BARE_VS = """
#version 330
uniform mat4 u_MVP;
in vec3 in_pos;
out float v_z;
void main() { gl_Position = u_MVP * vec4(in_pos, 1.0); v_z = gl_Position.w; }
"""
BARE_FS = """
#version 330
in float v_z;
layout(location = 0) out vec2 out_v;
void main() { out_v = vec2(1.0, v_z); }
"""


def make_model(subdivisions: int = 5, radius: float = 50.0) -> Mesh:
    """An icosphere with 20 * 4**subdivisions triangles (20,480 for 5), radius in mm."""
    import trimesh  # slow (about 0.5 s), only to build the benchmark mesh

    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh.from_arrays(tm.vertices, tm.faces, name=f"icosphere{subdivisions}")


def views(n: int, size: int):
    """N in-plane rotations (k * 360/N deg about the camera z) of one pose at 400 mm; crop camera."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R0 = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                   [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                   [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    t0 = np.array([3.0, -2.0, 400.0])
    Rs, ts = [], []
    for k in range(n):
        a = 2 * np.pi * k / n
        Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        Rs.append(Rz @ R0)
        ts.append(Rz @ t0)
    f = 600.0 * size / 256
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return np.stack(Rs), np.stack(ts), K


def timed(fns: dict, calls: int, warmup: int) -> dict:
    """Median/p10/p90 ms per call of each function; calls interleaved so all see the same load."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts = {k: [] for k in fns}
    for _ in range(calls):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    out = {}
    for k, v in ts.items():
        v = np.array(v) * 1e3
        out[k] = {"median_ms": float(np.median(v)), "p10_ms": float(np.percentile(v, 10)),
                  "p90_ms": float(np.percentile(v, 90)), "calls": calls}
    return out


def bare_loop(renderer: Renderer, mesh: Mesh, R, t, K, size: int):
    """A minimal moderngl loop over the same views: one draw per viewport, one read-back."""
    ctx = renderer.ctx
    n = len(R)
    prog = ctx.program(vertex_shader=BARE_VS, fragment_shader=BARE_FS)
    vbo = ctx.buffer(np.hstack([mesh.vertices, mesh.normals]).astype("f4").tobytes())
    ibo = ctx.buffer(mesh.faces.astype("u4").tobytes())
    vao = ctx.vertex_array(prog, [(vbo, "3f 12x", "in_pos")], index_buffer=ibo, index_element_size=4)
    fbo = ctx.framebuffer([ctx.renderbuffer((size, size * n), 2, dtype="f4")], ctx.depth_renderbuffer((size, size * n)))
    mvps = []
    for i in range(n):
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = R[i], t[i]
        mvps.append((projection(K, size, size, 300.0, 500.0) @ M).T.astype("f4").tobytes())
    out = np.empty((n, size, size, 2), np.float32)

    def run():
        fbo.use()
        ctx.scissor = None
        fbo.clear(depth=1.0)
        ctx.enable_only(moderngl.DEPTH_TEST)
        for i in range(n):
            ctx.viewport = (0, i * size, size, size)
            prog["u_MVP"].write(mvps[i])
            vao.render()
        fbo.read_into(out, viewport=(0, 0, size, size * n), components=2, dtype="f4")

    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--subdivisions", type=int, default=5, help="icosphere level: 20 * 4**s triangles")
    p.add_argument("--device", default=None, help="None (EGL device 0), an EGL index, 'cuda:K' or 'cpu'")
    p.add_argument("--json", default="runs/benchmarks/render.json", help="where to write the results")
    a = p.parse_args(argv)
    device = int(a.device) if a.device is not None and a.device.isdigit() else a.device

    mesh = make_model(a.subdivisions)
    R, t, K = views(a.views, a.size)
    r = Renderer(device=device)
    r.add_object(1, mesh)
    ids = [1] * a.views
    culled = Renderer(device=device, cull_backfaces=True)
    culled.add_object(1, mesh)
    res = {
        "device": describe(r.ctx),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
        "triangles": mesh.n_faces,
        "views": a.views,
        "size": a.size,
    }
    res.update(timed({
        "render": lambda: r.render(ids, R, t, K, a.size, a.size),
        "bare_moderngl_loop": bare_loop(r, mesh, R, t, K, a.size),
        "render_cull_backfaces": lambda: culled.render(ids, R, t, K, a.size, a.size),
    }, a.calls, a.warmup))
    res["anchor_pytorch3d_ms"] = 17800.0

    print(f"{res['device']}: {a.views} views {a.size}x{a.size}, {mesh.n_faces} triangles")
    for k in ("render", "bare_moderngl_loop", "render_cull_backfaces"):
        v = res[k]
        print(f"  {k:24s} median {v['median_ms']:7.2f} ms  (p10 {v['p10_ms']:.2f}, p90 {v['p90_ms']:.2f})")
    print(f"  speed-up over PyTorch3D (17.8 s): {17800.0 / res['render']['median_ms']:.0f}x")
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"  wrote {a.json}")
    return res


if __name__ == "__main__":
    main()
