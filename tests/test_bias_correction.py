"""Empirical bias correction of a Q/DQ stage (calibration/bias_correction.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgerestore.calibration.bias_correction import channel_means, correct_biases, session_with_outputs
from edgerestore.calibration.quantize import compute_nodes, quantize_stage


class ConvChain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bias")
    path = folder / "stage.onnx"
    torch.onnx.export(ConvChain().eval(), torch.rand(1, 3, 24, 24), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.random((4, 3, 24, 24), dtype=np.float32)} for _ in range(3)]
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


@pytest.mark.parametrize("keep_last_fp32", [False, True], ids=["all-int8", "last-fp32"])
def test_correction_removes_the_mean_shift_of_every_convolution(chain, keep_last_fp32):
    folder, path, feeds = chain
    nodes = compute_nodes(path)
    qdq = quantized(folder, path, feeds, [nodes[-1]] if keep_last_fp32 else [], f"q{keep_last_fp32}.onnx")
    before = mean_error(path, qdq, feeds)
    shifts = correct_biases(path, qdq, feeds)
    after = mean_error(path, qdq, feeds)
    assert set(shifts) == set(before)  # every convolution, INT8 or kept in FP32
    assert max(before.values()) > 1e-3  # the coarse ranges did shift the means
    for name in before:
        # a quantized graph output is compared after its final Q/DQ, whose rounding stays
        bound = 0.25 if name == "y" and not keep_last_fp32 else 0.05
        assert after[name] <= bound * before[name] + 1e-5, (name, before[name], after[name])
    # the corrected graph is still a valid Q/DQ model with the same quantized tensors
    model = onnx.load(str(qdq))
    onnx.checker.check_model(model)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0


def test_nothing_to_correct_without_feeds(chain, tmp_path):
    folder, path, feeds = chain
    qdq = quantized(folder, path, feeds, [], "untouched.onnx")
    data = qdq.read_bytes()
    assert correct_biases(path, qdq, []) == {}
    assert qdq.read_bytes() == data
