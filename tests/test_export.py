import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import KAIR, need_shared
from edgerestore.models import DnCNN, create_model, save_checkpoint
from edgerestore.runtime import backends
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError


def test_kair_export_manifest(kair_bundle):
    manifest = json.loads((kair_bundle / "manifest.json").read_text())
    assert manifest["model"] == {"name": "dncnn", "arch": "dncnn", "config": {"channels": 1, "depth": 17, "features": 64}}
    assert manifest["io"]["range"] == [0.0, 1.0] and manifest["io"]["layout"] == "NCHW"
    assert manifest["receptive_field"] == 35
    assert manifest["tiling"]["halo"] == 17 and manifest["tiling"]["overlap"] == 2 * (17 + 5)
    assert manifest["precisions"] == ["fp32"]
    prov = manifest["provenance"]
    assert len(prov["weights_sha256"]) == 64 and prov["checkpoint_kind"] == "state_dict"
    assert prov["parity"][0]["max_abs_error"] < 1e-4 and prov["parity"][0]["psnr_db"] > 80
    graph = onnx.load(kair_bundle / "main.onnx").graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    assert not list(kair_bundle.parent.glob(".*tmp*")), "temporary export directory left behind"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_backends_match_pytorch(kair_bundle, backend):
    model = create_model("dncnn", weights=need_shared(KAIR))
    x = torch.rand(3, 1, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    runner = backends.load_stage(backend, Bundle(kair_bundle).stage_path("main", "fp32"))
    got = runner({"input": x.numpy()})["output"]
    assert np.abs(got - expected).max() < 1e-4


class CsznDnCNN(nn.Module):
    """The original layout: conv+ReLU, (conv no bias, BN, ReLU) x (depth-2), conv no bias."""

    def __init__(self, channels, depth, features=16, eps=1e-4):
        super().__init__()
        layers = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features, eps=eps), nn.ReLU()]
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.dncnn(x)


def test_batch_norm_is_folded_with_the_checkpoint_eps(tmp_path):
    torch.manual_seed(0)
    reference = CsznDnCNN(channels=3, depth=6)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(1e-4, 1e-3)  # small variances make eps matter
            m.weight.data.uniform_(0.5, 1.5)
    reference.eval()
    path = tmp_path / "whole_module.pth"
    torch.save(reference, path)  # a pickled whole module, like the legacy files
    model = create_model("dncnn", weights=path)
    assert model.config() == {"channels": 3, "depth": 6, "features": 16}
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_depth_and_channels_come_from_the_checkpoint(tmp_path):
    source = DnCNN(channels=3, depth=20, features=32)
    path = tmp_path / "color20.pth"
    torch.save({"params": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = create_model("dncnn", weights=path)
    assert model.config() == {"channels": 3, "depth": 20, "features": 32}
    assert model.receptive_field == 41


def test_own_checkpoint_round_trip_and_wrong_architecture(tmp_path):
    source = DnCNN(channels=1, depth=5, features=8)
    path = tmp_path / "own.pth"
    save_checkpoint(path, source.state_dict(), arch="dncnn", config=source.config())
    model = create_model("dncnn", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    save_checkpoint(path, source.state_dict(), arch="pathrestore", config={})
    with pytest.raises(EdgeRestoreError, match="'pathrestore' model, not 'dncnn'"):
        create_model("dncnn", weights=path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, path)
    with pytest.raises(EdgeRestoreError, match="does not look like DnCNN"):
        create_model("dncnn", weights=path)
