"""Dataset presets: the one place for image size, depth range and object ids of each dataset.

Depth ranges are in *normalised* depth units ``d = t_z / fx_roi`` (docs/MODEL.md §3), the unit of the
depth bins, with ``fx_roi`` that of a 256-px crop whatever the model's crop size
(:data:`mrcnet.runtime.geometry.REF_CROP`). Image size is ``(width, height)`` in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetPreset:
    """Facts of one BOP dataset that the model and runtime depend on."""

    name: str
    width: int
    height: int
    depth_near: float
    depth_far: float
    obj_ids: tuple[int, ...]
    grey: bool = False

    @property
    def n_objects(self) -> int:
        return len(self.obj_ids)

    @property
    def depth_range(self) -> tuple[float, float]:
        return (self.depth_near, self.depth_far)


DATASETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in (
        DatasetPreset("tless", 720, 540, 0.050, 1.700, tuple(range(1, 31))),
        DatasetPreset("lmo", 640, 480, 0.010, 2.150, (1, 5, 6, 8, 9, 10, 11, 12)),
        DatasetPreset("ycbv", 640, 480, 0.030, 2.000, tuple(range(1, 22))),
        DatasetPreset("itodd", 1280, 960, 0.010, 1.850, tuple(range(1, 29)), grey=True),
        # The project's own procedural objects and synthetic scenes (mrcnet-synth); the demo model.
        DatasetPreset("synth", 640, 480, 0.050, 1.700, (1, 2, 3)),
    )
}


def get_dataset(name: str) -> DatasetPreset:
    """The preset called ``name`` (case-insensitive); a clear error listing the known ones."""
    key = str(name).lower()
    if key not in DATASETS:
        raise KeyError(f"unknown dataset preset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]
