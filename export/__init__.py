"""torch -> ONNX stage graphs -> bundle (manifest + ONNX files), with a parity check."""

from .bundle_writer import ExportReport, export_bundle, write_bundle
from .parity import Parity

__all__ = ["ExportReport", "Parity", "export_bundle", "write_bundle"]
