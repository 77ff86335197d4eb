"""Data: BOP datasets (read and write), procedural CAD objects, synthetic BOP scenes, demo clips.

Torch-free modules (importable without torch):
    ``mrcnet.data.bop``      BOP reader/writer (models_info, scene JSONs, images, depth, masks,
                             test targets, BOP'22 detections, BOP'19 result CSVs) and ``BopDataset``.
    ``mrcnet.data.objects``  T-LESS-like procedural parts with declared symmetries.
    ``mrcnet.data.scenes``   Synthetic BOP splits rendered with ``mrcnet.runtime.render``.
    ``mrcnet.data.backgrounds``  Procedural / folder backgrounds for the synthetic images.
    ``mrcnet.data.video``    Demo clips (mp4 + per-frame GT, camera, detections).
    ``mrcnet.data.yolo``     YOLO-format detection datasets (Ultralytics) from BOP splits.
    ``mrcnet.data.cli``      ``mrcnet-synth`` console script.

Nothing is imported here, so ``import mrcnet.data`` stays cheap and torch-free.
"""
