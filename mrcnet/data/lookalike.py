"""Synthetic look-alikes of the official BOP datasets: the project's procedural objects and scenes
(:mod:`mrcnet.data.objects`, :mod:`mrcnet.data.scenes`) laid out exactly like T-LESS, LM-O, YCB-V
and ITODD on disk, plus a BOP'22 default-detections file where the official inference reads it.
For running the reproduction commands (docs/REPRODUCE.md) end to end without the real data.

Layout written under ``out`` (``out`` plays ``$BOP_PATH``)::

    <dataset>/models*/               every object of the dataset (LM-O: the 15 LINEMOD objects), as
                                     the official archive names the folders: T-LESS ``models_cad``
                                     and ``models_eval`` (no ``models``), the others ``models`` and
                                     ``models_eval``
    <dataset>/<test split>/<scene>/  T-LESS ``test_primesense``, the others ``test``; images of the
                                     preset's size with the dataset's objects only (LM-O: its 8);
                                     ITODD: grey ``gray/*.tif`` and no ground truth (no
                                     ``scene_gt*.json``, no masks), plus a ``val`` split with it
    <dataset>/test_targets_bop19.json
    bop22_default_detections_and_segmentations/cosypose_maskrcnn_pbr/
        challenge2022-524061_<dataset>-test.json     BOP'22 detections (the ground-truth boxes)

Objects are procedural parts whatever the dataset (their sizes are not the real objects'); the
point is the layout, not the look.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mrcnet.runtime.presets import get_dataset
from mrcnet.runtime.render import Renderer

from . import bop, objects, scenes

#: number of objects in each official dataset's models folder (LM-O ships LINEMOD's 15)
MODEL_COUNTS = {"tless": 30, "lmo": 15, "ycbv": 21, "itodd": 28}
#: the test split folder of each dataset
TEST_SPLITS = {"tless": "test_primesense", "lmo": "test", "ycbv": "test", "itodd": "test"}
#: the models folders of each official dataset archive that the look-alike writes
MODEL_FOLDERS = {"tless": ("models_cad", "models_eval"), "lmo": ("models", "models_eval"),
                 "ycbv": ("models", "models_eval"), "itodd": ("models", "models_eval")}
#: the BOP'22 default detections (CosyPose Mask R-CNN, PBR-trained) as the official inference finds them
DETECTIONS_DIR = "bop22_default_detections_and_segmentations/cosypose_maskrcnn_pbr"
DETECTIONS_NAME = "challenge2022-524061_{dataset}-test.json"
#: datasets whose test split has no ground truth (evaluated by the BOP server); a ``val`` split has it
GT_LESS_TEST = ("itodd",)

def detections_path(out, dataset: str) -> Path:
    """Where the look-alike (and the official inference) keeps the BOP'22 detections of ``dataset``."""
    return Path(out) / DETECTIONS_DIR / DETECTIONS_NAME.format(dataset=dataset)

def write_lookalike(dataset: str, out, n_images: int = 2, seed: int = 0, objects_per_image=(1, 2),
                    renderer=None, progress: bool = False) -> dict:
    """Write the look-alike of ``dataset`` (tless, lmo, ycbv, itodd) under ``out``.

    n_images: images of the test split (one scene); objects_per_image: (min, max) objects.
    Returns ``{"root": dataset folder, "split": test split folder name, "detections": path,
    "targets": path, "val": val split folder or None}``. An existing ``out/<dataset>`` is refused
    (ValueError, one line)."""
    name = str(dataset).lower()
    if name not in MODEL_COUNTS:
        raise ValueError(f"no look-alike for dataset {dataset!r}; known: {', '.join(sorted(MODEL_COUNTS))}")
    preset = get_dataset(name)
    out = Path(out)
    root = out / name
    if root.exists():
        raise ValueError(f"{root}: already exists; remove it or pick another folder")
    if renderer is None:
        renderer = Renderer()
    with tempfile.TemporaryDirectory(dir=out if out.is_dir() else None) as tmp:
        tmp = Path(tmp)
        objects.write_objects(tmp, MODEL_COUNTS[name], seed=seed, progress=False, eval_copy=False)
        root.mkdir(parents=True)
        for folder in MODEL_FOLDERS[name]:
            shutil.copytree(tmp / "models", root / folder)
        cfg = scenes.SceneConfig(width=preset.width, height=preset.height, objects_per_image=tuple(objects_per_image),
                                 distractors_per_image=(0, 0), images_per_scene=max(1, n_images), split="test",
                                 depth_range=(500.0, 900.0), obj_ids=list(preset.obj_ids))
        made = scenes.generate_scenes(tmp / "models", tmp, n_images, cfg, seed=seed, renderer=renderer,
                                      progress=progress)
        test_dir = root / TEST_SPLITS[name]
        shutil.move(str(tmp / "test"), test_dir)
        shutil.rmtree(test_dir / ".progress", ignore_errors=True)
        shutil.move(made["targets"], root / bop.TARGETS_FILENAME)
        det = detections_path(out, name)
        det.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(made["detections"], det)
        val = None
        if preset.grey:
            if name in GT_LESS_TEST:
                val = root / "val"
                shutil.copytree(test_dir, val)
                _to_grey(val)
                _drop_ground_truth(test_dir)
            _to_grey(test_dir)
    return {"root": root, "split": TEST_SPLITS[name], "detections": det, "targets": root / bop.TARGETS_FILENAME,
            "val": val}

def _to_grey(split_dir: Path) -> None:
    """``rgb/*.png`` -> ``gray/*.tif`` (8-bit single channel) in every scene of a split."""
    for scene in bop.scene_dirs(split_dir):
        rgb = scene / "rgb"
        (scene / "gray").mkdir(exist_ok=True)
        for p in sorted(rgb.iterdir()):
            im = bop.load_image(p, "bgr")
            grey = im if im.ndim == 2 else (0.114 * im[..., 0] + 0.587 * im[..., 1] + 0.299 * im[..., 2])
            bop.save_image(scene / "gray" / f"{p.stem}.tif", grey.round().clip(0, 255).astype("uint8"))
        shutil.rmtree(rgb)

def _drop_ground_truth(split_dir: Path) -> None:
    """What a test split without public ground truth lacks: ``scene_gt*.json`` and the masks."""
    for scene in bop.scene_dirs(split_dir):
        for f in ("scene_gt.json", "scene_gt_info.json"):
            (scene / f).unlink(missing_ok=True)
        for d in ("mask", "mask_visib"):
            shutil.rmtree(scene / d, ignore_errors=True)
