"""MRC-Net trainer: one device (CPU or GPU) or many under ``torchrun`` (DistributedDataParallel).

- Data: :class:`mrcnet.train.dataset.TrainingSamples` (one split, or several joined); :class:`BlockSampler` gives every step a
  global batch of ``batch_size x world`` samples (a seeded permutation per epoch), process r taking
  the r-th block: the same samples reach the model in one process with ``batch_size x world`` and
  ``bn_group = batch_size`` as in ``world`` processes (BatchNorm statistics are per block).
- Model step (:class:`TrainStep`, the module DDP wraps): stage 1 -> render the argmax pose with the
  project's renderer (:class:`StageTwoRenderer`, no gradient) -> stage 2 -> losses
  (:mod:`mrcnet.train.losses`).
- AdamW (weight decay on conv / linear / per-object conv weights only), learning rate linear
  warm-up from ``min_lr`` to ``lr`` then cosine to ``min_lr`` (per step); AMP (float16 + GradScaler)
  on GPU.
- Rank 0: tqdm, TensorBoard scalars (``<out>/tb``), ``<out>/history.json``, checkpoints
  ``<out>/last.pth`` written atomically every ``ckpt_every`` steps and at each epoch end (model,
  optimizer, scheduler, scaler, step, RNG states, history: ``resume`` continues exactly), the
  weights ``<out>/model.pth`` (project format, official ``network`` key) and
  ``<out>/loss_curves.png`` at the end; validation on a held-out split each epoch (rotation and
  translation errors, share within (5 deg, 5 cm), per object) into ``<out>/val_epoch_XXX.json``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from mrcnet.checkpoint import load_checkpoint, read_checkpoint_file, save_checkpoint
from mrcnet.data import bop
from mrcnet.data.samples import jittered_box
from mrcnet.eval import pose_errors as pe
from mrcnet.eval.bop_eval import evaluate_bop19
from mrcnet.geometry import tta_select
from mrcnet.model import CondConv2d, STAGE2_FEATURES, build_model, get_config
from mrcnet.runtime.errors import ParameterError
from mrcnet.runtime.formats.files import atomic_open, atomic_write_text, prepare_out_dir
from mrcnet.runtime.geometry import TTA_GROUP
from mrcnet.runtime.preprocess import prepare_detection
from mrcnet.runtime.presets import get_dataset
from mrcnet.runtime.render import Renderer, load_mesh
from mrcnet.runtime.signals import Terminated, sigterm_as_interrupt

from .backbone_init import check_resnet34, init_backbone_from_imagenet, read_imagenet_state
from .dataset import TrainingSamples, collate_samples, training_samples
from .losses import LossWeights, mrcnet_losses

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in checkpoints; ``resume`` requires the same values for
    the fields in :data:`RESUME_KEYS`). ``batch_size`` is per process."""

    data: str
    out: str
    preset: str = "small"
    dataset: str = "synth"  # depth range (and default object ids) from runtime.presets
    objects: list[int] | None = None  # obj ids in class order; default: all of models_info
    split: str | None = None  # split folder, or several comma-separated ("train_pbr,train_primesense")
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-4
    min_lr: float = 5e-6
    warmup: int = 1000
    weight_decay: float = 1e-3
    workers: int = 0
    seed: int = 0
    bn_group: int = 0  # BatchNorm statistics group (0 = the whole per-process batch)
    n_vertices: int = 1000
    ckpt_every: int = 500  # steps
    max_steps: int | None = None  # stop after this global step (the schedule still spans all epochs)
    resume: bool = False
    init: str | None = None  # official or project checkpoint to start from
    backbone_init: str | None = None  # ImageNet ResNet-34 state dict (torchvision layout) for the backbone
    backbone_stem: str = "official"  # mrcnet.train.backbone_init.STEM_RULES
    val_data: str | None = None
    val_split: str | None = None
    val_max: int = 200  # instances validated
    amp: bool = True  # on GPU only
    device: str | None = None  # default: cuda:LOCAL_RANK if available, else cpu
    label_cache_dir: str | None = None  # default <out>/label_cache
    color_prob: float = 0.8
    bg_prob: float = 0.8  # background replacement probability for the instances bg_rule selects
    bg_rule: str = "official"  # mrcnet.data.samples.BG_RULES
    backgrounds: str | None = None  # folder of background images (default: images of the split)
    models: str | None = None  # models folder (name in data, or path); default: the dataset preset's for the split
    box_map_mode: str = "centred"  # mrcnet.data.samples.BOX_MAP_MODES
    val_box_jitter: float = 0.0  # > 0: also validate with jittered boxes (a share of the box size)
    augment: bool = True  # zoom-in, in-plane rotation, colour and background (False: plain crops)
    progress: bool = True


RESUME_KEYS = ("preset", "dataset", "objects", "epochs", "batch_size", "lr", "min_lr", "warmup", "weight_decay",
               "seed", "bn_group", "n_vertices")


# ------------------------------------------------------------------------------ distributed
def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class BlockSampler(DistributedSampler):
    """Distributed sampler in whole global batches: per epoch a permutation seeded by
    ``seed + epoch``; step s uses ``perm[s*B*W : (s+1)*B*W]``, process r its r-th block of B.
    Incomplete global batches are dropped. Yields ``epoch * len(dataset) + index`` (the dataset
    decodes the epoch, :meth:`TrainingSamples.split_index`). ``set_start(step)`` skips the first
    steps of the epoch (resume)."""

    def __init__(self, dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = int(batch_size)
        self.start = 0
        self.steps = len(dataset) // (self.batch_size * num_replicas)
        if self.steps < 1:
            raise ValueError(f"dataset of {len(dataset)} samples is smaller than one global batch "
                             f"({self.batch_size} x {num_replicas} processes)")

    def set_start(self, step: int) -> None:
        self.start = int(step)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        perm = torch.randperm(n, generator=g).tolist()
        B, W = self.batch_size, self.num_replicas
        for s in range(self.start, self.steps):
            base = s * B * W + self.rank * B
            for i in perm[base: base + B]:
                yield self.epoch * n + i

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch_size


# --------------------------------------------------------------------------------- rendering
class StageTwoRenderer:
    """Renders the stage-1 poses for stage 2: (obj_index (N,), R (N,3,3), t (N,3) mm, K_roi (N,3,3))
    -> (N, 4, S, S) float32 tensor (grey level in the 3 colour channels + box map of the render's
    mask), on the device of R. ``obj_ids[obj_index]`` selects the mesh."""

    def __init__(self, models_dir, obj_ids: Sequence[int], size: int = 256, device=None):
        self.r = Renderer(device=device)
        self.obj_ids = [int(o) for o in obj_ids]
        for oid in self.obj_ids:
            self.r.add_object(oid, load_mesh(Path(models_dir) / f"obj_{oid:06d}.ply"))
        self.size = size

    @torch.no_grad()
    def __call__(self, obj_index, R, t, K_roi) -> torch.Tensor:
        ids = [self.obj_ids[i] for i in obj_index.tolist()]
        res = self.r.render(ids, R.detach().double().cpu().numpy(), t.detach().double().cpu().numpy(),
                            K_roi.detach().double().cpu().numpy(), self.size, self.size)
        return torch.from_numpy(res.network_input()).to(R.device)


class TrainStep(nn.Module):
    """The module DDP wraps: stage 1, rendering of its argmax pose, stage 2. forward(batch dict)
    -> the union of the stage-1 and stage-2 outputs plus ``render``."""

    def __init__(self, model: nn.Module, renderer):
        super().__init__()
        self.model = model
        self.renderer = renderer

    def forward(self, crops, obj_index, fov, K_roi) -> dict:
        s1 = self.model.stage1(crops, obj_index, fov, K_roi)
        render = self.renderer(obj_index, s1["R_init"], s1["t_init"], K_roi).to(crops.dtype)

        s2 = self.model.stage2(render, obj_index, fov, K_roi, **{k: s1[k] for k in STAGE2_FEATURES})
        return {**s1, **s2, "render": render}


# -------------------------------------------------------------------------------- optimiser
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weights of Conv2d / Linear / CondConv2d with ``weight_decay``; everything else
    (biases, norm parameters) without."""
    decay, seen = [], set()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            ps = [m.weight]
        elif isinstance(m, CondConv2d):
            ps = [m.weights]
        else:
            continue
        for p in ps:
            if id(p) not in seen:
                seen.add(id(p))
                decay.append(p)
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step`` divided by ``lr``: linear min_lr -> lr over ``warmup`` steps, then
    cosine lr -> min_lr at ``total``."""
    if warmup > 0 and step < warmup:
        v = min_lr + (lr - min_lr) * step / warmup
    else:
        span = max(total - warmup, 1)
        x = min(max(step - warmup, 0) / span, 1.0)
        v = min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * x))
    return v / lr


# ------------------------------------------------------------------------------ checkpoints
def atomic_torch_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after saving ``checkpoint`` (at ``step``)."""

    def __init__(self, step: int, checkpoint, signal: str = "SIGINT"):
        super().__init__(f"interrupted ({signal}) at step {step}; state saved in {checkpoint} "
                         "(continue with --resume)")
        self.step, self.checkpoint, self.signal = step, checkpoint, signal


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, renderer, ds: TrainingSamples, max_instances: int = 200, batch_detections: int = 4,
             device="cpu", ar_dir=None, box_jitter: float = 0.0) -> dict:
    """Pose errors on a held-out split, the runtime's way (4 in-plane crops per detection with
    BatchNorm per group of 4, ``fov`` training variant, TTA selection), GT ``bbox_visib`` as the
    detection, or with ``box_jitter`` > 0 that box jittered (:func:`mrcnet.data.samples.jittered_box`: what a real
    detector gives is never the exact box). Rotation error: degrees to the closest symmetric GT;
    translation error: mm.
    Returns ``{"all": {...}, "obj_<id>": {...}}`` with ``n``, ``rot_err_deg`` and ``trans_err_mm``
    (medians), ``share_5deg_5cm``.

    The instances validated are those of the split's first images, whole images only, up to
    ``max_instances``. With ``ar_dir`` (a folder) the estimates are also scored with the BOP'19
    protocol (:func:`mrcnet.eval.bop_eval.evaluate_bop19` on those images, their instances as
    targets): ``AR``, ``AR_VSD``, ``AR_MSSD``, ``AR_MSPD`` in [0, 1] are added to each entry, and
    the estimates (``estimates.csv``) and targets (``targets.json``) are kept in ``ar_dir``."""
    group = model.bn_group
    model.set_bn_group(TTA_GROUP)
    errs: dict[int, list] = {}
    items = _whole_images(ds.items, max_instances)
    rows: list[dict] = []
    for i0 in range(0, len(items), batch_detections):
        chunk = items[i0:i0 + batch_detections]
        crops, K_roi, fov, Rz, idx, gts = [], [], [], [], [], []
        for (scene_id, im_id), gt_id in chunk:
            rec = ds.ds.image(scene_id, im_id)
            inst = rec.instances[gt_id]
            image = rec.load_image("bgr")
            box = jittered_box(inst.info["bbox_visib"], image.shape[1], image.shape[0], (scene_id, im_id, gt_id),
                                 box_jitter)
            cb = prepare_detection(image, rec.K, box, TTA_GROUP, "training", model.cfg.crop_size)
            crops.append(cb.crops), K_roi.append(cb.K_roi), fov.append(cb.fov), Rz.append(cb.Rz)
            idx += [ds.cls[inst.obj_id]] * TTA_GROUP
            gts.append(inst)
        f = lambda a: torch.from_numpy(np.concatenate(a)).float().to(device)
        crops_t, K_t, fov_t, Rz_t = f(crops), f(K_roi), f(fov), f(Rz)
        idx_t = torch.tensor(idx, dtype=torch.int64, device=device)
        s1 = model.stage1(crops_t, idx_t, fov_t, K_t)
        render = renderer(idx_t, s1["R_init"], s1["t_init"], K_t)

        s2 = model.stage2(render, idx_t, fov_t, K_t, **{k: s1[k] for k in STAGE2_FEATURES})
        R, t, _ = tta_select(s2["R"], s2["t"], s1["rot_score"], s1["depth_score"], Rz_t)
        for j, inst in enumerate(gts):
            od = ds.objects[inst.obj_id]
            Rp = R[j].double().cpu().numpy()
            re = pe.re_sym(Rp, inst.R, od.sym_R.double().numpy())
            te = float(np.linalg.norm(t[j].double().cpu().numpy() - inst.t))
            errs.setdefault(inst.obj_id, []).append((re, te))
            (scene_id, im_id), _ = chunk[j]
            rows.append({"scene_id": scene_id, "im_id": im_id, "obj_id": inst.obj_id, "score": 1.0, "R": Rp,
                         "t": t[j].double().cpu().numpy()})
    model.set_bn_group(group)

    def summary(rows):
        a = np.asarray(rows, np.float64).reshape(-1, 2)
        return {"n": len(a), "rot_err_deg": float(np.median(a[:, 0])), "trans_err_mm": float(np.median(a[:, 1])),
                "share_5deg_5cm": float(np.mean(pe.within_5deg_5cm(a[:, 0], a[:, 1])))}

    out = {"all": summary([r for v in errs.values() for r in v])}
    out.update({f"obj_{k}": summary(v) for k, v in sorted(errs.items())})
    if ar_dir is not None and rows:
        rep = _bop_ar(ds, items, rows, Path(ar_dir))
        out["all"].update(_ar_fields(rep))
        for oid, r in rep["per_object"].items():
            if f"obj_{int(oid)}" in out:
                out[f"obj_{int(oid)}"].update(_ar_fields(r))
    return out


def _whole_images(items: list, max_instances: int) -> list:
    """The first items (``((scene_id, im_id), gt_id)``, grouped by image) up to ``max_instances``,
    cut at an image boundary (at least one image)."""
    out = []
    for i, it in enumerate(items):
        if len(out) >= max_instances and it[0] != items[i - 1][0]:
            break
        out.append(it)
    return out


AR_KEYS = ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD")


def _ar_fields(report: dict) -> dict:
    return {k: (None if report.get(k) is None else float(report[k])) for k in AR_KEYS}


def _bop_ar(ds: TrainingSamples, items: list, rows: list[dict], ar_dir: Path) -> dict:
    """BOP'19 scores of ``rows`` (one estimate per validated instance) with the validated
    instances as the targets."""
    ar_dir.mkdir(parents=True, exist_ok=True)
    counts = Counter((sid, iid, ds.ds.image(sid, iid).instances[g].obj_id) for (sid, iid), g in items)
    targets = [{"scene_id": s, "im_id": i, "obj_id": o, "inst_count": n} for (s, i, o), n in counts.items()]
    bop.save_test_targets(ar_dir / "targets.json", targets)
    bop.save_bop_results(ar_dir / "estimates.csv", rows)
    return evaluate_bop19(ds.root, ar_dir / "estimates.csv", split=ds.split, targets=ar_dir / "targets.json")


# ------------------------------------------------------------------------------------ plots
def plot_history(history: list[dict], path) -> None:
    """PNG of the loss terms (and total) against the step, log scale, written atomically."""
    import matplotlib  # matplotlib: slow to import, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg") (no display)

    if not history:
        return
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in [k for k in history[0] if k not in ("step", "lr", "wall_s")]:
        vals = np.array([h[key] for h in history], np.float64)
        w = max(1, len(vals) // 50)
        smooth = np.convolve(vals, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, label=key, lw=2.0 if key == "total" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (weighted)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _atomic_json(obj, path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


# ------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns ``{"step", "epoch", "history", "val", "out", "steps_per_second",
    "split_counts"}`` (``{split: training instances}``) on every rank."""
    rank, world, local = dist_env()
    distributed = world > 1
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out = Path(cfg.out)
    if rank == 0:
        prepare_out_dir(out)
    ckpt_path = out / "last.pth"
    resume_ck = None  # checkpoint files are read before the (slow) data set set-up: fail fast
    if cfg.resume:
        if not ckpt_path.is_file():
            raise ParameterError("resume", f"no checkpoint {ckpt_path}")
        resume_ck = read_checkpoint_file(ckpt_path, "--resume")
    if cfg.init:
        read_checkpoint_file(cfg.init, "--init")
    preset = get_dataset(cfg.dataset)
    mcfg = get_config(cfg.preset)
    imagenet = None
    if cfg.backbone_init:
        if cfg.init:
            raise ValueError("init and backbone_init: give one (a whole checkpoint, or ImageNet backbone weights)")
        check_resnet34(mcfg)
        imagenet = read_imagenet_state(cfg.backbone_init)  # checked before the (slow) data set set-up
    torch.manual_seed(cfg.seed)

    ds = training_samples(cfg.data, mcfg.bins, preset.depth_range, split=cfg.split, obj_ids=cfg.objects,
                          augment=cfg.augment, seed=cfg.seed, n_vertices=cfg.n_vertices,
                          label_cache_dir=cfg.label_cache_dir or (out / "label_cache"),
                          color_prob=cfg.color_prob, bg_prob=cfg.bg_prob, size=mcfg.crop_size,
                          backgrounds=cfg.backgrounds, bg_rule=cfg.bg_rule, box_map_mode=cfg.box_map_mode,
                          models=cfg.models, dataset=cfg.dataset)
    if rank == 0:
        log.info("training instances per split: %s (%d in all)",
                 ", ".join(f"{k} {v}" for k, v in ds.counts.items()), len(ds))
    obj_ids = ds.obj_ids
    sampler = BlockSampler(ds, cfg.batch_size, world, rank, cfg.seed)
    steps_per_epoch = sampler.steps
    total = steps_per_epoch * cfg.epochs

    if cfg.init:
        model = load_checkpoint(cfg.init, dataset=cfg.dataset, preset=cfg.preset, device="cpu")
        if model.n_obj != len(obj_ids):
            raise ParameterError("init", f"checkpoint has {model.n_obj} objects, training uses {len(obj_ids)}", cfg.init)
    else:
        model = build_model(len(obj_ids), preset.depth_range, mcfg)
        if imagenet is not None and not cfg.resume:  # a resumed run's checkpoint holds the trained weights
            init_backbone_from_imagenet(model, imagenet, cfg.backbone_stem)
    model.set_bn_group(cfg.bn_group)
    model.to(device).train()
    # The optimizer before the renderer: torch's optimizers import torch._dynamo, and with it Triton's
    # LLVM, which crashes (SIGSEGV) when Mesa's llvmpipe has already loaded its own LLVM (a CUDA build
    # of torch with a software-rendered EGL context; seen with torch 2.13+cu130 and Mesa 22.3).
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup, cfg.lr, cfg.min_lr))
    rdev = f"cuda:{device.index or 0}" if device.type == "cuda" else None
    renderer = StageTwoRenderer(ds.models_dir, obj_ids, mcfg.crop_size, device=rdev)
    step_mod = TrainStep(model, renderer)
    if distributed:
        step_mod = nn.parallel.DistributedDataParallel(step_mod, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = LossWeights()

    step, history = 0, []
    if cfg.resume:
        ck = resume_ck
        old = ck.get("train_config", {})
        diff = [k for k in RESUME_KEYS if k in old and old[k] != asdict(cfg)[k]]
        if diff:
            raise ParameterError("resume", "settings differ from the checkpoint's: "
                                 + ", ".join(f"{k}={asdict(cfg)[k]!r} (was {old[k]!r})" for k in diff),
                                 ckpt_path)
        model.load_state_dict(ck["network"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        step, history = int(ck["step"]), list(ck["history"])
        _set_rng_state(ck["rng"])
        if rank == 0:
            log.info("resumed %s at step %d", ckpt_path, step)

    def save(path):
        save_checkpoint(path, model, dataset=cfg.dataset, obj_ids=obj_ids, depth_range=preset.depth_range,
                        fov_variant="training", optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        scaler=scaler.state_dict(), step=step, last_epoch=step // steps_per_epoch,
                        rng=_rng_state(), history=history, train_config=asdict(cfg))

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard: slow to import, only when logging is on

        writer = SummaryWriter(str(out / "tb"), purge_step=step if step else None)
    val_ds = None
    if cfg.val_data and rank == 0:
        val_ds = TrainingSamples(cfg.val_data, mcfg.bins, preset.depth_range, split=cfg.val_split, obj_ids=obj_ids,
                                 augment=False, n_vertices=cfg.n_vertices, label_cache=0, size=mcfg.crop_size)
    val = {}
    stop = min(total, cfg.max_steps) if cfg.max_steps is not None else total

    bar = tqdm(total=stop, initial=step, desc="train", unit="step", disable=(rank != 0 or not cfg.progress))
    t0, n0 = time.time(), step
    saved_step = step
    try:
        with sigterm_as_interrupt():
            while step < stop:
                epoch, offset = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
                sampler.set_start(offset)
                loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                                    collate_fn=collate_samples, pin_memory=device.type == "cuda", drop_last=True,
                                    persistent_workers=False)
                for batch in loader:
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                        outs = step_mod(batch["crops"], batch["obj_index"], batch["fov"], batch["K_roi"])
                    losses = mrcnet_losses(outs, batch, mcfg.bins, preset.depth_range, weights, mcfg.crop_size)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(losses["total"]).backward()
                    scaler.step(opt)
                    scaler.update()
                    lr = opt.param_groups[0]["lr"]
                    sched.step()
                    step += 1
                    vals = {k: float(v.detach()) for k, v in losses.items()}
                    if distributed:  # log the mean over processes
                        t = torch.tensor(list(vals.values()), device=device)
                        dist.all_reduce(t)
                        vals = dict(zip(vals, (t / world).tolist()))
                    # wall_s: seconds since this process started its training loop (restarts at a resume)
                    history.append({"step": step, "lr": lr, "wall_s": round(time.time() - t0, 3), **vals})
                    if rank == 0:
                        for k, v in vals.items():
                            writer.add_scalar(f"loss/{k}", v, step)
                        writer.add_scalar("lr", lr, step)
                        bar.update(1)
                        bar.set_postfix(loss=f"{vals['total']:.3g}", epoch=epoch)
                    end_of_epoch = step % steps_per_epoch == 0
                    if rank == 0 and (step % cfg.ckpt_every == 0 or end_of_epoch or step == stop):
                        save(ckpt_path)
                        saved_step = step
                    if end_of_epoch and val_ds is not None:
                        model.eval()
                        val = validate(model, renderer, val_ds, cfg.val_max, device=device, ar_dir=out / "val_bop")
                        runs = [("val", "", val)]
                        if cfg.val_box_jitter > 0:
                            val_j = validate(model, renderer, val_ds, cfg.val_max, device=device, ar_dir=out / "val_bop_jitter",
                                             box_jitter=cfg.val_box_jitter)
                            runs.append(("val_jitter", "_jitter", val_j))
                        model.train()
                        for tag, suffix, res in runs:
                            _atomic_json(res, out / f"val_epoch_{step // steps_per_epoch:03d}{suffix}.json")
                            for name, v in res.items():
                                for k in ("rot_err_deg", "trans_err_mm", "share_5deg_5cm", *AR_KEYS):
                                    if v.get(k) is not None:
                                        writer.add_scalar(f"{tag}/{name}/{k}", v[k], step)
                            log.info("epoch %d validation (%s boxes): %s", step // steps_per_epoch,
                                     "jittered" if suffix else "ground-truth", json.dumps(res["all"]))
                    if distributed and end_of_epoch:
                        dist.barrier()
                    if step >= stop:
                        break
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: keep the steps done since the last checkpoint
        bar.close()
        if rank == 0 and step > saved_step:
            save(ckpt_path)
            _atomic_json(history, out / "history.json")
        raise TrainingInterrupted(step, ckpt_path, "SIGTERM" if isinstance(e, Terminated) else "SIGINT") from None
    bar.close()
    rate = (step - n0) / max(time.time() - t0, 1e-9)
    if rank == 0:
        writer.add_scalar("steps_per_second", rate, step)
        writer.close()
        _atomic_json(history, out / "history.json")
        plot_history(history, out / "loss_curves.png")
        if step >= total:
            save_checkpoint(out / "model.pth", model, dataset=cfg.dataset, obj_ids=obj_ids, depth_range=preset.depth_range,
                            fov_variant="training")
    if distributed:
        dist.barrier()
    return {"step": step, "epoch": step / steps_per_epoch, "history": history, "val": val, "out": str(out),
            "steps_per_second": rate, "split_counts": ds.counts}
