"""Where the shipped demo lives (one place for its paths; no torch).

The demo model's checkpoint and its objects' BOP models, the demo clip (the layout of
``mrcnet.data.video.generate_video``) with its camera and detections, all in the package folder
``mrcnet/assets/demo`` (source tree and wheels alike). The checkpoint is exported once
(``mrcnet-export``, torch) into :data:`DEMO_EXPORT_DIR`, which ``mrcnet-run --demo`` and the
``--model`` default read (``mrcnet.runtime.manifest.demo_export_problem`` checks it).
"""
from __future__ import annotations

import os
from pathlib import Path

import mrcnet as _mrcnet_pkg  # torch-free at import; its folder holds the shipped assets

DEMO_DIR = Path(_mrcnet_pkg.__file__).resolve().parent / "assets" / "demo"
DEMO_CHECKPOINT = DEMO_DIR / "model.pth"
DEMO_MODELS = DEMO_DIR / "models"
DEMO_CLIP = "video.mp4"  # inside DEMO_DIR
DEMO_DETECTIONS = "detections.json"  # inside DEMO_DIR
DEMO_CAMERA = "camera.json"  # inside DEMO_DIR
#: where the demo checkpoint's export is cached (env ``MRCNET_DEMO_EXPORT`` overrides)
DEMO_EXPORT_DIR = Path(os.environ.get("MRCNET_DEMO_EXPORT",
                                      Path.home() / ".cache" / "mrcnet-edge" / "demo-export"))
