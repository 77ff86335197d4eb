"""``mrcnet-infer``: poses for every target of a BOP split -> BOP'19 results CSV (thin wrapper of
:func:`mrcnet.eval.infer.infer_split`)."""
from __future__ import annotations

import json

import click

from mrcnet.runtime.cliopts import cli_message, deprecated_alias, tta_select_option
from mrcnet.runtime.formats.bop import BopFormatError
from mrcnet.runtime.formats.files import OutputError, atomic_open, check_out_file
from mrcnet.runtime.render import MeshError, RenderContextError

from .cli import split_options
from .infer import InferError, infer_split


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="BOP dataset folder (models/, <split>/<scene>/, test_targets_bop19.json), or a dataset "
                   "name found as $BOP_PATH/NAME (e.g. tless).")
@split_options
@click.option("--model", required=True, type=click.Path(exists=False),
              help=".pth checkpoint (runs on torch) or mrcnet-export directory (runtime backends).")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "tensorrt"]), default=None,
              help="[default: torch for a checkpoint; TensorRT if the export has usable engines, else "
                   "ONNX Runtime, for an export directory]")
@click.option("--precision", default=None, help="TensorRT engine set of the export (fp32, fp16, int8).")
@click.option("--detections", default=None, type=click.Path(dir_okay=False),
              help="BOP'22 detections (.json/.json.gz) [default: ground-truth boxes, bbox_visib].")
@click.option("--targets", default=None, type=click.Path(dir_okay=False),
              help="Targets file [default: DATA/test_targets_bop19.json, else from the annotations].")
@click.option("--out", default=None, type=click.Path(),
              help="Results CSV (FILE.csv), or a folder for BOP's name METHOD_DATASET-SPLIT.csv "
                   "[default: results/ in the working directory].")
@click.option("--method", default=None, help="Method name of the BOP results file [default: mrcnet].")
@click.option("--models", default=None,
              help="Models folder a checkpoint renders with: a name inside DATA or a path [default: the "
                   "dataset preset's for the split, e.g. T-LESS models_cad, else models].")
@click.option("--all-detections", is_flag=True,
              help="Run every detection of a target object, not only its inst_count best.")
@click.option("--dataset", default=None, help="Dataset preset of an official checkpoint (tless, lmo, ...).")
@click.option("--device", default="cpu", show_default=True, help="torch device for a checkpoint (cpu, cuda:0).")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True,
              help="ONNX Runtime intra-op threads (0 = default).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted run with the same settings.")
@click.option("--summary", "summary_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the run summary as JSON here.")
@tta_select_option
@click.option("-q", "--quiet", "no_progress", is_flag=True, help="No progress bar.")
@deprecated_alias("--no-progress", "--quiet", "no_progress", is_flag=True)
def main(data_dir, split, split_type, model, backend, precision, detections, targets, out, method, models,
         all_detections, dataset, device, threads, resume, summary_path, tta_select, no_progress):
    """Estimate the poses of every target of a BOP split and write the BOP'19 results CSV."""
    try:
        if summary_path:
            check_out_file(summary_path, "--summary")
        s = infer_split(data_dir, model, out, split=split, split_type=split_type, backend=backend,
                        detections=detections, targets=targets, dataset=dataset, device=device,
                        threads=threads, precision=precision, resume=resume, progress=not no_progress,
                        models=models, all_detections=all_detections, method=method, tta_select=tta_select,
                        report=lambda msg: click.echo(msg, err=True))
    except (InferError, BopFormatError, MeshError, RenderContextError, OutputError) as e:
        raise click.ClickException(cli_message(e, {"data_dir": "--data"})) from None
    for line in s.lines():
        click.echo(line)
    if summary_path:
        with atomic_open(summary_path, "w", encoding="utf8") as f:
            f.write(json.dumps(s.to_dict(), indent=2) + "\n")
    if not s.complete:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
