"""Empirical bias correction of a Q/DQ stage (calibration/bias_correction.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnx import numpy_helper

from edgerestore.calibration.bias_correction import channel_means, correct_biases, fp32_name, session_with_outputs
from edgerestore.calibration.quantize import (SIGNED_LEVELS, UNSIGNED_LEVELS, activation_amax, compute_nodes,
                                              quantize_stage, unsigned_activations)


class ConvChain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def export_chain(path, batches, rows):
    """ConvChain as a stage file (dynamic batch) and ``batches`` seeded random feeds of ``rows``."""
    torch.onnx.export(ConvChain().eval(), torch.rand(1, 3, 24, 24), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    rng = np.random.default_rng(0)
    return path, [{"x": rng.random((rows, 3, 24, 24), dtype=np.float32)} for _ in range(batches)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bias")
    path, feeds = export_chain(folder / "stage.onnx", 3, 4)
    return folder, path, feeds


def conv_outputs(path):
    return [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def quantized(folder, path, feeds, fp32_nodes, name):
    """Q/DQ model with coarse ranges (4x each tensor's max): a visible mean shift to remove."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Relu")]
    values = session_with_outputs(model, names).run(names, feeds[0])
    amax = {"x": 4.0, **{n: 4.0 * float(np.abs(v).max()) for n, v in zip(names, values)}}
    out = folder / name
    quantize_stage(path, out, amax, fp32_nodes)
    return out


def mean_error(fp32_path, qdq_path, feeds):
    names = conv_outputs(fp32_path)
    ref = channel_means(onnx.load(str(fp32_path)), names, feeds)
    got = channel_means(onnx.load(str(qdq_path)), names, feeds)
    return {n: float(np.abs(ref[n] - got[n]).max()) for n in names}


def float_initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("keep_last_fp32", [False, True], ids=["all-int8", "last-fp32"])
def test_correction_removes_the_mean_shift_of_every_convolution(chain, keep_last_fp32):
    """In the Q/DQ graph's own float arithmetic (the same on every CPU and release up to
    float32 rounding) a bias shift moves a convolution's channel means by exactly that shift,
    so after the sequential correction only float32 rounding is left of each mean error."""
    folder, path, feeds = chain
    nodes = compute_nodes(path)
    qdq = quantized(folder, path, feeds, [nodes[-1]] if keep_last_fp32 else [], f"q{keep_last_fp32}.onnx")
    before = mean_error(path, qdq, feeds)
    shifts = correct_biases(path, qdq, feeds)
    after = mean_error(path, qdq, feeds)
    assert set(shifts) == set(before)  # every convolution, INT8 or kept in FP32
    assert max(before.values()) > 1e-3  # the coarse ranges did shift the means
    output_amax = activation_amax(onnx.load(str(qdq))).get("y")  # None: y left in FP32
    levels = UNSIGNED_LEVELS if "y" in unsigned_activations(qdq) else SIGNED_LEVELS
    output_step = None if output_amax is None else output_amax / levels
    for name in before:
        # Float32 rounding of a mean over 6912 values of magnitude <= 1 per channel: < 1e-6.
        bound = 1e-6
        if name == "y" and output_step is not None:
            # A quantized graph output is compared after its final Q/DQ: the correction makes
            # the mean exact before it, and rounding to the INT8 step moves each value (so the
            # mean) by at most half a step.
            bound += output_step / 2
        assert after[name] <= bound, (name, before[name], after[name])
    # the corrected graph is still a valid Q/DQ model with the same quantized tensors
    model = onnx.load(str(qdq))
    onnx.checker.check_model(model)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0


def test_correction_changes_only_the_biases_by_the_measured_shift(chain):
    """Only the float biases change, each by the shift returned, and the first convolution's
    shift (its input is the graph input, untouched by other corrections) is the mean error
    measured beforehand."""
    folder, path, feeds = chain
    qdq = quantized(folder, path, feeds, [], "q_default.onnx")
    first = conv_outputs(path)[0]
    measured = channel_means(onnx.load(str(path)), [first], feeds)[first] - \
        channel_means(onnx.load(str(qdq)), [first], feeds)[first]
    before = float_initializers(qdq)
    shifts = correct_biases(path, qdq, feeds)
    after = float_initializers(qdq)
    np.testing.assert_allclose(shifts[first], measured, rtol=0, atol=1e-6)
    model = onnx.load(str(qdq))
    biases = {n.input[2]: fp32_name(n.output[0]) for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    assert set(after) == set(before)
    for name, value in after.items():
        if name in biases:  # bias += shift, rounded to float32 once
            expected = (before[name].astype(np.float64) + np.array(shifts[biases[name]])).astype(np.float32)
            np.testing.assert_array_equal(value, expected)
        else:  # weights, scales, zero points: untouched
            np.testing.assert_array_equal(value, before[name])


def test_nothing_to_correct_without_feeds(chain, tmp_path):
    folder, path, feeds = chain
    qdq = quantized(folder, path, feeds, [], "untouched.onnx")
    data = qdq.read_bytes()
    assert correct_biases(path, qdq, []) == {}
    assert qdq.read_bytes() == data
