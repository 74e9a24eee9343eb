"""DeblurGAN-v2 (FPN-MobileNet, and the DSC variant): sizes, the official checkpoint layout
against an independent copy of the official architecture run as its predictor runs it
(train mode), export with per-image norm statistics, [-1, 1] range and zero padding in
the runtime, INT8, CLI."""

import functools
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.export import write_bundle
from edgerestore.models import DeblurGANv2, create_model
from edgerestore.runtime import backends
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.session import Session
from conftest import demo_int8_roundtrip
from test_int8_export import write_images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the official architecture (VITA-Group/DeblurGANv2 models/fpn_mobilenet.py, mobilenet_v2.py) --------
def conv_bn(inp, oup, stride):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class OfficialInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers = [] if expand_ratio == 1 else [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden),
                                               nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def official_features():
    features, channels = [conv_bn(3, 32, 2)], 32
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                       [6, 320, 1, 1]]:
        for i in range(n):
            features.append(OfficialInvertedResidual(channels, c, s if i == 0 else 1, t))
            channels = c
    features.append(nn.Sequential(nn.Conv2d(channels, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280),
                                  nn.ReLU6(inplace=True)))
    return nn.Sequential(*features)


class OfficialFPN(nn.Module):
    def __init__(self, norm_layer, num_filters=128):
        super().__init__()
        self.features = official_features()
        self.enc0 = nn.Sequential(*self.features[0:2])
        self.enc1 = nn.Sequential(*self.features[2:4])
        self.enc2 = nn.Sequential(*self.features[4:7])
        self.enc3 = nn.Sequential(*self.features[7:11])
        self.enc4 = nn.Sequential(*self.features[11:16])
        for k in (1, 2, 3):
            setattr(self, f"td{k}", nn.Sequential(nn.Conv2d(num_filters, num_filters, kernel_size=3, padding=1),
                                                  norm_layer(num_filters), nn.ReLU(inplace=True)))
        self.lateral4 = nn.Conv2d(160, num_filters, kernel_size=1, bias=False)
        self.lateral3 = nn.Conv2d(64, num_filters, kernel_size=1, bias=False)
        self.lateral2 = nn.Conv2d(32, num_filters, kernel_size=1, bias=False)
        self.lateral1 = nn.Conv2d(24, num_filters, kernel_size=1, bias=False)
        self.lateral0 = nn.Conv2d(16, num_filters // 2, kernel_size=1, bias=False)

    def forward(self, x):
        enc0 = self.enc0(x)
        enc1 = self.enc1(enc0)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        enc4 = self.enc4(enc3)
        map4 = self.lateral4(enc4)
        map3 = self.td1(self.lateral3(enc3) + F.interpolate(map4, scale_factor=2, mode="nearest"))
        map2 = self.td2(self.lateral2(enc2) + F.interpolate(map3, scale_factor=2, mode="nearest"))
        map1 = self.td3(self.lateral1(enc1) + F.interpolate(map2, scale_factor=2, mode="nearest"))
        return self.lateral0(enc0), map1, map2, map3, map4


class OfficialFPNHead(nn.Module):
    def __init__(self, num_in, num_mid, num_out):
        super().__init__()
        self.block0 = nn.Conv2d(num_in, num_mid, kernel_size=3, padding=1, bias=False)
        self.block1 = nn.Conv2d(num_mid, num_out, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        return F.relu(self.block1(F.relu(self.block0(x))))


class OfficialFPNMobileNet(nn.Module):
    def __init__(self, norm_layer, output_ch=3, num_filters=64, num_filters_fpn=128):
        super().__init__()
        self.fpn = OfficialFPN(norm_layer, num_filters=num_filters_fpn)
        for k in (1, 2, 3, 4):
            setattr(self, f"head{k}", OfficialFPNHead(num_filters_fpn, num_filters, num_filters))
        self.smooth = nn.Sequential(nn.Conv2d(4 * num_filters, num_filters, kernel_size=3, padding=1),
                                    norm_layer(num_filters), nn.ReLU())
        self.smooth2 = nn.Sequential(nn.Conv2d(num_filters, num_filters // 2, kernel_size=3, padding=1),
                                     norm_layer(num_filters // 2), nn.ReLU())
        self.final = nn.Conv2d(num_filters // 2, output_ch, kernel_size=3, padding=1)

    def forward(self, x):
        up = functools.partial(F.interpolate, mode="nearest")
        map0, map1, map2, map3, map4 = self.fpn(x)
        map4 = up(self.head4(map4), scale_factor=8)
        map3 = up(self.head3(map3), scale_factor=4)
        map2 = up(self.head2(map2), scale_factor=2)
        map1 = up(self.head1(map1), scale_factor=1)
        smoothed = up(self.smooth(torch.cat([map4, map3, map2, map1], dim=1)), scale_factor=2)
        smoothed = up(self.smooth2(smoothed + map0), scale_factor=2)
        return torch.clamp(torch.tanh(self.final(smoothed)) + x, min=-1, max=1)


def official_generator(seed: int = 0) -> nn.Module:
    """The official generator with random weights and running statistics."""
    torch.manual_seed(seed)
    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True)
    model = OfficialFPNMobileNet(norm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        model.final.weight.mul_(3)  # so the output is not ~x
    return model


def save_official(model: nn.Module, path) -> None:
    """As the official trainer saves it: ``{'model': DataParallel state_dict}``."""
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    model = official_generator()
    path = tmp_path_factory.mktemp("weights") / "fpn_mobilenet.h5"
    save_official(model, path)
    return model, path


def test_parameter_counts():
    # The FPN reads features[0:16]; the official checkpoint also holds the unused 16..18.
    assert DeblurGANv2().parameter_counts() == {"backbone": 1_017_792, "fpn": 1_088_835}
    assert DeblurGANv2(variant="mobilenet-dsc").parameter_counts() == {"backbone": 1_017_792, "fpn": 167_715}
    official_total = sum(p.numel() for p in OfficialFPNMobileNet(nn.InstanceNorm2d).parameters())
    assert official_total == 3_312_707


def test_official_checkpoint_loads_and_matches_the_official_predictor(official):
    reference, path = official
    model = create_model("deblurganv2", weights=path)
    assert model.config() == {"variant": "mobilenet", "width": 1.0, "filters": 64, "fpn_filters": 128}
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        ours = model(x)  # eval mode: per-image statistics anyway
        reference.train()  # as predict.py runs it (one image per call)
        expected = torch.cat([reference(x[i:i + 1]) for i in range(2)])
        reference.eval()  # running statistics: what an exporter that ignores train mode computes
        with_running_stats = reference(x)
    assert (ours - expected).abs().max() < 1e-4
    assert (ours - with_running_stats).abs().max() > 0.05


def test_export_keeps_instance_statistics(official, tmp_path):
    _, path = official
    model = create_model("deblurganv2", weights=path)
    report = write_bundle(model, "deblurganv2", tmp_path / "b")
    assert report.parity[0].max_abs_error <= 1e-4
    graph = onnx.load(tmp_path / "b" / "main.onnx").graph
    ops = {n.op_type for n in graph.node}
    assert "InstanceNormalization" in ops and "BatchNormalization" not in ops
    assert not [i.name for i in graph.initializer if "running" in i.name]
    # per image: a row's output does not depend on the other rows of the batch
    x = (np.random.default_rng(0).random((2, 3, 64, 64)) * 2 - 1).astype(np.float32)
    run = backends.load_stage("onnxruntime", tmp_path / "b" / "main.onnx")
    both = run({"input": x})["output"]
    alone = run({"input": x[1:]})["output"]
    assert np.abs(both[1:] - alone).max() < 1e-5
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["io"]["range"] == [-1.0, 1.0] and manifest["io"]["pad"] == "constant"
    assert manifest["io"]["size_multiple"] == 32 and manifest["tiling"]["whole"] is True


def test_runtime_maps_the_range_and_pads_with_zeros(tmp_path):
    torch.manual_seed(1)
    model = DeblurGANv2(variant="mobilenet-dsc", width=0.5, filters=16, fpn_filters=32).eval()
    write_bundle(model, "deblurganv2", tmp_path / "b")
    image = np.random.default_rng(1).random((50, 70, 3)).astype(np.float32)
    got = Session(tmp_path / "b", backend="onnxruntime").run(image, clip=False).image
    padded = np.zeros((64, 96, 3), np.float32)  # zeros in [-1, 1], as the official predictor pads
    padded[:50, :70] = image * 2 - 1
    with torch.no_grad():
        y = model(torch.from_numpy(padded).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(got - (y[:50, :70] + 1) / 2).max() < 1e-4


def test_int8_export_cli_restore_and_profile_of_the_demo(tmp_path, run_cli):
    images = write_images(tmp_path / "calib", 4, (64, 64, 3))
    bundle = tmp_path / "dg.bundle"
    demo_int8_roundtrip(run_cli, "deblurganv2", images, "motion:9", 64, bundle, images / "img1.png")
    assert Bundle(bundle).manifest["model"]["config"]["variant"] in ("mobilenet", "mobilenet-dsc")
