"""Channel equalization of Conv-ReLU-Conv chains (calibration/equalize.py)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch

from edgerestore.calibration import equalize as eq
from edgerestore.calibration.bias_correction import session_with_outputs
from edgerestore.calibration.quantize import quantize_stage
from edgerestore.calibration.scales import cpu_session
from edgerestore.runtime.bundle import file_sha256
from edgerestore.runtime.errors import EdgeRestoreError
from test_bias_correction import ConvChain


class UnevenChain(ConvChain):
    """The bias-correction tests' Conv-ReLU-Conv-ReLU-Conv, with middle activations whose
    channel ranges span 100x."""

    def __init__(self):
        super().__init__()
        spread = torch.logspace(-1.5, 0.5, 16)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.mul_(spread[:, None, None, None])
                conv.bias.mul_(spread)


def export(module, path, inputs, outputs):
    torch.onnx.export(module.eval(), tuple(torch.rand(1, 3, 20, 20) for _ in inputs), str(path), input_names=inputs,
                      output_names=outputs, dynamic_axes={n: {0: "n", 2: "h", 3: "w"} for n in inputs + outputs}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("equalize")
    path = export(UnevenChain(), folder / "stage.onnx", ["x"], ["y"])
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.random((n, 3, 20, 20), dtype=np.float32)} for n in (3, 1, 4)]
    return folder, path, feeds


def middle_tensors(model):
    return [n.output[0] for n in model.graph.node if n.op_type == "Relu"]


def int8_output_error(path, feeds):
    """Mean squared error of the stage's symmetric INT8 version (min-max ranges) vs FP32."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Relu")]
    amax = {"x": 1.0}
    for batch in feeds:
        for name, value in zip(names, session_with_outputs(model, names).run(names, batch)):
            amax[name] = max(amax.get(name, 0.0), float(np.abs(value).max()))
    qdq = path.with_suffix(".int8.onnx")
    quantize_stage(path, qdq, amax, [], unsigned=False)  # one grid for every tensor: the effect of the ranges alone
    fp32, int8 = cpu_session(str(path)), cpu_session(str(qdq))
    return float(np.mean([np.mean((fp32.run(None, b)[0] - int8.run(None, b)[0]) ** 2) for b in feeds]))


def test_equalized_stage_computes_the_same_with_even_channel_ranges(chain, tmp_path):
    folder, original, feeds = chain
    path = shutil.copy(original, tmp_path / "stage.onnx")
    result = eq.equalize_stage(path, feeds)
    before, after = onnx.load(str(original)), onnx.load(str(path))
    assert [(p.first, p.second) for p in result.pairs] == [("/a/Conv", "/b/Conv"), ("/b/Conv", "/c/Conv")]
    assert 0 < result.max_rel_error <= 1e-5
    x = {"x": np.random.default_rng(5).random((2, 3, 33, 27), dtype=np.float32)}  # not a feed, another size
    np.testing.assert_allclose(cpu_session(str(path)).run(None, x)[0], cpu_session(str(original)).run(None, x)[0],
                               rtol=0, atol=1e-5)
    # channel c of each middle tensor is divided by its scale, and the spread of ranges shrinks
    old = eq.channel_ranges(before, middle_tensors(before), feeds)
    new = eq.channel_ranges(after, middle_tensors(after), feeds)
    for name in middle_tensors(before):
        np.testing.assert_allclose(new[name], old[name] / np.array(result.scales[name]), rtol=1e-4)
        assert new[name].max() / new[name].min() < (old[name].max() / old[name].min()) / 4
    assert int8_output_error(path, feeds) < int8_output_error(shutil.copy(original, tmp_path / "o.onnx"), feeds) / 2


def test_scales_follow_the_smoothquant_rule(chain):
    _, original, feeds = chain
    model = onnx.load(str(original))
    ranges = eq.channel_ranges(model, middle_tensors(model), feeds)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    result = eq.equalize(model, feeds, alpha=0.75)
    pair = result.pairs[0]
    w = np.abs(weights["b.weight"]).max(axis=(0, 2, 3))
    expected = ranges[pair.activation] ** 0.75 / w ** 0.25
    expected /= np.exp(np.log(expected).mean())
    np.testing.assert_allclose(result.scales[pair.activation], expected, rtol=1e-5)


@pytest.mark.parametrize("percentile", [50.0, 99.9, 100.0])
@pytest.mark.parametrize("mixed", [False, True], ids=["one-tile-size", "mixed-sizes"])
def test_channel_ranges_are_numpys_percentile_over_all_batches(chain, percentile, mixed):
    """Batches of one tile size count their values from the first batch; mixed sizes count
    them in a first pass. Either way, the exact percentile over every value."""
    _, original, feeds = chain
    if mixed:
        feeds = feeds + [{"x": np.random.default_rng(1).random((2, 3, 12, 28), dtype=np.float32)}]
    model = onnx.load(str(original))
    names = middle_tensors(model)
    got = eq.channel_ranges(model, names, feeds, percentile)
    values = session_with_outputs(model, names)
    for i, name in enumerate(names):
        per_batch = [np.moveaxis(np.abs(values.run([name], b)[0]), 1, 0).reshape(16, -1) for b in feeds]
        np.testing.assert_allclose(got[name], np.percentile(np.concatenate(per_batch, axis=1), percentile, axis=1),
                                   rtol=1e-6)


class Unequalizable(torch.nn.Module):
    """One chain that can be rescaled (m -> n) among four that cannot."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        conv = lambda i, o, g=1: torch.nn.Conv2d(i, o, 3, padding=1, groups=g)  # noqa: E731
        self.a, self.b, self.c = conv(3, 8), conv(8, 8), conv(8, 8)
        self.d, self.g = conv(8, 8), conv(8, 8, g=2)
        self.e, self.f = conv(8, 8), conv(8, 8)
        self.m, self.n = conv(8, 8), conv(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))  # read by two convolutions
        y = self.b(h) + self.c(h)
        w = self.g(torch.relu(self.d(y)))  # grouped reader
        v = torch.relu(self.e(w))  # a graph output
        u = self.f(v)
        u = self.e(torch.relu(u))  # e's weights are shared
        return self.n(torch.relu(self.m(u))), v


def test_pairs_skip_what_cannot_be_rescaled_exactly(tmp_path):
    model = onnx.load(str(export(Unequalizable(), tmp_path / "odd.onnx", ["x"], ["y", "v"])))
    assert [(p.first, p.second) for p in eq.equalizable_pairs(model)] == [("/m/Conv", "/n/Conv")]


def test_a_rewrite_that_changes_the_outputs_is_refused_and_not_written(chain, tmp_path, monkeypatch):
    _, original, feeds = chain
    path = shutil.copy(original, tmp_path / "stage.onnx")
    digest = file_sha256(path)
    real = eq.equalize

    def broken(model, feeds, alpha=eq.DEFAULT_ALPHA):
        result = real(model, feeds, alpha)
        bias = next(t for t in model.graph.initializer if t.name == "c.bias")
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.1, "c.bias"))
        return result

    monkeypatch.setattr(eq, "equalize", broken)
    with pytest.raises(EdgeRestoreError, match="changed its outputs"):
        eq.equalize_stage(path, feeds)
    assert file_sha256(path) == digest


def test_alpha_outside_zero_to_one_is_refused_before_any_work():
    from edgerestore.calibration import Int8Options

    with pytest.raises(EdgeRestoreError, match="alpha must be in"):
        Int8Options(calibration=[], equalize_alpha=1.5)
