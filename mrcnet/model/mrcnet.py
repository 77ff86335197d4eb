"""MRC-Net: multi-scale residual correlation network, two stages callable separately.

Module names follow the official state dict (``backbone.*``, ``decoder.*``, ``classifier.*``,
``regressor.*``), so an official checkpoint loads by name (see :mod:`mrcnet.checkpoint`).

Shapes for the ``paper`` preset and N crops (N = 4 x detections at inference):
- Stage 1 ``stage1(crops (N,4,256,256), obj_index (N,) int64, fov (N,3), K_roi (N,3,3))``:
  backbone -> embedding (N,64,64,64) + mask logit (N,1,64,64); features at 1/4 (65 ch),
  1/8 and 1/16 (128 ch); classifier ASPP -> three heads: rotation (N,4608), depth (N,1000) and
  cell (N,4096) logits; argmax decoding -> ``R_init``, ``t_init`` (mm, with ``K_roi``).
- Stage 2 ``stage2(render (N,4,256,256), obj_index, fov, K_roi, feat_x4, feat_x8, feat_x16, R_init,
  t_init, persp_init)``: the same backbone on the rendering, correlations at 1/4, 1/8, 1/16 against
  the real features, regression trunk + ASPP -> residuals -> final ``R``, ``t`` per crop
  (in the rotated crop frame: TTA selection and un-rotation are the caller's,
  :func:`mrcnet.geometry.tta_select`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mrcnet.geometry import BinTables, decode_bins, decode_final
from mrcnet.runtime.geometry import TTA_GROUP

from .config import ModelConfig, get_config
from .correlation import ResidualCorrelation
from .layers import ASPP, CondConv2d, ConvGNAct, GroupBatchNorm2d
from .resnet import ResNet

#: stage-1 outputs that stage 2 takes (besides ``obj_index``, ``fov``, ``K_roi``)
STAGE2_FEATURES = ("feat_x4", "feat_x8", "feat_x16", "R_init", "t_init", "persp_init")


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class PoseDecoder(nn.Module):
    """Per-object decoder (``backbone.decoder``): CondConvs indexed by the object class.

    x4 (N, pool, H/16) pooled map, x3 (N, c3, H/8), x2 (N, c2, H/4), obj_index (N,) ->
    (N, embed + 1, H/4): embedding channels then the visible-mask logit.
    """

    def __init__(self, n_obj: int, cfg: ModelConfig):
        super().__init__()
        s4, s3, s2 = cfg.skip_channels
        u3, u2 = cfg.up_channels
        c2, c3 = cfg.stage_channels[1], cfg.stage_channels[2]
        self.layer4_1x1 = CondConv2d(n_obj, cfg.pool_channels, s4, 1)
        self.layer3_1x1 = CondConv2d(n_obj, c3, s3, 1)
        self.layer2_1x1 = CondConv2d(n_obj, c2, s2, 1)
        self.conv_up3 = CondConv2d(n_obj, s4 + s3, u3, 3)
        self.conv_up2 = CondConv2d(n_obj, u3 + s2, u2, 3)
        self.conv_last = CondConv2d(n_obj, u2, cfg.feat_channels, 1)
        self.act = nn.SiLU()

    def forward(self, x4: Tensor, x3: Tensor, x2: Tensor, obj_index: Tensor) -> Tensor:
        act = self.act
        y = act(self.layer4_1x1(x4, obj_index))
        y = torch.cat([_up2(y), act(self.layer3_1x1(x3, obj_index))], dim=1)
        y = act(self.conv_up3(y, obj_index))
        y = torch.cat([_up2(y), act(self.layer2_1x1(x2, obj_index))], dim=1)
        y = act(self.conv_up2(y, obj_index))
        return self.conv_last(y, obj_index)


class Backbone(ResNet):
    """Siamese backbone: ResNet (``layer0..4``) + ASPP ``pool`` on 1/16 + per-object ``decoder``.

    x (N, 4, H, W), obj_index (N,) -> (N, embed + 1, H/4, W/4) (embedding ++ mask logit).
    """

    def __init__(self, n_obj: int, cfg: ModelConfig):
        super().__init__(cfg.in_channels, cfg.stem_channels, cfg.stage_channels, cfg.stage_blocks)
        c4 = cfg.stage_channels[3]
        self.pool = nn.Sequential(
            ASPP(c4, cfg.aspp_dilations, cfg.gn_groups),
            nn.Conv2d(c4 * cfg.aspp_factor, cfg.pool_channels, 1),
            nn.GroupNorm(cfg.gn_groups, cfg.pool_channels),
            nn.SiLU(),
        )
        self.decoder = PoseDecoder(n_obj, cfg)

    def forward(self, x: Tensor, obj_index: Tensor) -> Tensor:  # type: ignore[override]
        _, _, x2, x3, x4 = super().forward(x)
        return self.decoder(self.pool(x4), x3, x2, obj_index)


class FeatureDecoder(nn.Module):
    """Everything between the backbone and the heads (``decoder.*``): the stage-1 down-convs and
    classifier ASPP, the correlations and the regression trunk with its ASPP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        g, f, dc = cfg.gn_groups, cfg.feat_channels, cfg.down_channels
        p2 = cfg.corr_patch**2
        r8, r16, radd = cfg.reg_channels
        k4, k8, k16 = cfg.corr_channels
        self.conv_down_x8 = ConvGNAct(f, dc, 3, 2, groups=g)
        self.conv_down_x16 = ConvGNAct(dc, dc, 3, 2, groups=g)
        self.clf_pool = ASPP(dc, cfg.aspp_dilations, g)
        self.corr_x4 = ResidualCorrelation(f, k4, cfg.corr_patch)
        self.reg_conv_x8 = ConvGNAct(f + p2, r8, 3, 2, groups=g)
        self.corr_x8 = ResidualCorrelation(dc, k8, cfg.corr_patch)
        self.reg_conv_x16 = ConvGNAct(dc + p2 + r8, r16, 3, 2, groups=g)
        self.corr_x16 = ResidualCorrelation(dc, k16, cfg.corr_patch)
        self.reg_conv_add = ConvGNAct(dc + p2 + r16, radd, 3, 1, groups=g)
        self.reg_pool = ASPP(radd, cfg.aspp_dilations, g)

    def features(self, emb_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, embed + 1, H/4) backbone output -> features at 1/4 (embedding ++ sigmoid(mask)),
        1/8, 1/16."""
        e = emb_mask[:, :-1]
        m = emb_mask[:, -1:]
        f4 = torch.cat([e, torch.sigmoid(m.detach())], dim=1)  # official: no gradient through the mask here
        f8 = self.conv_down_x8(f4)
        f16 = self.conv_down_x16(f8)
        return f4, f8, f16

    def regress(self, real: Sequence[Tensor], synt: Sequence[Tensor]) -> dict[str, Tensor]:
        """Real and rendered features at 1/4, 1/8, 1/16 -> ``reg_x8`` (N, r8, H/8) and the
        regression map ``reg_map`` (N, (2 + n_dil) radd, H/16)."""
        c4 = self.corr_x4(synt[0], real[0])
        y8 = self.reg_conv_x8(torch.cat([real[0], c4], dim=1))
        c8 = self.corr_x8(synt[1], real[1])
        y16 = self.reg_conv_x16(torch.cat([real[1], c8, y8], dim=1))
        c16 = self.corr_x16(synt[2], real[2])
        y = self.reg_conv_add(torch.cat([real[2], c16, y16], dim=1))
        return {"reg_x8": y8, "reg_map": self.reg_pool(y)}


class Head(nn.Module):
    """``conv_in`` (3x3/2 + GN + SiLU) -> flatten ++ fov (3) -> ``linear1`` -> SiLU -> ``linear2``.

    x (N, C, 16, 16), fov (N, 3) -> (N, n_out).
    """

    def __init__(self, cin: int, cmid: int, n_out: int, map_size: int, hidden: int, groups: int):
        super().__init__()
        self.conv_in = ConvGNAct(cin, cmid, 3, 2, groups=groups)
        self.linear1 = nn.Linear(cmid * map_size * map_size + 3, hidden)
        self.linear2 = nn.Linear(hidden, n_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, fov: Tensor) -> Tensor:
        y = self.conv_in(x).flatten(1)
        y = torch.cat([y, fov], dim=1)
        return self.linear2(self.act(self.linear1(y)))


class Classifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cin = cfg.down_channels * cfg.aspp_factor
        mid, hm, hid, g = cin // 8, cfg.head_map, cfg.head_hidden, cfg.gn_groups
        self.pose_clf = Head(cin, mid, cfg.bins.n_rot, hm, hid, g)
        self.depth_clf = Head(cin, mid, cfg.bins.n_depth, hm, hid, g)
        self.trans_clf = Head(cin, mid, cfg.bins.n_cell_bins, hm, hid, g)


class Regressor(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cin = cfg.reg_channels[2] * cfg.aspp_factor
        mid, hm, hid, g = cin // 8, cfg.head_map, cfg.head_hidden, cfg.gn_groups
        self.pose_reg = Head(cin, mid, 6, hm, hid, g)
        self.depth_reg = Head(cin, mid, 1, hm, hid, g)
        self.trans_reg = Head(cin, mid, 2, hm, hid, g)


class MRCNet(nn.Module):
    """The full network. ``n_obj`` object decoders; ``depth_range`` (near, far) in normalised depth
    (``t_z / fx_roi``) of the dataset; ``bn_group`` the BatchNorm statistics group (see
    :meth:`set_bn_group`)."""

    def __init__(self, n_obj: int, depth_range: tuple[float, float], cfg: "ModelConfig | str" = "paper",
                 bn_group: int = TTA_GROUP):
        super().__init__()
        cfg = get_config(cfg)
        self.cfg = cfg
        self.n_obj = int(n_obj)
        self.backbone = Backbone(n_obj, cfg)
        self.decoder = FeatureDecoder(cfg)
        self.classifier = Classifier(cfg)
        self.regressor = Regressor(cfg)
        self.tables = BinTables(cfg.bins, depth_range)
        self.meta: dict = {}  # dataset, obj_ids, ... (set by mrcnet.checkpoint.load_checkpoint)
        self.set_bn_group(bn_group)
        self.reset_regressor_heads()

    @torch.no_grad()
    def reset_regressor_heads(self) -> None:
        """Start stage 2 at stage 1's answer: the residual heads' last layers near zero (xavier with
        gain 1/n_depth and 1/n_cells for depth and xy, as the official training code) and the 6D
        rotation residual at the identity (bias (1,0,0, 0,1,0)). Official checkpoints overwrite it."""
        b = self.cfg.bins
        for head, gain in ((self.regressor.depth_reg, 1.0 / b.n_depth), (self.regressor.trans_reg, 1.0 / b.n_cells),
                           (self.regressor.pose_reg, 0.01)):
            if head.linear2.weight.is_meta:
                return
            nn.init.xavier_uniform_(head.linear2.weight, gain=gain)
            nn.init.zeros_(head.linear2.bias)
        self.regressor.pose_reg.linear2.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    @property
    def bn_group(self) -> int:
        return self._bn_group

    def set_bn_group(self, group_size: int) -> "MRCNet":
        """BatchNorm statistics per group of ``group_size`` consecutive crops: 4 (one detection's
        TTA group, official inference), 1 (TTA off), 0 (whole batch, training)."""
        self._bn_group = int(group_size)
        for m in self.modules():
            if isinstance(m, GroupBatchNorm2d):
                m.group_size = self._bn_group
        return self

    # ------------------------------------------------------------------------------ stage 1
    def stage1(self, crops: Tensor, obj_index: Tensor, fov: Tensor, K_roi: Tensor) -> dict[str, Tensor]:
        """Classification stage.

        crops (N, 4, S, S) BGR in [0, 1] + box map; obj_index (N,) int64 (0-based class);
        fov (N, 3); K_roi (N, 3, 3) crop cameras (pixels).
        Returns: ``emb`` (N, E, S/4, S/4), ``mask_logit`` (N, 1, S/4, S/4);
        ``pose_logits`` (N, n_rot), ``depth_logits`` (N, n_depth), ``trans_logits`` (N, n_cells^2);
        ``pose_id``, ``depth_id``, ``cell_id`` (N,) int64; ``rot_score``, ``depth_score`` (N,)
        max logits (TTA scores); ``quat_init`` (N, 4) wxyz, ``R_init`` (N, 3, 3);
        ``persp_init`` (N, 3) = (dx, dy, d); ``t_init`` (N, 3) mm;
        ``feat_x4`` (N, E+1, S/4), ``feat_x8`` (N, D, S/8), ``feat_x16`` (N, D, S/16) for stage 2.
        """
        emb_mask = self.backbone(crops, obj_index)
        f4, f8, f16 = self.decoder.features(emb_mask)
        pooled = self.decoder.clf_pool(f16)
        cls = self.classifier
        out = {
            "emb": emb_mask[:, :-1],
            "mask_logit": emb_mask[:, -1:],
            "pose_logits": cls.pose_clf(pooled, fov),
            "depth_logits": cls.depth_clf(pooled, fov),
            "trans_logits": cls.trans_clf(pooled, fov),
        }
        out.update(
            decode_bins(self.tables, out["pose_logits"], out["depth_logits"], out["trans_logits"], K_roi,
                        self.cfg.crop_size)
        )
        out.update(feat_x4=f4, feat_x8=f8, feat_x16=f16)
        return out

    # ------------------------------------------------------------------------------ stage 2
    def stage2(self, render: Tensor, obj_index: Tensor, fov: Tensor, K_roi: Tensor, feat_x4: Tensor,
               feat_x8: Tensor, feat_x16: Tensor, R_init: Tensor, t_init: Tensor, persp_init: Tensor
               ) -> dict[str, Tensor]:
        """Regression stage on the rendering at the stage-1 pose.

        render (N, 4, S, S): rendered RGB (BGR order as the crops) + the render's box map;
        the other inputs are the stage-1 inputs/outputs of the same names.
        Returns: ``mask_logit_synt`` (N, 1, S/4, S/4); ``reg_x8`` (N, r8, S/8);
        ``reg_map`` (N, 8 r, S/16); ``pose_res`` (N, 6), ``depth_res`` (N, 1), ``trans_res`` (N, 2);
        ``R`` (N, 3, 3), ``persp`` (N, 3) = (dx, dy, d), ``t`` (N, 3) mm, per crop (rotated frame).
        """
        emb_mask = self.backbone(render, obj_index)
        synt = self.decoder.features(emb_mask)
        reg = self.decoder.regress((feat_x4, feat_x8, feat_x16), synt)
        fov_reg = torch.cat([t_init[:, 0:2] / t_init[:, 2:3], fov[:, 2:3]], dim=1)
        m = reg["reg_map"]
        r = self.regressor
        out = {
            "mask_logit_synt": emb_mask[:, -1:],
            "reg_x8": reg["reg_x8"],
            "reg_map": m,
            "pose_res": r.pose_reg(m, fov_reg),
            "depth_res": r.depth_reg(m, fov_reg),
            "trans_res": r.trans_reg(m, fov_reg),
        }
        out.update(decode_final(R_init, persp_init, out["pose_res"], out["depth_res"], out["trans_res"], K_roi,
                                self.cfg.crop_size))
        return out

    def forward(self, crops: Tensor, obj_index: Tensor, fov: Tensor, K_roi: Tensor, render: Tensor
                ) -> dict[str, Tensor]:
        """Both stages with a given rendering (training, tests): the union of both dicts."""
        s1 = self.stage1(crops, obj_index, fov, K_roi)
        s2 = self.stage2(render, obj_index, fov, K_roi, **{k: s1[k] for k in STAGE2_FEATURES})
        return {**s1, **s2}


def build_model(n_obj: int, depth_range: tuple[float, float], preset: "str | ModelConfig" = "paper",
                bn_group: int = TTA_GROUP) -> MRCNet:
    """``MRCNet(n_obj, depth_range, preset, bn_group)``."""
    return MRCNet(n_obj, depth_range, preset, bn_group)
