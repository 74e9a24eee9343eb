"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import EdgeRestoreError


# A plan alternates between many sessions (15 stages for Path-Restore), each with its own
# thread pool: threads left spinning after one stage's call steal the cores from the next
# stage's call. Measured on a 2-core machine: 0.10 s vs 0.011 s per 9-tile block call.
SPINNING = "0"


class OrtStage:
    def __init__(self, path: Path):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises several private exception types for bad files
            raise EdgeRestoreError(f"onnxruntime cannot load '{path}': {_first_line(err)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__


def load(path: Path) -> OrtStage:
    return OrtStage(path)
