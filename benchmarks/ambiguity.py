"""How ambiguous each object looks: training crops whose visible silhouettes nearly coincide, and
how far apart their poses are.

For every object of a BOP split, ``--samples`` training crops (the trainer's crops without colour
or background augmentation) are compared pairwise: pairs whose visible masks overlap with IoU >=
``--iou`` look alike in outline, and their rotation difference (degrees, the closest member of the
declared symmetry group) says whether the outline pins the pose down. An object whose look-alike
pairs are far apart in rotation is near-symmetric to the network: only small details (a pin, a
hole, shading) tell those poses apart, and learning them takes far more training than a
well-shaped object does. Declare true symmetries in ``models_info.json``; pick distinctive parts
for a quick demo.

    python benchmarks/ambiguity.py --data runs/demo/data --split train_pbr --samples 4000

Prints a markdown table and writes ``<out>/ambiguity.json`` and ``<out>/ambiguity.png`` (the most
distant look-alike pairs of each object).
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from mrcnet.eval.pose_errors import re_sym
from mrcnet.runtime.presets import get_dataset


def rotation_gap_deg(Ra: np.ndarray, Rb: np.ndarray, sym_R: np.ndarray) -> np.ndarray:
    """Symmetry-aware rotation difference of pairs: (P, 3, 3), (P, 3, 3), (S, 3, 3) -> (P,) degrees
    (:func:`mrcnet.eval.pose_errors.re_sym` of each pair)."""
    return np.array([re_sym(a, b, sym_R) for a, b in zip(Ra, Rb)], np.float64)


def lookalike_pairs(masks: np.ndarray, R: np.ndarray, sym_R: np.ndarray, iou_min: float = 0.85
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of crops with mask IoU >= ``iou_min``.

    masks (N, H, W) bool, R (N, 3, 3) poses in each crop's frame, sym_R (S, 3, 3) (identity first).
    Returns pairs (P, 2) int (i < j), their IoU (P,) and rotation difference (P,) degrees.
    """
    m = masks.reshape(len(masks), -1).astype(np.float32)
    inter = m @ m.T
    area = m.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1.0)
    i, j = np.nonzero(np.triu(iou >= iou_min, k=1))
    gap = rotation_gap_deg(R[i], R[j], sym_R) if len(i) else np.zeros(0)
    return np.stack([i, j], 1), iou[i, j], gap


def summarise(gap: np.ndarray, n: int) -> dict:
    """``{"crops", "pairs", "median_gap_deg", "share_over_90deg"}`` (None where no pair)."""
    return {"crops": int(n), "pairs": int(len(gap)),
            "median_gap_deg": float(np.median(gap)) if len(gap) else None,
            "share_over_90deg": float(np.mean(gap > 90.0)) if len(gap) else None}


def measure(data, split: str | None, samples: int, iou_min: float, seed: int = 0) -> tuple[dict, dict]:
    """Per object: the :func:`summarise` entry and the crops of its most distant look-alike pairs."""
    # torch (the train extra): the pair and gap helpers above run without it
    from mrcnet.train.dataset import TrainingSamples
    from mrcnet.model import get_config

    cfg = get_config("small")
    ds = TrainingSamples(data, cfg.bins, get_dataset("synth").depth_range, split=split, augment=True,
                         seed=seed, label_cache=0, color_prob=0.0, bg_prob=0.0, size=cfg.crop_size)
    idx = np.random.default_rng(seed).permutation(len(ds))[:samples]
    per: dict[int, dict] = {}
    for i in tqdm(idx, desc="crops", unit="crop"):
        s = ds[int(i)]
        e = per.setdefault(int(s["obj_id"]), {"mask": [], "R": [], "crop": []})
        e["mask"].append(s["mask"].numpy() > 0.5)
        e["R"].append(s["R"].numpy().astype(np.float64))
        e["crop"].append((s["crops"][:3].numpy().transpose(1, 2, 0) * 255).astype(np.uint8))
    report, examples = {}, {}
    for oid, e in sorted(per.items()):
        pairs, _, gap = lookalike_pairs(np.stack(e["mask"]), np.stack(e["R"]),
                                        ds.objects[oid].sym_R.numpy().astype(np.float64), iou_min)
        report[f"obj_{oid}"] = summarise(gap, len(e["R"]))
        top = np.argsort(-gap)[:4]
        examples[oid] = [(e["crop"][pairs[k, 0]], e["crop"][pairs[k, 1]], float(gap[k])) for k in top]
    return report, examples


def plot(examples: dict, path) -> None:
    """PNG: per object (rows) its most distant look-alike pairs, each pair side by side."""
    import matplotlib  # slow, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend choice above

    rows, cols = max(len(examples), 1), max([len(v) for v in examples.values()] + [1])
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (oid, pairs) in enumerate(sorted(examples.items())):
        for c, (a, b, gap) in enumerate(pairs):
            axes[r, c].imshow(np.concatenate([a, b], 1)[..., ::-1])
            axes[r, c].set_title(f"object {oid}: {gap:.0f} deg apart", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@click.command(context_settings={"show_default": True})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="BOP dataset folder")
@click.option("--split", default=None, help="split folder (default: the only one, else train_pbr/train)")
@click.option("--samples", type=click.IntRange(2), default=4000, help="crops drawn from the split")
@click.option("--iou", type=click.FloatRange(0.0, 1.0), default=0.85, help="mask IoU from which two crops look alike")
@click.option("--seed", type=int, default=0)
@click.option("--out", type=click.Path(file_okay=False), default="out/ambiguity")
def main(data, split, samples, iou, seed, out) -> None:
    """Look-alike crops per object and their rotation gaps (see the module docstring)."""
    report, examples = measure(data, split, samples, iou, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ambiguity.json").write_text(json.dumps({"data": str(data), "split": split, "iou": iou,
                                                     "objects": report}, indent=1))
    plot(examples, out / "ambiguity.png")
    click.echo(f"| object | crops | look-alike pairs (IoU >= {iou}) | median rotation gap | share > 90 deg |")
    click.echo("| --- | --- | --- | --- | --- |")
    for k, v in report.items():
        med = "-" if v["median_gap_deg"] is None else f"{v['median_gap_deg']:.0f} deg"
        share = "-" if v["share_over_90deg"] is None else f"{100 * v['share_over_90deg']:.0f} %"
        click.echo(f"| {k} | {v['crops']} | {v['pairs']} | {med} | {share} |")
    click.echo(f"json: {out / 'ambiguity.json'}; pairs: {out / 'ambiguity.png'}")


if __name__ == "__main__":
    main()
