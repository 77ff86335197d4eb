"""One comparator for every parity check: run two backends on the same feeds, report the differences.

Any two :class:`~.base.Backend` objects compare (ONNX Runtime, TensorRT, ``mrcnet.inference.
TorchBackend``; fp32 vs int8 graphs; CPU vs GPU)::

    from mrcnet.runtime.backends import compare_backends
    report = compare_backends(reference, candidate, feeds)     # feeds: classifier inputs + "render"
    report["max"], report["R"], report["argmax_agree"], report["rot_agree_5deg"]

``feeds``: ``crops`` (N,4,S,S), ``obj_index`` (N,), ``fov`` (N,3), ``K_roi`` (N,3,3) and the stage-2
image ``render`` (N,4,S,S) (``mrcnet.export.onnx_export.example_inputs`` makes such a dict).
Both backends run stage 1 then stage 2 (:func:`run_backend`). With ``shared_stage1=True`` the
candidate's regressor gets the reference's stage-1 tensors, so a near-tie argmax in stage 1 can
neither hide nor fake a stage-2 error (what the exporter checks); otherwise each chains its own.

Report (:func:`compare_outputs`): per output the max relative error ``max|a - b| / max|b|`` ("of
scale", :func:`rel_err`), ``max`` (the largest of them), ``argmax_agree`` (share of crops whose
pose / depth / translation bins all agree, when those logits are compared), and, when R and t are
compared, ``rot_agree_5deg`` / ``t_agree_5mm`` (share of crops within 5 degrees / 5 mm).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..geometry import rotation_angle_deg
from .base import Backend

LOGITS = ("pose_logits", "depth_logits", "trans_logits")


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (the project's 'of scale' tolerance metric)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_backend(backend: Backend, feeds: Mapping[str, np.ndarray],
                stage1: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
    """Every output of both stages of ``backend`` on ``feeds`` (classifier inputs + ``render``).

    stage1: tensors given to the regressor instead of the backend's own (those of its inputs that
    this mapping holds, e.g. another backend's features); None chains the backend's classifier."""
    out = dict(backend.run_classifier(feeds))
    reg = {"render": feeds["render"]}
    if stage1 is not None:
        reg.update({k: v for k, v in stage1.items() if k in backend.regressor_inputs})
    out.update(backend.run_regressor(reg))
    return out


def compare_outputs(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                    keys: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Differences of ``got`` from ``ref`` over ``keys`` (default: the outputs both hold)."""
    keys = [k for k in ref if k in got] if keys is None else list(keys)
    out = {k: rel_err(got[k], ref[k]) for k in keys}
    out["max"] = max(out.values()) if out else 0.0
    logits = [k for k in LOGITS if k in keys]
    if logits:
        agree = np.ones(len(np.asarray(ref[logits[0]])), bool)
        for k in logits:
            agree &= np.asarray(got[k]).argmax(1) == np.asarray(ref[k]).argmax(1)
        out["argmax_agree"] = float(agree.mean())
    if "R" in keys and "t" in keys:
        out["rot_agree_5deg"] = float((rotation_angle_deg(np.asarray(got["R"], np.float64),
                                                          np.asarray(ref["R"], np.float64)) < 5).mean())
        dt = np.linalg.norm(np.asarray(got["t"], np.float64) - np.asarray(ref["t"], np.float64), axis=-1)
        out["t_agree_5mm"] = float((dt < 5).mean())
    return out


def compare_backends(reference: Backend, candidate: Backend, feeds: Mapping[str, np.ndarray],
                     keys: Optional[Sequence[str]] = None, shared_stage1: bool = False) -> dict[str, float]:
    """Run both backends on ``feeds`` and compare ``candidate`` with ``reference`` (module docstring)."""
    ref = run_backend(reference, feeds)
    got = run_backend(candidate, feeds, stage1=ref if shared_stage1 else None)
    return compare_outputs(got, ref, keys)
