"""Learned weight rounding (calibration/adaround.py) and its path into the Q/DQ file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgerestore.calibration.adaround import _error, _Grams, eligible, grid_scale, round_stage
from edgerestore.calibration.bias_correction import session_with_outputs
from edgerestore.calibration.quantize import quantize_stage
from test_bias_correction import export_chain
from test_int8_export import weight_integers

QMAX = 64  # the default 7-bit grid


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaround")
    path, feeds = export_chain(folder / "stage.onnx", 2, 8)
    model = onnx.load(str(path))
    names = ["x"] + [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Relu")]
    values = session_with_outputs(model, names[1:]).run(names[1:], feeds[0])
    amax = {"x": 1.0, **{n: float(np.abs(v).max()) for n, v in zip(names[1:], values)}}
    return folder, path, feeds, amax, round_stage(path, feeds, amax, QMAX)


def weights_of(path):
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: init[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def test_error_is_the_output_error_the_gram_matrices_stand_for():
    """The quadratic form equals the summed squared output error computed directly."""
    rng = np.random.default_rng(1)
    x = rng.random((200, 12)).astype(np.float32)
    xq = np.round(x * 8) / 8
    w, w2 = rng.standard_normal((5, 12)), rng.standard_normal((5, 12))
    grams = _Grams(12)
    grams.add(x, xq, np.zeros(200, bool))
    direct = ((xq @ w2.T - x @ w.T) ** 2).sum()
    # The Gram products are float32 sums of 200 positive-definite terms: each within 200 float32
    # roundings (200 * 6e-8 = 1.2e-5) of exact; the form's terms then add without cancellation
    # this large (w2 and w are unrelated, the error is of the order of the terms).
    assert float(_error(torch.from_numpy(w2), torch.from_numpy(w), [torch.from_numpy(g) for g in grams.fit])) == \
        pytest.approx(direct, rel=1.2e-5)


def test_learned_rounding_is_up_or_down_and_keeps_the_grid(stage):
    folder, path, feeds, amax, rounding = stage
    original = weights_of(path)
    assert [layer.node for layer in rounding.layers] == [n.name for n in eligible(onnx.load(str(path)), amax)]
    assert rounding.weights, "no layer's learned rounding beat nearest rounding on held-out patches"
    for node, on_grid in rounding.weights.items():
        w = original[node]
        scale = grid_scale(w, QMAX).reshape(-1, 1, 1, 1)
        integers = on_grid / scale
        np.testing.assert_allclose(integers, np.round(integers), atol=1e-4)  # on the grid
        assert np.all(np.abs(integers - w / scale) < 1 + 1e-4)  # each weight rounded up or down
        # each channel's largest weight stays at the end of the grid, so the quantizer's scale is unchanged
        np.testing.assert_allclose(np.abs(integers).reshape(len(w), -1).max(1), QMAX, atol=1e-4)
        np.testing.assert_allclose(grid_scale(on_grid, QMAX), grid_scale(w, QMAX), rtol=1e-6)


def test_learned_rounding_beats_nearest_on_held_out_patches(stage):
    """The 16 -> 16 convolution: the learned rounding's held-out output error is lower."""
    _, path, _, _, rounding = stage
    middle = [layer for layer in rounding.layers if layer.node == onnx.load(str(path)).graph.node[2].name]
    assert middle and middle[0].kept and middle[0].learned < middle[0].nearest, rounding.to_json()
    for layer in rounding.layers:
        assert layer.kept == (layer.learned < layer.nearest)


def test_qdq_file_holds_the_learned_integers_except_for_fp32_layers(stage):
    folder, path, feeds, amax, rounding = stage
    learned = sorted(rounding.weights)
    fp32_node = learned[0]
    out = folder / "q.onnx"
    quantize_stage(path, out, amax, [fp32_node], 7, rounding.weights)
    model = onnx.load(str(out))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    original = weights_of(path)
    integers = weight_integers(model)
    assert fp32_node not in integers
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if node.name == fp32_node:
            np.testing.assert_array_equal(init[node.input[1]], original[node.name])  # FP32: untouched
        elif node.name in rounding.weights:
            expected = rounding.weights[node.name] / grid_scale(original[node.name], QMAX).reshape(-1, 1, 1, 1)
            np.testing.assert_array_equal(integers[node.name], np.round(expected).astype(np.int8))
