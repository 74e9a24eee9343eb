"""Stand-ins for the ``tensorrt`` and ``pycuda`` modules, for tests on machines without them.

They follow the documented Python APIs the build and the backend call (TensorRT 8.5, 10 and
11 spellings: 8.x has no STRONGLY_TYPED network flag, 11 no EXPLICIT_BATCH, FP16/INT8 builder
flags or calibrators) and record what they were asked, so tests can check the decisions that
reach TensorRT. Like the real parser, the fake one needs EXPLICIT_BATCH on 8.x and imports
InstanceNormalization (8.x) and RoiAlign as plugin layers, failing when
``init_libnvinfer_plugins`` has not run in this "process" (this module object); an engine
holding a plugin layer deserializes only after it, too. The fake "engine" is the stage's ONNX file run by ONNX Runtime on fake device
memory, so a restore through the ``tensorrt`` backend must reproduce the CPU backends
exactly: the tests then check the backend's data path (pinned/device buffers per batch
size, chunking, fixed-batch padding, binding vs tensor API), not TensorRT itself.
"""

from __future__ import annotations

import base64
import importlib.machinery
import itertools
import json
import types
from pathlib import Path

import numpy as np


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec needs one
    return module


# -- pycuda ------------------------------------------------------------------------------------
class FakeCuda:
    """pycuda.driver over a dict of numpy byte arrays ("device memory")."""

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self.addresses = itertools.count(0x1000, 0x1000000)
        self.allocations = 0
        self.copies = {"htod": 0, "dtoh": 0}
        driver = _module("pycuda.driver")
        driver.mem_alloc = self.mem_alloc
        driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
        driver.memcpy_htod_async = self.htod
        driver.memcpy_dtoh_async = self.dtoh
        driver.Stream = FakeStream
        self.driver = driver
        self.package = _module("pycuda")
        self.package.driver = driver
        self.autoinit = _module("pycuda.autoinit")

    def mem_alloc(self, nbytes: int) -> "FakeAllocation":
        address = next(self.addresses)
        self.memory[address] = np.zeros(nbytes, np.uint8)
        self.allocations += 1
        return FakeAllocation(address)

    def htod(self, device, host: np.ndarray, stream) -> None:
        raw = np.ascontiguousarray(host).view(np.uint8).ravel()
        self.memory[int(device)][:raw.size] = raw
        self.copies["htod"] += 1

    def dtoh(self, host: np.ndarray, device, stream) -> None:
        raw = host.view(np.uint8).reshape(-1)
        raw[:] = self.memory[int(device)][:raw.size]
        self.copies["dtoh"] += 1

    def read(self, address: int, shape, dtype) -> np.ndarray:
        count = int(np.prod(shape))
        return self.memory[address][:count * np.dtype(dtype).itemsize].view(dtype).reshape(shape).copy()

    def write(self, address: int, value: np.ndarray) -> None:
        raw = np.ascontiguousarray(value).view(np.uint8).ravel()
        self.memory[address][:raw.size] = raw

    def modules(self) -> dict[str, types.ModuleType]:
        return {"pycuda": self.package, "pycuda.driver": self.driver, "pycuda.autoinit": self.autoinit}


class FakeAllocation:
    def __init__(self, address: int):
        self.address = address

    def __int__(self) -> int:
        return self.address


class FakeStream:
    handle = 0x5EED

    def synchronize(self) -> None:
        pass


# -- tensorrt ----------------------------------------------------------------------------------
def fake_tensorrt(version: str, cuda: FakeCuda | None = None, dla_cores: int = 0) -> types.ModuleType:
    """A ``tensorrt`` module of the given version: builder side always, runtime side over ``cuda``."""
    trt = _module("tensorrt")
    trt.__version__ = version
    trt.major = major = int(version.split(".")[0])
    trt.built = []  # (network flags, parsed file, config) of every build_serialized_network
    trt.parsed_models = []  # the ONNX bytes of every successful parse
    trt.plugin_registrations = []  # (logger, namespace) of every init_libnvinfer_plugins call
    trt.float32, trt.float16 = "float32", "float16"
    trt.nptype = lambda dtype: np.dtype(dtype).type

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class _Enum:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def __int__(self):
            return self.value

    trt.Logger = Logger

    def init_libnvinfer_plugins(logger, namespace):
        assert isinstance(logger, Logger) and isinstance(namespace, str)
        trt.plugin_registrations.append((logger, namespace))
        return True

    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    # Enum values as the real ones: 8.x EXPLICIT_BATCH only; 10.x EXPLICIT_BATCH = 0, STRONGLY_TYPED = 1;
    # 11 dropped EXPLICIT_BATCH (STRONGLY_TYPED = 0, kept for compatibility).
    network_flags = {"EXPLICIT_BATCH": _Enum("EXPLICIT_BATCH", 0)} if major < 11 else {}
    if major >= 10:
        network_flags["STRONGLY_TYPED"] = _Enum("STRONGLY_TYPED", len(network_flags))
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**network_flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    builder_flags = {"GPU_FALLBACK": "GPU_FALLBACK"} | ({"FP16": "FP16", "INT8": "INT8"} if major < 11 else {})
    trt.BuilderFlag = types.SimpleNamespace(**builder_flags)
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    if major < 11:
        for name in ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator",
                     "IInt8LegacyCalibrator"):
            setattr(trt, name, type(name, (), {"__init__": lambda self: None}))
    plugin_ops = {"RoiAlign": "ROIAlign_TRT"} | ({"InstanceNormalization": "InstanceNormalization_TRT"}
                                                  if major < 10 else {})

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.parsed = None  # the path given to the parser
            self.model = None  # the ONNX bytes parsed
            self.plugins = []  # plugin layers the parse created

    class ParserError:
        def __init__(self, text, node):
            self.text, self.index = text, node

        def desc(self):
            return self.text

        def node(self):
            return self.index

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

        def parse_from_file(self, path):
            return self.parse(Path(path).read_bytes(), path)

        def parse(self, model, path=None):
            import onnx

            if major < 10 and not self.network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                self.errors.append(ParserError("Network must have explicit batch dimension", -1))
                return False
            graph = onnx.load_from_string(bytes(model)).graph
            nodes = graph.node
            # TensorRT's Q/DQ quantize to signed types only (INT8, FP8, INT4): a UINT8 zero point is refused
            unsigned = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8}
            refused = [i for i, n in enumerate(nodes)
                       if n.op_type in ("QuantizeLinear", "DequantizeLinear") and set(n.input[2:3]) & unsigned]
            if refused:
                self.errors += [ParserError("Unsupported quantization output type UINT8", i) for i in refused]
                return False
            plugins = [(i, plugin_ops[n.op_type]) for i, n in enumerate(nodes) if n.op_type in plugin_ops]
            if plugins and not trt.plugin_registrations:
                self.errors += [ParserError(f"getPluginCreator could not find plugin: {name} version: 1", i)
                                for i, name in plugins]
                return False
            self.network.parsed, self.network.model = path, bytes(model)
            self.network.plugins = sorted({name for _, name in plugins})
            trt.parsed_models.append(bytes(model))
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pool = [], [], {}
            self.int8_calibrator = self.calibration_profile = self.timing_cache = None
            self.default_device_type, self.DLA_core = "GPU", -1

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile

    class Builder:
        num_DLA_cores = dla_cores
        max_DLA_batch_size = 32

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network.flags, network.parsed, config))
            spec = {"onnx": base64.b64encode(network.model).decode(), "plugins": network.plugins,
                    "profile": {n: s for n, s in config.profiles[0].shapes.items()}}
            return json.dumps(spec).encode()

    def deserialize_cuda_engine(blob):
        spec = json.loads(bytes(blob))
        if spec["plugins"] and not trt.plugin_registrations:
            return None  # the real runtime logs "getPluginCreator could not find plugin ..." and returns None
        return FakeEngine(spec, cuda, major)

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    if cuda is not None:
        trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=deserialize_cuda_engine)
    return trt


class FakeEngine:
    """The stage ONNX under ONNX Runtime, with the TensorRT 10 (names) or 8 (bindings) API."""

    def __init__(self, spec: dict, cuda: FakeCuda, major: int):
        import onnxruntime as ort

        self.session = ort.InferenceSession(base64.b64decode(spec["onnx"]), providers=["CPUExecutionProvider"])
        self.profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in spec["profile"].items()}
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.names = self.inputs + self.outputs
        self.cuda, self.major = cuda, major
        self.executions: list[int] = []  # batch of every execute call
        if major >= 10:
            self.num_io_tensors = len(self.names)
        else:
            self.num_bindings = len(self.names)

    # TensorRT 10
    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_profile_shape(self, name, profile):
        return self.profile[name]

    # TensorRT 8
    def get_binding_name(self, i):
        return self.names[i]

    def binding_is_input(self, i):
        return self.names[i] in self.inputs

    def get_binding_dtype(self, i):
        return "float32"

    def get_profile_shape(self, profile, i):
        return self.profile[self.names[i]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def _outputs_for_shapes(self) -> dict[str, np.ndarray]:
        feeds = {name: np.zeros(self.shapes[name], np.float32) for name in self.engine.inputs}
        return dict(zip(self.engine.outputs, self.engine.session.run(None, feeds)))

    def _set(self, name, shape):
        low, _, high = self.engine.profile[name]
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def _execute(self, addresses: dict[str, int]) -> bool:
        feeds = {name: self.engine.cuda.read(addresses[name], self.shapes[name], np.float32)
                 for name in self.engine.inputs}
        self.engine.executions.append(next(iter(feeds.values())).shape[0])
        for name, value in zip(self.engine.outputs, self.engine.session.run(None, feeds)):
            self.engine.cuda.write(addresses[name], value)
        return True

    # TensorRT 10
    def set_input_shape(self, name, shape):
        return self._set(name, shape)

    def get_tensor_shape(self, name):
        return self._outputs_for_shapes()[name].shape

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        return self._execute(self.addresses)

    # TensorRT 8
    def set_binding_shape(self, index, shape):
        return self._set(self.engine.names[index], shape)

    def get_binding_shape(self, index):
        return self._outputs_for_shapes()[self.engine.names[index]].shape

    def execute_async_v2(self, bindings, stream):
        assert len(bindings) == len(self.engine.names) and all(bindings)
        return self._execute(dict(zip(self.engine.names, bindings)))
