"""mrcnet.runtime.trt_compat: TensorRT 10 / 11 version handling and the cuda-python 12 / 13 -> pycuda
fallback, with fake modules (no TensorRT, CUDA or GPU needed)."""
import json
import subprocess
import sys
import types

import pytest

from mrcnet.runtime import trt_compat
from mrcnet.runtime.trt_compat import TrtCompatError


def _trt(version):
    return types.SimpleNamespace(__version__=version, TensorIOMode=types.SimpleNamespace(INPUT=0, OUTPUT=1))


@pytest.mark.parametrize("version, ok", [("10.3.0.26", True), ("10.13.2", True), ("11.0.0", True), ("11.5.1", True),
                                         ("10.2.0", False), ("8.6.1", False), ("12.0.0", False)])
def test_check_trt_version(version, ok):
    trt = _trt(version)
    if ok:
        assert trt_compat.check_trt_version(trt)[0] in (10, 11)
    else:
        with pytest.raises(TrtCompatError) as e:
            trt_compat.check_trt_version(trt)
        assert "\n" not in str(e.value) and version in str(e.value) and "10.3" in str(e.value)


def test_deserialize_engine_names_versions(tmp_path):
    eng = tmp_path / "classifier.fp16.engine"
    eng.write_bytes(b"not an engine")
    (tmp_path / "classifier.fp16.json").write_text(json.dumps({"key": {"tensorrt": "10.3.0"}}))
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda blob: None)
    with pytest.raises(TrtCompatError) as e:
        trt_compat.deserialize_engine(runtime, _trt("11.1.0"), eng)
    msg = str(e.value)
    assert "\n" not in msg and "10.3.0" in msg and "11.1.0" in msg and "--engines-only" in msg
    ok = types.SimpleNamespace(deserialize_cuda_engine=lambda blob: ("engine", blob))
    assert trt_compat.deserialize_engine(ok, _trt("11.1.0"), eng) == ("engine", b"not an engine")


def test_io_names():
    trt = _trt("11.0.0")
    names = ["crops", "obj_index", "R", "t"]
    modes = {"crops": 0, "obj_index": 0, "R": 1, "t": 1}
    engine = types.SimpleNamespace(num_io_tensors=4, get_tensor_name=lambda i: names[i],
                                   get_tensor_mode=lambda n: modes[n])
    assert trt_compat.io_names(engine, trt) == (["crops", "obj_index"], ["R", "t"])


class _Cudart:
    def __init__(self, err):
        self.err = err

    def cudaGetDeviceCount(self):
        return (self.err, 1 if self.err == 0 else 0)


def test_cuda_runtime_prefers_cuda_python():
    rt = trt_compat.cuda_runtime(lambda: _Cudart(0), lambda: pytest.fail("pycuda must not be imported"))
    assert rt.kind == "cuda-python" and rt.note == ""


def test_error_35_falls_back_to_pycuda_with_one_line(monkeypatch):
    monkeypatch.setattr(trt_compat, "cuda_python_major", lambda: 13)
    monkeypatch.setattr(trt_compat, "driver_version", lambda: "540.3.0")
    said = []
    drv = object()
    rt = trt_compat.cuda_runtime(lambda: _Cudart(35), lambda: drv, warn=said.append)
    assert rt.kind == "pycuda" and rt.module is drv
    assert len(said) == 1 and "\n" not in said[0]
    assert "540.3.0" in said[0] and ">= 580" in said[0] and "cuda-python<13" in said[0] and "pycuda" in said[0]


def test_error_35_without_pycuda_is_one_line(monkeypatch):
    monkeypatch.setattr(trt_compat, "cuda_python_major", lambda: 13)
    monkeypatch.setattr(trt_compat, "driver_version", lambda: "540.3.0")

    def no_pycuda():
        raise ImportError("No module named 'pycuda'")

    with pytest.raises(TrtCompatError) as e:
        trt_compat.cuda_runtime(lambda: _Cudart(35), no_pycuda, warn=lambda m: None)
    assert "\n" not in str(e.value) and "540.3.0" in str(e.value) and "pycuda" in str(e.value)


def test_no_cuda_python_uses_pycuda_silently():
    def missing():
        raise ImportError("No module named 'cuda'")

    said = []
    rt = trt_compat.cuda_runtime(missing, lambda: "drv", warn=said.append)
    assert rt.kind == "pycuda" and said == []


def test_driver_message_for_cuda_12():
    msg = trt_compat.insufficient_driver_message(12, "470.1")
    assert ">= 525.60" in msg and "470.1" in msg and "update the NVIDIA driver" in msg


def test_module_is_torch_free():
    code = ("import sys; sys.modules['torch'] = None; import mrcnet.runtime.trt_compat as m; "
            "assert 'tensorrt' not in sys.modules and 'cuda' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
