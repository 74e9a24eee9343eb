"""The INT8 MAC share counts each layer's output positions, not only its weights."""

import pytest
import torch

from edgerestore.calibration.macs import PROBE, int8_mac_share, layer_macs
from edgerestore.calibration.quantize import compute_nodes


class Strided(torch.nn.Module):
    """A stride-2 3x3 conv, a 1x1 conv, then a linear layer on the flattened map."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mix = torch.nn.Conv2d(8, 4, 1)
        self.head = torch.nn.Linear(4 * (PROBE // 2) ** 2, 10)

    def forward(self, x):
        return self.head(self.mix(self.down(x)).flatten(1))


class OneStage:
    """What layer_macs reads of a bundle: the FP32 file of each stage."""

    def __init__(self, path):
        self.path = path

    def stage_path(self, stage, precision):
        return self.path


def test_macs_follow_strides_and_matmuls(tmp_path):
    path = tmp_path / "strided.onnx"
    # fixed width, dynamic batch and height: the probe fills the unknown axes
    torch.onnx.export(Strided().eval(), torch.rand(1, 3, PROBE, PROBE), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    bundle = OneStage(path)
    layers = [("main", node) for node in compute_nodes(path)]
    macs = list(layer_macs(bundle, layers).values())
    half = (PROBE // 2) ** 2
    assert macs == [8 * 3 * 9 * half, 4 * 8 * half, 4 * half * 10]
    assert int8_mac_share(bundle, layers, [layers[0]]) == pytest.approx(sum(macs[1:]) / sum(macs), rel=1e-12)
    assert int8_mac_share(bundle, layers, layers) == 0.0
