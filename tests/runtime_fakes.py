"""Test doubles for the runtime tests (no torch): a tiny export directory whose ONNX graphs have the
exact contract I/O names, a silhouette renderer, a YOLO-style detector graph, a cube model.

The fake classifier is deterministic and checkable: R_init = I, t_init = the point on the crop's
centre ray at normalised depth ``d = D0 + D_STEP * obj_index`` (t_z = d * fx_roi);
rot_score / depth_score = max of the pooled colour of the crop's top-left / top-right quadrant
(so the TTA choice depends on the image and on the in-plane rotation).
The fake regressor returns R = R_init, t = t_init (+ 0 x every other input, so all are wired).
Expected pipeline output: R = Rz_k^T, t = d * fx_roi * K^-1 (box centre, 1).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Python source that makes ``import torch`` fail in the process that runs it (a meta-path finder):
#: the prelude of the subprocess tests that prove a code path torch-free.
BLOCK_TORCH = """import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _BlockTorch())
"""

from mrcnet.runtime.preprocess import box_loc_from_masks, box_map
from mrcnet.runtime.render.renderer import RenderResult
from mrcnet.runtime.video_io import Frame
from mrcnet.testing import box_mesh, write_box_ply, write_ply  # noqa: F401  (write_ply: for the tests)

D0, D_STEP = 0.5, 0.1
OPSET = 17


def _const(name, arr):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))


def classifier_model() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    nodes = [
        helper.make_node("AveragePool", ["crops"], ["feat"], kernel_shape=[16, 16], strides=[16, 16]),
        # rotation-dependent scores: colour of the crop's top-left / top-right quadrant
        _const("q_s", np.array([0, 0, 0], np.int64)), _const("q_e", np.array([3, 128, 128], np.int64)),
        _const("q_s2", np.array([0, 0, 128], np.int64)), _const("q_e2", np.array([3, 128, 256], np.int64)),
        _const("q_ax", np.array([1, 2, 3], np.int64)),
        helper.make_node("Slice", ["crops", "q_s", "q_e", "q_ax"], ["tl"]),
        helper.make_node("Slice", ["crops", "q_s2", "q_e2", "q_ax"], ["tr"]),
        helper.make_node("AveragePool", ["tl"], ["pool_tl"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("AveragePool", ["tr"], ["pool32"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Flatten", ["pool_tl"], ["pose_logits"], axis=1),
        helper.make_node("Flatten", ["pool32"], ["depth_logits"], axis=1),
        _const("two", np.array(2.0, np.float32)),
        helper.make_node("Mul", ["pose_logits", "two"], ["trans_logits"]),
        helper.make_node("ReduceMax", ["pose_logits"], ["rot_score"], keepdims=0, axes=[1]),
        helper.make_node("ReduceMax", ["depth_logits"], ["depth_score"], keepdims=0, axes=[1]),
        # R_init = K_roi * 0 + I
        _const("zero", np.array(0.0, np.float32)),
        _const("eye", np.eye(3, dtype=np.float32)[None]),
        helper.make_node("Mul", ["K_roi", "zero"], ["k0"]),
        helper.make_node("Add", ["k0", "eye"], ["R_init"]),
        # d = D0 + D_STEP * obj_index
        helper.make_node("Cast", ["obj_index"], ["oi_f"], to=F),
        _const("dstep", np.array(D_STEP, np.float32)),
        _const("d0", np.array(D0, np.float32)),
        helper.make_node("Mul", ["oi_f", "dstep"], ["d_a"]),
        helper.make_node("Add", ["d_a", "d0"], ["d"]),
        helper.make_node("Unsqueeze", ["d", "ax1"], ["d1"]),
        _const("ax1", np.array([1], np.int64)),
        # fx, cx, fy, cy from K_roi flattened to (N, 9)
        _const("shape9", np.array([-1, 9], np.int64)),
        helper.make_node("Reshape", ["K_roi", "shape9"], ["k9"]),
    ]
    for name, i in (("fx", 0), ("cx", 2), ("fy", 4), ("cy", 5)):
        nodes += [_const(f"s{i}", np.array([i], np.int64)), _const(f"e{i}", np.array([i + 1], np.int64)),
                  helper.make_node("Slice", ["k9", f"s{i}", f"e{i}", "ax1"], [name])]
    nodes += [
        _const("half", np.array(128.0, np.float32)),
        helper.make_node("Mul", ["d1", "fx"], ["tz"]),
        helper.make_node("Sub", ["half", "cx"], ["ux"]),
        helper.make_node("Mul", ["d1", "ux"], ["tx"]),
        helper.make_node("Sub", ["half", "cy"], ["uy"]),
        helper.make_node("Div", ["tz", "fy"], ["tzfy"]),
        helper.make_node("Mul", ["tzfy", "uy"], ["ty"]),
        helper.make_node("Concat", ["tx", "ty", "tz"], ["t_init"], axis=1),
    ]
    # Constant nodes must precede their users: sort constants first.
    nodes = [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]
    g = helper.make_graph(
        nodes, "fake_classifier",
        [helper.make_tensor_value_info("crops", F, ["N", 4, 256, 256]),
         helper.make_tensor_value_info("obj_index", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("fov", F, ["N", 3]),
         helper.make_tensor_value_info("K_roi", F, ["N", 3, 3])],
        [helper.make_tensor_value_info(n, F, shape) for n, shape in (
            ("pose_logits", ["N", 192]), ("depth_logits", ["N", 48]), ("trans_logits", ["N", 192]),
            ("R_init", ["N", 3, 3]), ("t_init", ["N", 3]), ("rot_score", ["N"]), ("depth_score", ["N"]),
            ("feat", ["N", 4, 16, 16]))],
    )
    # fov is a declared input that the fake does not use; ORT keeps unused inputs.
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def regressor_model() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    nodes = [
        _const("zero", np.array(0.0, np.float32)),
        helper.make_node("ReduceMean", ["render"], ["mr"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("ReduceMean", ["feat"], ["mf"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Add", ["mr", "mf"], ["m"]),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Unsqueeze", ["m0", "ax1"], ["m1"]),
        _const("ax1", np.array([1], np.int64)),
        helper.make_node("Add", ["t_init", "m1"], ["t"]),
        helper.make_node("Identity", ["R_init"], ["R"]),
    ]
    nodes = [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]
    g = helper.make_graph(
        nodes, "fake_regressor",
        [helper.make_tensor_value_info("render", F, ["N", 4, 256, 256]),
         helper.make_tensor_value_info("feat", F, ["N", 4, 16, 16]),
         helper.make_tensor_value_info("R_init", F, ["N", 3, 3]),
         helper.make_tensor_value_info("t_init", F, ["N", 3])],
        [helper.make_tensor_value_info("R", F, ["N", 3, 3]), helper.make_tensor_value_info("t", F, ["N", 3])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


CUBE_V, CUBE_F = box_mesh(60.0)  # a 60 mm cube


def make_export(root, obj_ids=(1, 2)) -> Path:
    """A complete fake export directory (manifest, both graphs, models/) under ``root``."""
    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    cls, reg = classifier_model(), regressor_model()
    onnx.checker.check_model(cls)
    onnx.checker.check_model(reg)
    onnx.save(cls, root / "classifier.onnx")
    onnx.save(reg, root / "regressor.onnx")
    for oid in obj_ids:
        write_box_ply(root / "models" / f"obj_{oid:06d}.ply", 60.0)
    manifest = {
        "format_version": 1, "dataset": "synth", "preset": "fake", "obj_ids": list(obj_ids),
        "depth_range": [0.05, 1.7], "bins": {"n_side": 2, "n_depth": 100, "n_cells": 32},
        "fov_variant": "inference", "n_rot": 4, "crop_size": 256, "bn_group": 4, "models_dir": "models",
        "classifier": {"onnx": "classifier.onnx", "inputs": [i.name for i in cls.graph.input],
                       "outputs": [o.name for o in cls.graph.output]},
        "regressor": {"onnx": "regressor.onnx", "inputs": [i.name for i in reg.graph.input],
                      "outputs": [o.name for o in reg.graph.output]},
        "engines": {}, "project_version": "test", "checkpoint_sha256": "0" * 64,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


class SilhouetteRenderer:
    """Renderer double: flat grey (0.6) silhouettes by filling projected faces (no lighting)."""

    def __init__(self):
        self.meshes = {}
        self.calls = []

    def add_object(self, obj_id, mesh):
        self.meshes[int(obj_id)] = mesh

    def render(self, obj_ids, R, t, K, width=256, height=256):
        n = len(obj_ids)
        self.calls.append((np.asarray(obj_ids).copy(), np.asarray(R).copy(), np.asarray(t).copy(), np.asarray(K).copy()))
        mask = np.zeros((n, height, width), np.uint8)
        for i in range(n):
            m = self.meshes[int(obj_ids[i])]
            X = m.vertices.astype(np.float64) @ R[i].T + t[i]
            p = X @ K[i].T
            uv = p[:, :2] / p[:, 2:3]
            for f in m.faces:  # one fill per face (fillPoly on all would cancel overlaps)
                cv2.fillConvexPoly(mask[i], np.round(uv[f] * 16).astype(np.int32), 1, shift=4)
        mask = mask.astype(bool)
        rgb = np.repeat(mask[..., None], 3, -1).astype(np.float32) * 0.6
        loc = box_loc_from_masks(mask)
        return RenderResult(rgb, mask, mask.astype(np.float32), box_map(loc, width) if width == height else None, loc)


def detector_model(boxes, scores, classes, input_hw=(320, 320), with_num=False) -> onnx.ModelProto:
    """A YOLO-style post-NMS detector graph that ignores the image and returns fixed detections
    (boxes (1, M, 4) xyxy in input pixels, scores (1, M), classes (1, M) int64), plus 0 x the mean
    of the image so the input is wired."""
    F = TensorProto.FLOAT
    boxes = np.asarray(boxes, np.float32)[None]
    scores = np.asarray(scores, np.float32)[None]
    classes = np.asarray(classes, np.int64)[None]
    nodes = [
        _const("b0", boxes), _const("s0", scores), _const("c0", classes), _const("zero", np.array(0.0, np.float32)),
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["z"]),
        helper.make_node("Add", ["b0", "z"], ["det_boxes"]),
        helper.make_node("Add", ["s0", "z"], ["det_scores"]),
        helper.make_node("Identity", ["c0"], ["det_classes"]),
    ]
    M = boxes.shape[1]
    outputs = [helper.make_tensor_value_info("det_boxes", F, [1, M, 4]),
               helper.make_tensor_value_info("det_scores", F, [1, M]),
               helper.make_tensor_value_info("det_classes", TensorProto.INT64, [1, M])]
    if with_num:
        nodes.append(_const("num_dets", np.array([[boxes.shape[1] - 1]], np.int64)))
        outputs.insert(0, helper.make_tensor_value_info("num_dets", TensorProto.INT64, [1, 1]))
    g = helper.make_graph(nodes, "fake_yolo",
                          [helper.make_tensor_value_info("images", F, [1, 3, *input_hw])], outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(m)
    return m


class SlowBackend:
    """A backend that sleeps ``delay_s`` seconds in every classifier call (a pipeline slower than
    the frames arrive), otherwise the wrapped backend."""

    def __init__(self, be, delay_s: float):
        self.be, self.delay_s = be, float(delay_s)
        self.name = be.name
        self.classifier_outputs, self.regressor_outputs = be.classifier_outputs, be.regressor_outputs
        self.max_crops = getattr(be, "max_crops", None)

    def run_classifier(self, feeds, fetch=None):
        time.sleep(self.delay_s)
        return self.be.run_classifier(feeds, fetch)

    def run_regressor(self, feeds, fetch=None):
        return self.be.run_regressor(feeds, fetch)

    def close(self):
        self.be.close()


class FakeLiveSource:
    """A live source without a camera: ``images`` (list of (H, W, 3) uint8) delivered at ``fps``
    frames per second (the reader waits for each like for a camera), then the stream ends.
    Has the FrameSource attributes a run reads (live, fps, name, len 0, stopped_early)."""

    live = True
    stopped_early = None

    def __init__(self, images, fps: float = 30.0, name: str = "fake-camera"):
        self.images, self.fps, self.name = list(images), float(fps), name

    def __len__(self):
        return 0

    def __iter__(self):
        t0 = time.perf_counter()
        for i, img in enumerate(self.images):
            wait = t0 + i / self.fps - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            yield Frame(i, f"frame {i}", img.copy())

    def close(self):
        pass


def ultralytics_model(pred, input_hw=(320, 320), names=None, dynamic=False, extra_output=None,
                      half=False) -> onnx.ModelProto:
    """An Ultralytics-layout detector graph that ignores the image and returns ``pred`` (its one
    output ``output0``, e.g. (1, 4 + C, A) raw or (1, N, 6) NMS rows) plus 0 x the image mean, so the
    input is wired. names: class names written as Ultralytics does (``names`` metadata); dynamic:
    the input's H, W and the output's dimensions are symbolic (``imgsz`` metadata = input_hw); extra_output: a second
    constant output (mask prototypes); half: float16 input and output (Ultralytics ``half=True``)."""
    F = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    dt = np.float16 if half else np.float32
    pred = np.asarray(pred, dt)
    nodes = [_const("p0", pred), _const("zero", np.array(0.0, dt)),
             helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["z"]),
             helper.make_node("Add", ["p0", "z"], ["output0" if not dynamic else "p1"])]
    if dynamic:  # the last dimension sliced at a run-time value, so ONNX Runtime cannot infer it
        nodes += [helper.make_node("Shape", ["images"], ["ishape"], start=3),
                  _const("s0", np.array([0], np.int64)), _const("ax", np.array([pred.ndim - 1], np.int64)),
                  helper.make_node("Mul", ["ishape", "ishape"], ["iend"]),
                  helper.make_node("Slice", ["p1", "s0", "iend", "ax"], ["output0"])]
    shape = ["batch", "rows", "cols"] if dynamic else list(pred.shape)
    outputs = [helper.make_tensor_value_info("output0", F, shape)]
    if extra_output is not None:
        extra = np.asarray(extra_output, np.float32)
        nodes.append(_const("output1", extra))
        outputs.append(helper.make_tensor_value_info("output1", F, list(extra.shape)))
    in_shape = [1, 3, "height", "width"] if dynamic else [1, 3, *input_hw]
    g = helper.make_graph(nodes, "fake_ultralytics", [helper.make_tensor_value_info("images", F, in_shape)], outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    meta = {"names": str(dict(enumerate(names))), "task": "detect"} if names is not None else {}
    if dynamic:
        meta["imgsz"] = str(list(input_hw))
    for key, value in meta.items():
        prop = m.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(m)
    return m


def raw_prediction(anchors, n_classes: int, n_anchors: int) -> np.ndarray:
    """(1, 4 + C, A) Ultralytics raw output from ``[(cx, cy, w, h, class, score), ...]`` (input
    pixels); the other anchors score 0."""
    p = np.zeros((1, 4 + n_classes, n_anchors), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(anchors):
        p[0, :4, i] = cx, cy, w, h
        p[0, 4 + int(c), i] = s
    return p
