"""INT8 calibration: data sources, activation capture per stage (route-aware for routed
models), scale algorithms, Q/DQ ONNX through ONNX Runtime's quantizer, TensorRT
calibration caches and the precision policy (issue 4)."""

from .int8 import DEFAULT_METHOD, Int8Options, Int8Report, add_int8
from .scales import METHODS
from .sources import CalibrationDataReader, FolderSplit, ReaderSource, Sample

__all__ = ["DEFAULT_METHOD", "METHODS", "CalibrationDataReader", "FolderSplit", "Int8Options", "Int8Report",
           "ReaderSource", "Sample", "add_int8"]
