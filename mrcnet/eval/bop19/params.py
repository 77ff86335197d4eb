"""Settings of the BOP'19 protocol: metrics, correctness thresholds, VSD parameters."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mrcnet.eval import pose_errors as pe

METRICS = ("vsd", "mssd", "mspd")
#: correctness thresholds of BOP'19: VSD error (unitless), MSSD (x diameter), MSPD (px at 640 wide)
VSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
MSSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
MSPD_THRESHOLDS = tuple(float(x) for x in np.arange(5, 51, 5))
#: MSPD errors are scaled by MSPD_REF_WIDTH / image width before thresholding
MSPD_REF_WIDTH = 640.0
#: bop_toolkit's per-dataset VSD delta (mm) where it differs from pose_errors.VSD_DELTA_MM
VSD_DELTA_BY_DATASET = {"itodd": 5.0}


class EvalError(ValueError):
    """An input of the evaluation is unusable (the message names the file / row / target)."""


@dataclass(frozen=True)
class Bop19Params:
    """Settings of the BOP'19 protocol (the defaults are the official ones)."""

    vsd_delta: float = pe.VSD_DELTA_MM
    vsd_taus: tuple = pe.VSD_TAUS
    vsd_normalized_by_diameter: bool = True
    vsd_thresholds: tuple = VSD_THRESHOLDS
    mssd_thresholds: tuple = MSSD_THRESHOLDS
    mspd_thresholds: tuple = MSPD_THRESHOLDS
    visib_gt_min: float = -1.0
    max_sym_disc_step: float = 0.01

    def as_dict(self) -> dict:
        """JSON-ready copy (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def default_vsd_delta(data_dir) -> float:
    """BOP'19 VSD delta (mm) for a dataset folder, from its name (``itodd`` -> 5, else 15)."""
    return VSD_DELTA_BY_DATASET.get(Path(data_dir).resolve().name.lower(), pe.VSD_DELTA_MM)


def check_metrics(metrics) -> tuple:
    """Lower-cased metric names; EvalError for an empty or unknown one."""
    metrics = tuple(m.lower() for m in metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise EvalError(f"unknown metrics {unknown or metrics}; choose from {', '.join(METRICS)}")
    return metrics


def thresholds(params: Bop19Params) -> dict:
    """{metric: (C,) float64 correctness thresholds}; VSD's C = taus x thresholds, tau-major."""
    return {
        "vsd": np.tile(np.asarray(params.vsd_thresholds, np.float64), len(params.vsd_taus)),
        "mssd": np.asarray(params.mssd_thresholds, np.float64),
        "mspd": np.asarray(params.mspd_thresholds, np.float64),
    }
