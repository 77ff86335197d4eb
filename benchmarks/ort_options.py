"""ONNX Runtime CPU session options, measured: which settings run an export's two graphs fastest.

Each candidate (graph optimisation level, intra-op threads, thread spinning, memory arena and
memory pattern, execution mode) opens its own classifier and regressor sessions on the export's
graphs; the candidates then run in turn (round robin, so a busy machine slows them alike) on the
same inputs (:func:`mrcnet.export.onnx_export.example_inputs`, ``--detections`` x 4 crops; the
regressor is fed the classifier's outputs). Reported per candidate: median and best wall time of
classifier + regressor over ``--repeats`` rounds, and the ratio of the median to the baseline's
(ONNX Runtime's defaults with all graph optimisations, the runtime's current set-up).

    .venv/bin/python benchmarks/ort_options.py --model out/export --detections 1,4 --repeats 15

Prints a markdown table per detection count and writes ``--json`` when given.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort

from mrcnet.export import example_inputs
from mrcnet.runtime.manifest import ManifestError, load_manifest

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

#: name -> settings; "baseline" is the runtime's current session (defaults + all optimisations)
CANDIDATES: dict[str, dict] = {
    "baseline": {"level": "all"},
    "level=basic": {"level": "basic"},
    "level=extended": {"level": "extended"},
    "threads=1": {"level": "all", "threads": 1},
    "threads=2": {"level": "all", "threads": 2},
    "no-spinning": {"level": "all", "spinning": False},
    "no-arena": {"level": "all", "arena": False},
    "no-mem-pattern": {"level": "all", "mem_pattern": False},
    "parallel-exec": {"level": "all", "parallel": True},
    "threads=2+no-spinning": {"level": "all", "threads": 2, "spinning": False},
}


def session_options(level: str = "all", threads: int = 0, spinning: bool = True, arena: bool = True,
                    mem_pattern: bool = True, parallel: bool = False) -> ort.SessionOptions:
    """An ``ort.SessionOptions`` for one candidate (threads 0 = ONNX Runtime's default)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    if threads:
        so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.enable_cpu_mem_arena = bool(arena)
    so.enable_mem_pattern = bool(mem_pattern)
    if parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.log_severity_level = 3
    return so


def _run(sess: ort.InferenceSession, feeds: dict) -> dict:
    names = [i.name for i in sess.get_inputs()]
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: feeds[k] for k in names})))


def measure(model_dir: Path, detections: int, repeats: int, candidates: dict = CANDIDATES) -> dict:
    """{candidate: {"median_ms", "best_ms", "vs_baseline"}} for ``detections`` x 4 crops."""
    man = load_manifest(model_dir)
    paths = {"classifier": man.path(man.classifier.onnx), "regressor": man.path(man.regressor.onnx)}
    feeds = example_inputs(len(man.obj_ids), man.n_rot * detections, seed=3, crop_size=man.crop_size)
    sessions = {name: {g: ort.InferenceSession(str(p), session_options(**opts), providers=["CPUExecutionProvider"])
                       for g, p in paths.items()} for name, opts in candidates.items()}

    def once(s):
        out = _run(s["classifier"], feeds)
        _run(s["regressor"], {**feeds, **out})

    for s in sessions.values():  # warm-up (allocations, first-run kernels)
        once(s)
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            once(s)
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["baseline"]))
    return {name: {"median_ms": 1e3 * float(np.median(t)), "best_ms": 1e3 * float(np.min(t)),
                   "vs_baseline": base / float(np.median(t))} for name, t in times.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Export directory (mrcnet-export --out).")
@click.option("--detections", default="1,4", show_default=True, help="Comma-separated detections per run.")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False))
def main(model_dir, detections, repeats, json_path):
    """Time ONNX Runtime session options on an export's classifier + regressor."""
    try:
        ds = [int(d) for d in detections.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"{detections!r} is not a comma-separated list of integers",
                                 param_hint="--detections") from None
    try:
        res = {str(d): measure(Path(model_dir), d, repeats) for d in ds}
    except ManifestError as e:
        raise click.ClickException(str(e)) from None
    for d, rows in res.items():
        click.echo(f"\n{d} detection(s), {repeats} rounds: classifier + regressor wall time")
        click.echo("| options | median ms | best ms | speed vs baseline |\n|---|---|---|---|")
        for name, r in sorted(rows.items(), key=lambda kv: kv[1]["median_ms"]):
            click.echo(f"| {name} | {r['median_ms']:.1f} | {r['best_ms']:.1f} | {r['vs_baseline']:.2f}x |")
    if json_path:
        Path(json_path).write_text(json.dumps({"model": str(model_dir), "repeats": repeats, "results": res}, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
