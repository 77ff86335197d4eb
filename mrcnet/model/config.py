"""Model presets, as data.

``paper``
    The official MRC-Net architecture (CVPR 2024 release), the one official checkpoints load into:
    ResNet-34 backbone (blocks 3-4-6-3, widths 64-128-256-512, 4-channel 7x7/2 stem, no max-pool;
    feature maps at 1/2, 1/2, 1/4, 1/8, 1/16 of the 256x256 crop), ASPP (dilations 2,3,4,6,8,12)
    on the 1/16 map projected to 512, per-object decoder (512/256/128 skips, 512 and 256 up-convs)
    to 64 embedding channels + 1 mask logit at 64x64, stage-1 down-convs to 128 channels at 1/8 and
    1/16, classifier ASPP 8x128, regression trunk 128/256/256 with correlation projections
    64/128/128 (patch 11), regressor ASPP 8x256, heads 256 hidden. Bins: HEALPix n_side 4 x 24
    in-plane = 4608 rotations, 1000 depth bins, 64x64 cells (``PAPER_BINS``). 244.8 M parameters
    for 30 objects (T-LESS); about 33 GMAC per crop for stage 1 and 36 GMAC for stage 2.

``small``
    The same graph, about 25x cheaper, for CPU training and tests: ResNet "10" (one block per stage)
    with widths 16-32-64-128, decoder 128/64/32 skips and 128/64 up-convs, 32 embedding channels,
    64-channel stage-1 features, regression trunk 48/64/64, correlation projections 32/64/64 with
    patch 7, heads 64 hidden; bins n_side 2 (48 sphere points x 12 = 576 rotations),
    100 depth bins, 32x32 cells, GroupNorm(16), and 128x128 crops (4x4 head maps, a 32x32 mask):
    about 3x the training throughput of 256 crops on a CPU, for objects that cover up to about
    150 px in the image. 6.5 M parameters for 3 objects (13 MB as a float16 checkpoint: the
    shipped demo model). ``get_config("small", crop_size=256)`` is the 256-px variant.

Every width is a field, so other variants are a ``dataclasses.replace`` away. Depth ranges and
object counts come from the dataset preset (``mrcnet.runtime.presets``) or the checkpoint, not
from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from mrcnet.runtime.geometry import PAPER_BINS, BinSpec


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (no dataset facts). Channel counts are per feature map."""

    name: str
    in_channels: int = 4  # BGR crop + box map
    crop_size: int = 256  # input side, pixels
    stem_channels: int = 64
    stage_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    stage_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    aspp_dilations: tuple[int, ...] = (2, 3, 4, 6, 8, 12)
    gn_groups: int = 32
    pool_channels: int = 512  # backbone ASPP projection (1/16)
    skip_channels: tuple[int, int, int] = (512, 256, 128)  # CondConv 1x1 on 1/16, 1/8, 1/4
    up_channels: tuple[int, int] = (512, 256)  # CondConv 3x3 at 1/8, 1/4
    embed_channels: int = 64  # + 1 mask logit
    down_channels: int = 128  # stage-1 features at 1/8 and 1/16
    corr_channels: tuple[int, int, int] = (64, 128, 128)  # projections at 1/4, 1/8, 1/16
    corr_patch: int = 11  # displacements -(p//2)..p//2 in y and x
    reg_channels: tuple[int, int, int] = (128, 256, 256)  # reg_conv_x8, reg_conv_x16, reg_conv_add
    head_hidden: int = 256
    bins: BinSpec = field(default=PAPER_BINS)

    @property
    def feat_channels(self) -> int:
        """Channels of the 1/4 features: embedding + sigmoid(mask)."""
        return self.embed_channels + 1

    @property
    def aspp_factor(self) -> int:
        """ASPP output = input x (2 + number of dilated branches)."""
        return 2 + len(self.aspp_dilations)

    @property
    def head_map(self) -> int:
        """Side of the heads' flattened map: crop / 32 (8 for 256)."""
        return self.crop_size // 32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bins"] = asdict(self.bins)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if isinstance(d.get("bins"), dict):
            d["bins"] = BinSpec(**d["bins"])
        for k, v in list(d.items()):
            if isinstance(v, list):
                d[k] = tuple(v)
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig("paper"),
    "small": ModelConfig(
        "small",
        stem_channels=16,
        stage_channels=(16, 32, 64, 128),
        stage_blocks=(1, 1, 1, 1),
        pool_channels=128,
        skip_channels=(128, 64, 32),
        up_channels=(128, 64),
        embed_channels=32,
        down_channels=64,
        corr_channels=(32, 64, 64),
        corr_patch=7,
        reg_channels=(48, 64, 64),
        head_hidden=64,
        bins=BinSpec(2, 100, 32),
        gn_groups=16,
        crop_size=128,
    ),
}


def get_config(preset: "str | ModelConfig", **overrides) -> ModelConfig:
    """The preset called ``preset`` (or a config as is), with field ``overrides`` applied."""
    if isinstance(preset, ModelConfig):
        cfg = preset
    else:
        key = str(preset).lower()
        if key not in PRESETS:
            raise KeyError(f"unknown model preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        cfg = PRESETS[key]
    return replace(cfg, **overrides) if overrides else cfg
