"""``mrcnet-eval``: BOP'19 metrics of a results CSV on a BOP split (a thin wrapper of bop_eval)."""
from __future__ import annotations

from pathlib import Path

import click

from mrcnet.runtime.cliopts import deprecated_alias
from mrcnet.runtime.datasets import DatasetPathError, find_dataset
from mrcnet.runtime.formats.bop import BopFormatError
from mrcnet.runtime.formats.files import OutputError, prepare_out_dir
from mrcnet.runtime.render import MeshError, RenderContextError

from .bop_eval import Bop19Params, EvalError, default_vsd_delta, evaluate_bop19, format_markdown, write_report


def split_options(f):
    """``--split`` and ``--split-type`` (the split folder ``<split>[_<split_type>]``): shared by
    ``mrcnet-eval`` and ``mrcnet-infer``."""
    f = click.option("--split-type", default=None, help="Split type, e.g. primesense (test_primesense/).")(f)
    return click.option("--split", default="test", show_default=True, help="Split folder name.")(f)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="BOP dataset folder (models[_eval]/, <split>/<scene>/...), or a dataset name found as "
                   "$BOP_PATH/NAME (e.g. tless).")
@split_options
@click.option("--results", required=True, type=click.Path(dir_okay=False),
              help="BOP'19 results CSV (scene_id,im_id,obj_id,score,R,t,time).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder for scores_bop19.json/.md [default: <results>_eval/ next to the CSV].")
@click.option("--targets", default=None,
              help="Targets file [default: DATA/test_targets_bop19.json, else derived from the "
                   "annotations].")
@click.option("--models", default=None,
              help="Models folder of the errors: a name inside DATA or a path [default: models_eval when "
                   "DATA has it, else models].")
@click.option("--metrics", default="vsd,mssd,mspd", show_default=True,
              help="Comma-separated subset of vsd,mssd,mspd (AR needs all three).")
@click.option("--visib-gt-min", default=-1.0, show_default=True, type=float,
              help="-1: the inst_count most visible instances per target (BOP'19); >= 0: a "
                   "visible-fraction threshold.")
@click.option("--vsd-delta", default=None, type=float,
              help="VSD visibility tolerance, mm [default: 15; 5 when the dataset folder is "
                   "named itodd, as bop_toolkit].")
@click.option("-q", "--quiet", "no_progress", is_flag=True, help="No progress bar.")
@deprecated_alias("--no-progress", "--quiet", "no_progress", is_flag=True)
def main(data_dir, split, split_type, results, out_dir, targets, models, metrics, visib_gt_min, vsd_delta,
         no_progress):
    """Evaluate RESULTS on a BOP split with the BOP'19 metrics and print the table."""
    try:
        data_dir = find_dataset(data_dir)
    except DatasetPathError as e:
        raise click.ClickException(str(e)) from None
    if vsd_delta is None:
        vsd_delta = default_vsd_delta(data_dir)
    params = Bop19Params(visib_gt_min=visib_gt_min, vsd_delta=vsd_delta)
    if out_dir is None:
        res = Path(results)
        out_dir = res.parent / f"{res.stem}_eval"
    try:
        prepare_out_dir(out_dir)
    except OutputError as e:
        raise click.ClickException(str(e)) from None
    try:
        report = evaluate_bop19(data_dir, results, split=split, split_type=split_type,
                                targets=targets, params=params, models=models,
                                metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                                progress=not no_progress)
    except (EvalError, BopFormatError, MeshError, RenderContextError) as e:
        raise click.ClickException(str(e)) from None
    try:
        js, md = write_report(report, out_dir)
    except OSError as e:
        raise click.ClickException(f"--out {out_dir}: cannot write the report ({e.strerror or e})") from None
    click.echo(format_markdown(report))
    click.echo(f"wrote {js} and {md}")


if __name__ == "__main__":  # pragma: no cover
    main()
