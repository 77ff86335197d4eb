"""Dataset presets: the one place for image size, depth range and object ids of each dataset.

Models folders (``model_folders``): the BOP models folder each split renders with (the CAD models
the network's stage 2 sees: T-LESS ``models_cad``, the others ``models``), as the official training
and inference read them; BOP's metrics use ``models_eval`` (:data:`EVAL_MODELS`) where a dataset has
it. ``official_decoders``: how many per-object decoders the official trainer builds when it differs
from the number of objects (LM-O: 15, the objects of LINEMOD; its inference keeps decoders 0-7, the
eight LM-O objects in ``obj_ids`` order).

Depth ranges are in *normalised* depth units ``d = t_z / fx_roi`` (docs/MODEL.md §3), the unit of the
depth bins, with ``fx_roi`` that of a 256-px crop whatever the model's crop size
(:data:`mrcnet.runtime.geometry.REF_CROP`). Image size is ``(width, height)`` in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the models folder of BOP's pose-error metrics (bop_toolkit's ``model_type='eval'``)
EVAL_MODELS = "models_eval"
#: the models folder of a split the preset does not name
DEFAULT_MODELS = "models"


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
    #: split folder -> models folder it renders with; other splits: the most common value here
    model_folders: tuple[tuple[str, str], ...] = ()
    #: number of decoders of the official trainer's model, when it differs from ``n_objects``
    official_decoders: int | None = None

    def models_for(self, split_folder: str | None = None) -> str:
        """The models folder (name, relative to the dataset folder) that ``split_folder``
        (``test_primesense``, ``train_pbr``...) renders with."""
        folders = dict(self.model_folders)
        if split_folder in folders:
            return folders[split_folder]
        values = [v for _, v in self.model_folders]
        return max(values, key=values.count) if values else DEFAULT_MODELS

    @property
    def n_objects(self) -> int:
        return len(self.obj_ids)

    @property
    def depth_range(self) -> tuple[float, float]:
        return (self.depth_near, self.depth_far)


DATASETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in (
        DatasetPreset("tless", 720, 540, 0.050, 1.700, tuple(range(1, 31)), model_folders=(
            ("train_pbr", "models_cad"), ("train_primesense", "models_cad"), ("test_primesense", "models_cad"))),
        DatasetPreset("lmo", 640, 480, 0.010, 2.150, (1, 5, 6, 8, 9, 10, 11, 12), official_decoders=15,
                      model_folders=(("train_pbr", "models"), ("train", "models"), ("test", "models"))),
        DatasetPreset("ycbv", 640, 480, 0.030, 2.000, tuple(range(1, 22)), model_folders=(
            ("train_pbr", "models"), ("train_real", "models"), ("train_synt", "models"), ("test", "models"))),
        DatasetPreset("itodd", 1280, 960, 0.010, 1.850, tuple(range(1, 29)), grey=True, model_folders=(
            ("train_pbr", "models"), ("val", "models"), ("test", "models"))),
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
