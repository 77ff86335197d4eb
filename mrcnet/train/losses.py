"""MRC-Net training losses (docs/MODEL.md §5), as the official release computes them.

With B samples, the network outputs of :meth:`mrcnet.model.MRCNet.stage1` / ``stage2`` and a batch of
:func:`mrcnet.train.dataset.collate_samples`:

1. The ground truth is first replaced by its symmetry member closest to the *final* predicted
   rotation (:func:`mrcnet.train.targets.match_symmetry`, no gradient): ``R_gt``, ``t_gt``.
2. ``rot_clf`` (x0.5): sigmoid focal loss (gamma 2) of the rotation logits against the soft
   rotation labels, positive / negative weights 10 / 0.1, summed over bins, mean over samples.
3. ``rot_reg`` (x1.0): mean over vertices of smooth-L1 (beta 1 mm, on the 3D distance) of
   ``|R v - R_gt v|`` with ``R = R6D(pose_res) R_init`` the final rotation; mean over samples.
4. ``cell_clf`` (x2.0), ``depth_clf`` (x2.0): softmax focal loss (gamma 2) against the soft cell /
   depth labels of ``t_gt`` (:func:`targets.cell_labels`, :func:`targets.depth_labels`).
5. ``xy_reg`` (x1.0): smooth-L1 (beta 1 mm) of the 3D distance between ``t_gt`` and the translation
   made of stage 1's argmax cell + the predicted xy residual with the *ground-truth* depth.
6. ``depth_reg`` (x0.2): the same with the ground-truth (dx, dy) and stage 1's argmax depth bin +
   the predicted depth residual.
7. ``mask`` (x10): binary cross-entropy (mean over pixels) of the visible-mask logit (crop/4 side: 64x64 for 256 crops).

Residuals are thus supervised relative to stage 1's own argmax bins. Distances are in mm (the
official units). All losses are per-sample means, so the gradient of a batch split across
data-parallel processes averages to the gradient of the whole batch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnet.geometry import persp_to_translation, translation_to_persp
from mrcnet.runtime.geometry import BinSpec

from . import targets as T


@dataclass(frozen=True)
class LossWeights:
    """docs/MODEL.md §5 weights of the loss terms."""

    rot_clf: float = 0.5
    rot_reg: float = 1.0
    cell_clf: float = 2.0
    depth_clf: float = 2.0
    xy_reg: float = 1.0
    depth_reg: float = 0.2
    mask: float = 10.0


ROT_POS_WEIGHT, ROT_NEG_WEIGHT = 10.0, 0.1
FOCAL_GAMMA = 2.0
SMOOTH_L1_BETA = 1.0  # mm


def sigmoid_focal_loss(labels: Tensor, logits: Tensor, pos_weight: float = ROT_POS_WEIGHT,
                       neg_weight: float = ROT_NEG_WEIGHT, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Per-sample focal loss with soft labels: (B, M) labels in [0, 1], (B, M) logits -> (B,).

    ``sum_m (1-p)^g w+ y (-log p) + p^g w- (1-y) (-log(1-p))``, p = sigmoid(logit)."""
    p = torch.sigmoid(logits)
    pos = pos_weight * labels * -F.logsigmoid(logits)
    neg = neg_weight * (1.0 - labels) * -F.logsigmoid(-logits)
    return ((1.0 - p) ** gamma * pos + p**gamma * neg).sum(-1)


def softmax_focal_loss(labels: Tensor, logits: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Per-sample multi-class focal loss with a soft label distribution: (B, M), (B, M) -> (B,).

    ``-(1 - sum_m y p)^g sum_m y log p``, p = softmax(logits)."""
    logp = F.log_softmax(logits, dim=-1)
    p_true = (labels * logp.exp()).sum(-1)
    return -((1.0 - p_true) ** gamma) * (labels * logp).sum(-1)


def smooth_l1_norm(diff: Tensor, beta: float = SMOOTH_L1_BETA) -> Tensor:
    """Smooth-L1 of the Euclidean norm of (..., 3) differences: ``n < beta: 0.5 n^2/beta + 0.5 beta``
    (the official variant, continuous at beta), else ``n``. -> (...)."""
    n = diff.norm(dim=-1)
    return torch.where(n < beta, 0.5 * n * n / beta + 0.5 * beta, n)


def vertex_rotation_error(R: Tensor, R_gt: Tensor, vertices: Tensor, vmask: Tensor | None = None) -> Tensor:
    """Mean over valid vertices of smooth-L1 ``|(R - R_gt) v|`` (mm): R, R_gt (B, 3, 3), vertices
    (B, V, 3), vmask (B, V) -> (B,)."""
    err = smooth_l1_norm(vertices @ (R - R_gt).transpose(-1, -2))
    if vmask is None:
        return err.mean(-1)
    m = vmask.to(err.dtype)
    return (err * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def mrcnet_losses(out: dict, batch: dict, bins: BinSpec, depth_range: tuple[float, float],
                  weights: LossWeights = LossWeights(), size: int = 256) -> dict[str, Tensor]:
    """Weighted loss terms ``{name: scalar}`` (names of :class:`LossWeights`) and ``total``.

    out: stage-1 + stage-2 outputs (``pose_logits``, ``depth_logits``, ``trans_logits``,
    ``mask_logit``, ``pose_id``, ``depth_id``, ``cell_id``, ``R`` (final), ``trans_res``, ``depth_res``);
    batch: collated samples (``R``, ``t``, ``K_roi``, ``rot_labels``, ``mask``, ``vertices``,
    ``vertices_mask``, ``sym_R``, ``sym_t``, ``sym_mask``). Computed in float32.
    """
    f32 = torch.float32
    K_roi = batch["K_roi"].to(f32)
    verts, vmask = batch["vertices"].to(f32), batch.get("vertices_mask")
    R_pred = out["R"].to(f32)
    with torch.no_grad():
        corr = T.second_moment(verts, vmask)
        R_gt, t_gt = T.match_symmetry(batch["R"].to(f32), batch["t"].to(f32), R_pred.detach(), batch["sym_R"].to(f32),
                                      batch["sym_t"].to(f32), corr, batch.get("sym_mask"))
        dxy_gt, d_gt = translation_to_persp(t_gt, K_roi, size)
        cell_lab = T.cell_labels(dxy_gt, bins)
        depth_lab = T.depth_labels(d_gt, bins, depth_range)
        cells = T.cell_table(bins, K_roi.device)
        dcent = T.depth_bin_table(bins, depth_range, K_roi.device)
        n = bins.n_cells
        cid = out["cell_id"]
        dxy_init = torch.stack([cells[cid % n], cells[torch.div(cid, n, rounding_mode="floor")]], -1)
        d_init = dcent[out["depth_id"]]

    terms = {
        "rot_clf": sigmoid_focal_loss(batch["rot_labels"].to(f32), out["pose_logits"].to(f32)).mean(),
        "rot_reg": vertex_rotation_error(R_pred, R_gt, verts, vmask).mean(),
        "cell_clf": softmax_focal_loss(cell_lab, out["trans_logits"].to(f32)).mean(),
        "depth_clf": softmax_focal_loss(depth_lab, out["depth_logits"].to(f32)).mean(),
    }
    t_xy = persp_to_translation(dxy_init + out["trans_res"].to(f32), d_gt, K_roi, size)
    terms["xy_reg"] = smooth_l1_norm(t_xy - t_gt).mean()
    t_z = persp_to_translation(dxy_gt, d_init + out["depth_res"].to(f32)[:, 0], K_roi, size)
    terms["depth_reg"] = smooth_l1_norm(t_z - t_gt).mean()
    terms["mask"] = F.binary_cross_entropy_with_logits(out["mask_logit"].to(f32)[:, 0], batch["mask"].to(f32))
    w = asdict(weights)
    res = {k: v * w[k] for k, v in terms.items()}
    res["total"] = sum(res.values())
    return res
