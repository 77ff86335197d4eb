"""Fake ``tensorrt`` modules mimicking the build API of TensorRT 10.3 and 11.x (tests only).

TensorRT 10: ``BuilderFlag`` has TF32, FP16, INT8, OBEY_PRECISION_CONSTRAINTS; the network creation
flags EXPLICIT_BATCH (deprecated) and STRONGLY_TYPED; ``IInt8EntropyCalibrator2`` exists.
TensorRT 11: no FP16 / INT8 / OBEY_PRECISION_CONSTRAINTS flags, no calibrators, no
``int8_calibrator`` / ``set_calibration_profile`` on the config; networks are strongly typed
(``strongly_typed_flag=False`` drops STRONGLY_TYPED from the enum as a later release may).
Every call is recorded in ``trt.calls`` so tests can assert what the exporter did.
"""
from __future__ import annotations

import enum
import types


def fake_tensorrt(version: str, *, parse_ok: bool = True, build_result: bytes | None = b"ENGINE",
                  log_errors: tuple = (), layers: tuple = (), strongly_typed_flag: bool = True,
                  parse_error=("/backbone/Foo", "Foo", "No importer registered for op: Foo")):
    major = int(version.split(".")[0])
    calls: list = []
    flag_names = ["TF32", "DEBUG"] + (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
                                      if major < 11 else [])
    BuilderFlag = enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(flag_names)})
    net_flags = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    if strongly_typed_flag:
        net_flags["STRONGLY_TYPED"] = 1
    NetFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags) if net_flags else types.SimpleNamespace()
    float32, float16, int64 = "float32", "float16", "int64"

    Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3})

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Tensor:
        def __init__(self, name, shape, dtype=float32):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        def __init__(self, name, dtypes):
            self.name = name
            self.outputs = [Tensor(f"{name}_out{i}", (-1,), d) for i, d in enumerate(dtypes)]
            self.num_outputs = len(dtypes)
            self.precision = None
            self.out_types = {}

        def get_output(self, i):
            return self.outputs[i]

        def set_output_type(self, i, dtype):
            self.out_types[i] = dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = [Tensor("crops", (-1, 4, 128, 128)), Tensor("obj_index", (-1,), int64)]
            self.layers = [Layer(n, d) for n, d in layers]
            self.num_inputs = len(self.inputs)
            self.num_layers = len(self.layers)

        def get_input(self, i):
            return self.inputs[i]

        def get_layer(self, i):
            return self.layers[i]

    class ParserError:
        def __init__(self, name, op, desc):
            self._n, self._o, self._d = name, op, desc

        def node_name(self):
            return self._n

        def node_operator(self):
            return self._o

        def desc(self):
            return self._d

        def node(self):
            return 7

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.logger = network, logger
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            calls.append(("parse", str(path)))
            return parse_ok

        def get_error(self, i):
            return ParserError(*parse_error)

    class TimingCache:
        def serialize(self):
            return b"TC"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (mn, opt, mx)

    class Config:
        def __init__(self):
            self.flags = set()
            self.profiles = []

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", size))

        def create_timing_cache(self, data):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return TimingCache()

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_flag(self, f):
            calls.append(("set_flag", f.name))
            self.flags.add(f.name)

        def clear_flag(self, f):
            calls.append(("clear_flag", f.name))
            self.flags.discard(f.name)

    if major < 11:
        Config.int8_calibrator = None

        def set_calibration_profile(self, p):
            calls.append(("calibration_profile",))

        Config.set_calibration_profile = set_calibration_profile

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", sorted(config.flags)))
            for e in log_errors:
                self.logger.log(Severity.ERROR, e)
            return build_result

    mod = types.SimpleNamespace(
        __version__=version, BuilderFlag=BuilderFlag, NetworkDefinitionCreationFlag=NetFlag, ILogger=ILogger,
        Logger=ILogger, Builder=Builder, OnnxParser=OnnxParser, MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        float32=float32, float16=float16, calls=calls)
    if major < 11:
        mod.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})
    return mod
