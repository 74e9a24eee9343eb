"""Activation ranges per stage: ONNX Runtime's calibrators, fed one batch at a time.

``minmax``, ``percentile`` and ``entropy`` are ONNX Runtime's own calibrators
(``onnxruntime.quantization.calibrate``), all symmetric, since TensorRT's explicit
quantization needs zero points of 0. ``mse`` is ours, as no maintained ONNX tool has
it: it reuses ONNX Runtime's histogram of |x| and picks the clipping threshold that
minimises the expected squared error of symmetric INT8 rounding plus clipping.

The result of every method is one ``amax`` per tensor (range ``[-amax, amax]``,
``scale = amax / 127``), handed to ``quantize_static`` unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

from edgerestore.runtime.errors import EdgeRestoreError

METHODS = ("minmax", "percentile", "entropy", "mse")
# The compute-heavy ops: the layers the precision policy keeps in FP32 or not.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# The ops that get Q/DQ. Quantizing the ReLU after a Conv too gives ONNX Runtime its
# DQ -> Conv -> Q pattern (fused into an INT8 kernel: without it INT8 ran 1.5x *slower*
# than FP32 on DnCNN) and costs no PSNR against Q/DQ on Conv inputs only (README).
QUANTIZED_OPS = (*COMPUTE_OPS, "Relu")
PERCENTILE = 99.999
HISTOGRAM_BINS = 2048
# KL over 1024 bins into 128 levels, as TensorRT's entropy calibrator does. ONNX Runtime's
# defaults (128 into 128) leave a single candidate threshold: min-max under another name.
ENTROPY_BINS, ENTROPY_LEVELS = 1024, 128

_ORT_METHOD = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Percentile}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise EdgeRestoreError(f"unknown calibration method '{method}'; choose from {', '.join(METHODS)}")
    return method


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tooling prints progress to stdout and warns through
    the root logger; neither may reach a user's terminal or a ``--json`` report."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


class _Once:
    """An ONNX Runtime CalibrationDataReader over one batch of feeds."""

    def __init__(self, feeds: dict[str, np.ndarray]):
        self.feeds: dict[str, np.ndarray] | None = feeds

    def get_next(self):
        feeds, self.feeds = self.feeds, None
        return feeds


def cpu_session(model: str | bytes, optimize: bool = False):
    """An ONNX Runtime CPU session for calibration work, without spinning threads, which would
    compete with the runtime's own sessions called in between (see
    runtime/backends/onnxruntime_backend.py). Q/DQ pairs are never fused into integer
    kernels: every INT8 measurement of calibration is the Q/DQ graph's exact float arithmetic
    (runtime/backends/qdq_reference_backend.py), the same on every CPU and release. Without
    ``optimize`` the graph stays as written, so every tensor stays observable (what ONNX
    Runtime's calibrator builds)."""
    import onnxruntime as ort

    from edgerestore.runtime.backends.onnxruntime_backend import SPINNING

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class StageRanges:
    """Collects one stage's activation statistics batch by batch (so memory stays
    bounded however many tiles calibrate), then gives ``amax`` per tensor."""

    def __init__(self, stage: str, onnx_path: Path, method: str, workdir: Path):
        self.stage, self.method = stage, check_method(method)
        options: dict = {"symmetric": True}
        if method == "entropy":
            options.update(num_bins=ENTROPY_BINS, num_quantized_bins=ENTROPY_LEVELS)
        elif method in ("percentile", "mse"):
            options.update(num_bins=HISTOGRAM_BINS, percentile=PERCENTILE)
        workdir.mkdir(parents=True, exist_ok=True)
        with quiet():
            self._calibrator = create_calibrator(Path(onnx_path), list(QUANTIZED_OPS),
                                                 augmented_model_path=str(workdir / f"{stage}.augmented.onnx"),
                                                 calibrate_method=_ORT_METHOD[method], extra_options=options)
            self._calibrator.infer_session = cpu_session(self._calibrator.augmented_model_path)
        self.rows = 0  # tiles (or images) seen

    def collect(self, feeds: dict[str, np.ndarray]) -> None:
        with quiet():
            self._calibrator.collect_data(_Once(feeds))
        self.rows += len(next(iter(feeds.values())))

    def amax(self) -> dict[str, float]:
        if not self.rows:
            raise EdgeRestoreError(f"stage '{self.stage}' saw no calibration data (no tile reached it); "
                                   "calibrate on more or more varied images")
        with quiet():
            if self.method == "mse":
                result = {name: mse_amax(hist, edges) for name, (hist, edges, *_)
                          in self._calibrator.collector.histogram_dict.items()}
            else:
                ranges = self._calibrator.compute_data()
                result = {name: float(np.abs(np.asarray(d.range_value, np.float64)).max())
                          for name, d in ranges.items()}
        for name, value in result.items():
            if not math.isfinite(value):
                raise EdgeRestoreError(f"stage '{self.stage}': tensor '{name}' has NaN/Inf activations on the "
                                       "calibration data; the FP32 model overflows there and cannot be quantized")
        return dict(sorted(result.items()))


def mse_amax(hist: np.ndarray, edges: np.ndarray, levels: int = 127) -> float:
    """The threshold (at a bin edge) minimising E[(q(x) - x)^2] over a histogram of |x|:
    values below it round to a step of ``amax / levels`` (error step^2 / 12), values
    above it are clipped to it."""
    hist, edges = hist.astype(np.float64), edges.astype(np.float64)
    if hist.sum() == 0:
        return float(edges[-1])
    centres = (edges[:-1] + edges[1:]) / 2
    candidates = edges[1:]
    # Only thresholds keeping at least 1/8 of the range: below that, nothing is left to quantize.
    keep = candidates >= candidates[-1] / 8
    candidates = candidates[keep]
    counts_below = np.cumsum(hist)[keep]
    # clipping error of the bins above each candidate: sum h_j (c_j - t)^2, vectorised
    above = centres[None, :] > candidates[:, None]
    clip = ((centres[None, :] - candidates[:, None]) ** 2 * hist[None, :] * above).sum(1)
    rounding = counts_below * (candidates / levels) ** 2 / 12
    return float(candidates[np.argmin(clip + rounding)])
