"""``mrcnet-export``: a checkpoint -> an export directory (ONNX graphs, engines, manifest, models).

Thin click wrapper over :func:`mrcnet.export.exporter.export_checkpoint`; every user error is one
line on stderr and exit status 2 (1 for an unexpected failure).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from mrcnet.runtime.cliopts import cli_message
from mrcnet.runtime.assets import DEMO_EXPORT_DIR

from .exporter import (BACKENDS, DEMO_DATASET, PRECISIONS, ExportError, ExportResult, dataset_models_dir,
                       default_checkpoint, default_models_dir, export_checkpoint, official_checkpoint)
from .tensorrt import EngineBuildError, TensorRTUnavailable, engines_for_export


#: export_checkpoint's parameters -> this command's flags (where they differ from --<name>)
FLAGS = {"models_dir": "--models", "out_dir": "--out"}


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def summary_lines(res: ExportResult) -> list[str]:
    """Human-readable summary: files and sizes, parameter counts, parity figures."""
    lines = [f"export directory: {res.out_dir}  (objects {res.obj_ids}, {res.seconds:.1f} s)"]
    for k, n in res.sizes.items():
        lines.append(f"  {k:<22} {Path(res.files[k]).name:<28} {_fmt_bytes(n):>12}")
    p = res.n_params
    lines.append("parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in p.items()))
    for name, fig in res.parity.items():
        keys = [k for k in ("max", "pose_logits", "R", "t", "argmax_agree", "pose_logits_argmax_agree",
                            "pose_logits_err", "rot_diff_deg_median", "t_diff_mm_median", "rot_agree_5deg",
                            "t_agree_5mm") if k in fig]
        lines.append(f"parity {name}: " + ", ".join(
            f"{k} {fig[k]:.3g}" if isinstance(fig[k], float) else f"{k} {fig[k]}" for k in keys))
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint (.pth, official or project format). Default: chkpt_DATASET/DATASET.pth (the "
                   "official layout) with --dataset, else the shipped demo model.")
@click.option("--dataset", default=None,
              help="Dataset preset (tless, lmo, ycbv, itodd, synth). Default: from the checkpoint.")
@click.option("--object-ids", default=None, help="Comma-separated BOP object ids to keep, e.g. 5,7.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None,
              help="BOP models folder (obj_XXXXXX.ply). Default: with --dataset, the dataset's in $BOP_PATH "
                   "(T-LESS models_cad); else the shipped demo's models.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export directory to write (default: export_DATASET with --dataset and no --checkpoint; for "
                   "the demo model: where mrcnet-run --demo reads it).")
@click.option("--backend", type=click.Choice(BACKENDS), default="onnx", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp16: TensorRT, writes the fp16 graphs; int8: ONNX Runtime QDQ graphs (--backend onnx) or "
                   "TensorRT symmetric QDQ graphs (--backend tensorrt), calibrated on --calib-data.")
@click.option("--max-detections", type=int, default=8, show_default=True,
              help="TensorRT optimisation profile: up to this many detections (4 crops each).")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="BOP dataset root or split folder for int8 calibration crops.")
@click.option("--calib-split", default=None, help="Split of --calib-data (e.g. test_primesense). Default: auto.")
@click.option("--calib-count", type=int, default=32, show_default=True, help="Calibration detections.")
@click.option("--engines-only", is_flag=True,
              help="Only build TensorRT engines for the export already in --out (its fp32 / fp16 / int8 graphs); "
                   "no torch needed: run it on the target GPU.")
@click.option("--box-rule", type=click.Choice(["clip", "official"]), default=None,
              help="How detection boxes become crop squares: official (integer truncation and centre/size "
                   "caps, as the official inference) or clip. Default: the checkpoint's (official for "
                   "official checkpoints).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def main(checkpoint, dataset, object_ids, models_dir, out_dir, backend, precision, max_detections, calib_data,
         calib_split, calib_count, engines_only, box_rule, quiet):
    """Export an MRC-Net checkpoint to ONNX (and TensorRT) for the torch-free runtime."""
    def progress(msg: str) -> None:
        if not quiet:
            click.echo(f"[mrcnet-export] {msg}", err=True)

    official = checkpoint is None and dataset is not None and dataset.lower() != DEMO_DATASET
    if out_dir is None:
        if checkpoint is not None:
            raise click.UsageError("missing --out DIR (the export directory to write)")
        out_dir = Path(f"export_{dataset.lower()}") if official else DEMO_EXPORT_DIR
    if engines_only:
        try:
            entry = engines_for_export(out_dir, precision=precision, max_detections=max_detections, progress=progress)
        except (ValueError, TensorRTUnavailable, EngineBuildError) as e:
            click.echo(f"mrcnet-export: error: {cli_message(e, FLAGS)}", err=True)
            sys.exit(2)
        click.echo(f"engines ({precision}): {entry['classifier']}, {entry['regressor']} in {out_dir}")
        return
    # imports torch (--engines-only above runs without it)
    from mrcnet.model.subset import SubsetError, parse_object_ids
    from .quantize import CalibrationError

    try:
        ids = parse_object_ids(object_ids)
        if official:  # the official layout: chkpt_<dataset>/<dataset>.pth
            checkpoint = official_checkpoint(dataset.lower())
        if models_dir is None and dataset is not None and dataset.lower() != DEMO_DATASET:
            models_dir = dataset_models_dir(dataset.lower())  # the dataset's render models in the BOP root
        if checkpoint is None:
            checkpoint = default_checkpoint()
            if not checkpoint.is_file():
                raise ExportError(f"--checkpoint not given and the shipped demo model {checkpoint} does not exist")
        res = export_checkpoint(checkpoint, out_dir, dataset=dataset, object_ids=ids,
                                models_dir=models_dir if models_dir is not None else default_models_dir(),
                                backend=backend, precision=precision, max_detections=max_detections,
                                calib_data=calib_data, calib_split=calib_split, calib_count=calib_count,
                                progress=progress, box_rule=box_rule)
    except (ExportError, SubsetError, CalibrationError) as e:
        click.echo(f"mrcnet-export: error: {cli_message(e, FLAGS)}", err=True)
        sys.exit(2)
    for line in summary_lines(res) + res.notes:
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
