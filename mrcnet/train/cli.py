"""``mrcnet-train``: train MRC-Net on a BOP split (one process, or one per device under torchrun).

    mrcnet-train --data DIR --preset small --object-ids 1,2,3 --epochs 10 --batch-size 8 --out runs/demo
    mrcnet-train --data tless --split train_pbr,train_primesense --preset paper --dataset tless \
        --backbone-init resnet34-imagenet.pth --backgrounds VOC2012/JPEGImages --out runs/tless
    torchrun --nproc_per_node 8 -m mrcnet.train.cli --data DIR --preset paper --batch-size 16 --out runs/x
"""
from __future__ import annotations

import logging
import sys

import click

from mrcnet.data.samples import BG_PROB, BG_RULES, BOX_MAP_MODES
from mrcnet.runtime.cliopts import cli_message, deprecated_alias, object_ids
from mrcnet.runtime.formats.files import OutputError

from .backbone_init import STEM_RULES, BackboneInitError
from .trainer import TrainConfig, TrainingInterrupted, train


@click.command(context_settings={"show_default": True})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="BOP dataset folder (models/ + a split)")
@click.option("--split", default=None,
              help="split folder, or several comma-separated (train_pbr,train_primesense) trained together "
                   "(default: the only one, else train_pbr/train)")
@click.option("--preset", type=click.Choice(["paper", "small"]), default="small", help="model preset")
@click.option("--dataset", default="synth", help="dataset preset of runtime.presets (depth range)")
@click.option("--object-ids", "objects", callback=object_ids, default=None, help="BOP object ids in class order, e.g. 1,2,3 (default: all)")
@deprecated_alias("--objects", "--object-ids", "objects", callback=object_ids)
@click.option("--epochs", type=click.IntRange(1), default=1)
@click.option("--batch-size", type=click.IntRange(1), default=16, help="per process")
@click.option("--lr", type=float, default=2e-4)
@click.option("--min-lr", type=float, default=5e-6)
@click.option("--warmup", type=click.IntRange(0), default=1000, help="warm-up steps")
@click.option("--weight-decay", type=float, default=1e-3)
@click.option("--workers", type=click.IntRange(0), default=2, help="DataLoader workers per process")
@click.option("--seed", type=int, default=0)
@click.option("--bn-group", type=click.IntRange(0), default=0, help="BatchNorm group (0 = per-process batch)")
@click.option("--ckpt-every", type=click.IntRange(1), default=500, help="checkpoint every N steps")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="stop after this step (schedule unchanged)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder")
@click.option("--resume", is_flag=True, help="continue from OUT/last.pth")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None, help="start from this checkpoint")
@click.option("--backbone-init", type=click.Path(dir_okay=False), default=None,
              help="ImageNet ResNet-34 state dict in torchvision's layout (a local .pth, docs/TRAINING.md) for "
                   "the backbone; paper preset only")
@click.option("--backbone-stem", type=click.Choice(STEM_RULES), default="official",
              help="with --backbone-init: official (a fresh 4-channel stem, as the official code) or imagenet "
                   "(the 3-channel filters in BGR order, box-map channel 0)")
@click.option("--val-data", type=click.Path(exists=True, file_okay=False), default=None, help="held-out BOP dataset")
@click.option("--val-split", default=None)
@click.option("--val-max", type=click.IntRange(1), default=200, help="instances validated per epoch")
@click.option("--val-box-jitter", type=click.FloatRange(0.0, 1.0), default=0.0,
              help="also validate with jittered boxes: each side moved by up to this share of the box size")
@click.option("--bg-prob", type=click.FloatRange(0.0, 1.0), default=BG_PROB,
              help="background replacement probability (for the instances --bg-rule selects)")
@click.option("--bg-rule", type=click.Choice(BG_RULES), default="official",
              help="official: on PBR splits only objects seen >= 3 times in the image, every instance on "
                   "real splits; every: every instance")
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False), default=None,
              help="folder of background images, e.g. VOC2012 JPEGImages (default: images of the split)")
@click.option("--models", default=None,
              help="models folder: a name in DATA or a path (default: the dataset preset's for the split, e.g. "
                   "T-LESS models_cad, else models)")
@click.option("--box-map", "box_map_mode", type=click.Choice(BOX_MAP_MODES), default="centred",
              help="training box map: centred (official: the box centred in the zoomed crop, a noisy "
                   "detection) or exact (the ground-truth box in the shifted crop)")
@click.option("--no-amp", is_flag=True, help="disable mixed precision on GPU")
@click.option("--device", default=None, help="torch device: cpu, cuda:0 ... (default: cuda:LOCAL_RANK if available)")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def main(data, split, preset, dataset, objects, epochs, batch_size, lr, min_lr, warmup, weight_decay, workers, seed,
         bn_group, ckpt_every, max_steps, out, resume, init, val_data, val_split, val_max, val_box_jitter, bg_prob,
         bg_rule, backgrounds, models, box_map_mode, no_amp, device, quiet,
         backbone_init, backbone_stem):
    """Train MRC-Net (docs/MODEL.md §5); checkpoints, TensorBoard logs and loss curves go to OUT."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if backbone_init and init:
        raise click.UsageError("--init and --backbone-init: give one (a whole checkpoint, or ImageNet backbone "
                               "weights)")
    cfg = TrainConfig(data=data, out=out, preset=preset, dataset=dataset, objects=objects, split=split, epochs=epochs,
                      batch_size=batch_size, lr=lr, min_lr=min_lr, warmup=warmup, weight_decay=weight_decay,
                      workers=workers, seed=seed, bn_group=bn_group, ckpt_every=ckpt_every, max_steps=max_steps,
                      resume=resume, init=init, val_data=val_data, val_split=val_split, val_max=val_max,
                      val_box_jitter=val_box_jitter, bg_prob=bg_prob, bg_rule=bg_rule, backgrounds=backgrounds,
                      box_map_mode=box_map_mode, models=models,
                      backbone_init=backbone_init, backbone_stem=backbone_stem,
                      amp=not no_amp, device=device, progress=not quiet)
    try:
        res = train(cfg)
    except BackboneInitError as e:
        raise click.ClickException(f"--backbone-init: {e}") from None
    except (ValueError, FileNotFoundError, KeyError, OutputError) as e:
        raise click.ClickException(cli_message(e)) from None
    except TrainingInterrupted as e:
        click.echo(f"mrcnet-train: {e}", err=True)
        sys.exit(143 if e.signal == "SIGTERM" else 130)
    click.echo("training instances: " + ", ".join(f"{k} {v}" for k, v in res["split_counts"].items()))
    click.echo(f"step {res['step']} ({res['steps_per_second']:.3g} steps/s); outputs in {res['out']}")


if __name__ == "__main__":
    main()
