"""Tiny BOP split + small-preset random-weight model (checkpoint and ONNX export), made once per
pytest run (cached under the session's base temp folder) for test_infer.py and test_benchmarks.py.

Split: 3 procedural objects, 2 images of 160x120 with 2 objects each (one scene), GT detections.
Model: ``small`` preset, seed 0, objects 1..3 of the ``synth`` preset, fov variant "inference".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OBJ_IDS = [1, 2, 3]
DEPTH_RANGE = (0.05, 1.7)


@dataclass
class TinyAssets:
    data: Path        # BOP dataset folder (models/, test/000000/, test_targets_bop19.json)
    detections: Path  # BOP'22 detections of the split (GT-derived, from mrcnet-synth)
    checkpoint: Path  # project checkpoint (.pth)
    export: Path      # export directory (manifest, ONNX graphs, models/)


def tiny_assets(tmp_path_factory) -> TinyAssets:
    root = tmp_path_factory.getbasetemp() / "tiny_infer_assets"
    a = TinyAssets(root / "data", root / "data" / "detections_gt_test.json", root / "small.pth", root / "export")
    if (a.export / "manifest.json").is_file():
        return a
    import shutil

    import torch

    from mrcnet.checkpoint import save_checkpoint
    from mrcnet.data import objects, scenes
    from mrcnet.export.manifest import build_manifest, write_manifest
    from mrcnet.export.onnx_export import export_onnx
    from mrcnet.model import build_model
    from mrcnet.runtime.render import Renderer

    objects.write_objects(a.data, len(OBJ_IDS), seed=0)
    cfg = scenes.SceneConfig(width=160, height=120, objects_per_image=(2, 2), distractors_per_image=(0, 0),
                             images_per_scene=2, depth_range=(250.0, 350.0))
    scenes.generate_scenes(a.data, a.data, 2, cfg, seed=0, renderer=Renderer(), progress=False)

    torch.manual_seed(0)
    model = build_model(len(OBJ_IDS), DEPTH_RANGE, "small").eval()
    save_checkpoint(a.checkpoint, model, dataset="synth", obj_ids=OBJ_IDS, fov_variant="official")
    man = build_manifest(dataset="synth", preset="small", obj_ids=OBJ_IDS, depth_range=DEPTH_RANGE,
                         bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4,
                         project_version="test", checkpoint_sha256=None)
    export_onnx(model, a.export, man)
    shutil.copytree(a.data / "models", a.export / "models")
    write_manifest(a.export, man)
    return a
