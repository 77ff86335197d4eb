"""MRC-Net export: PyTorch -> ONNX (classifier + regressor) -> TensorRT; the ``mrcnet-export`` CLI.

Public API (torch-backed names load lazily, so ``import mrcnet.export`` is cheap)::

    from mrcnet.export import export_checkpoint, export_onnx, subset_model, quantize_graphs, build_engines
    res = export_checkpoint("model.pth", "out/", dataset="tless", object_ids=[5, 7])

Modules: ``manifest`` (graph I/O names, manifest writing; the format is
``mrcnet.runtime.manifest``), ``onnx_export`` (graph wrappers, export, ORT parity), ``subset``
(object subsets), ``quantize`` (calibration data, int8 QDQ in ONNX Runtime and TensorRT styles),
``fp16`` (the fp16 graph), ``trt_support`` (onnx-tensorrt operator support, conformance check),
``tensorrt`` (engines for TensorRT 10 / 11, caches),
``exporter`` (checkpoint -> export directory), ``cli`` (``mrcnet-export``).
"""
import importlib

_LAZY = {
    "export_checkpoint": "exporter", "ExportError": "exporter", "ExportResult": "exporter",
    "export_onnx": "onnx_export", "onnx_parity": "onnx_export", "ClassifierGraph": "onnx_export",
    "RegressorGraph": "onnx_export", "example_inputs": "onnx_export", "run_ort": "onnx_export",
    "run_torch": "onnx_export", "ort_session": "onnx_export", "onnx_param_count": "onnx_export",
    "rel_err": "onnx_export", "optimize_for_export": "optimize",
    "subset_model": "subset", "SingleObjectConv2d": "subset",
    "calibration_feeds": "quantize", "quantize_graphs": "quantize", "quant_agreement": "quantize",
    "quantize_graph": "quantize", "output_agreement": "quantize",
    "build_engines": "tensorrt", "build_engine": "tensorrt", "check_tensorrt": "tensorrt",
    "TensorRTUnavailable": "tensorrt", "EngineBuildError": "tensorrt", "build_plan": "tensorrt",
    "convert_graphs": "fp16", "check_graph": "trt_support", "check_export": "trt_support",
    "build_manifest": "manifest", "write_manifest": "manifest", "read_manifest": "manifest",
    "CLASSIFIER_OUTPUTS": "manifest", "REGRESSOR_INPUTS": "manifest", "REGRESSOR_OUTPUTS": "manifest",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
