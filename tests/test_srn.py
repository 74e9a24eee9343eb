"""SRN-DeblurNet: published sizes, TF1 resize semantics, one-scale-step export with the
host-side loop (== the PyTorch model), official TF1 checkpoint import, INT8, CLI."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgerestore.export import write_bundle
from edgerestore.models import SRN, create_model
from edgerestore.models.srn import resize_bilinear as torch_resize
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.resize import resize_bilinear
from edgerestore.runtime.session import Session
from conftest import demo_int8_roundtrip
from test_int8_export import write_images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_parameter_counts_of_the_published_variants():
    # Published (Tao et al.): ~6.8M parameters for the color model.
    assert SRN(channels=3, lstm=False).parameter_counts() == {"encoder-decoder": 6_881_251}
    # The per-channel model with the ConvLSTM (the official 'lstm' checkpoint): 1.18M more.
    assert SRN(channels=1, lstm=True).parameter_counts() == {"encoder-decoder": 6_876_449, "convlstm": 1_180_160}


@pytest.mark.parametrize("size", [(12, 20), (48, 80), (7, 9), (5, 33)])
def test_resize_is_onnx_asymmetric_linear(size):
    """The runtime's host resize and the model's torch twin both equal ONNX Resize
    linear/asymmetric (TF1's legacy bilinear), down and up, even and odd sizes."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((2, 3, 24, 40)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="asymmetric")
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                                                 helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x, "sizes": np.array([2, 3, *size], np.int64)})[0]
    # float32 coordinate arithmetic differs in the last bits between implementations
    assert np.abs(resize_bilinear(x, *size) - expected).max() < 1e-5
    assert np.abs(torch_resize(torch.from_numpy(x), *size).numpy() - expected).max() < 1e-5
    if size == (12, 20):  # x0.5 without anti-aliasing: every other pixel
        assert np.array_equal(resize_bilinear(x, *size), x[..., ::2, ::2])


def small_srn(channels=3, lstm=True, seed=0):
    torch.manual_seed(seed)
    model = SRN(channels=channels, lstm=lstm, widths=(8, 12, 16)).eval()
    with torch.no_grad():  # larger weights than the default init: a step that does something
        for p in model.parameters():
            p.mul_(1.5)
    return model


@pytest.fixture(scope="module")
def srn_bundle(tmp_path_factory):
    model = small_srn()
    out = tmp_path_factory.mktemp("bundles") / "srn_small"
    report = write_bundle(model, "srn", out)
    return model, out, report


def test_export_is_one_scale_step_with_explicit_state(srn_bundle):
    _, out, report = srn_bundle
    assert [p.stage for p in report.parity] == ["scale"] and report.parity[0].max_abs_error <= 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    stage = manifest["stages"]["scale"]
    assert [i["name"] for i in stage["inputs"]] == ["blur", "pred", "state"]
    assert [o["name"] for o in stage["outputs"]] == ["pred_out", "state_out"]
    assert stage["inputs"][2]["divisor"] == 4
    loop = manifest["plan"][1]
    assert loop["op"] == "loop" and loop["values"] == [0.25, 0.5, 1.0]
    assert [s["op"] for s in loop["body"]] == ["resize", "resize", "resize", "run"]
    assert manifest["io"]["output"] == "pred" and manifest["io"]["size_multiple"] == 16
    assert manifest["tiling"]["whole"] is True
    graph = onnx.load(out / "scale.onnx").graph
    dims = [d.dim_param or d.dim_value for d in graph.input[2].type.tensor_type.shape.dim]
    assert dims == ["batch", 32, "height", "width"]  # state: 2 x 16 LSTM units, its own dynamic size


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_host_loop_equals_the_pytorch_model(srn_bundle, backend):
    model, out, _ = srn_bundle
    image = np.random.default_rng(1).random((40, 72, 3)).astype(np.float32)  # padded to 48x80
    session = Session(out, backend=backend)
    assert session.whole  # the bundle's default
    route = session.run(image, clip=False)
    got = route.image
    padded = np.pad(image, ((0, 8), (0, 8), (0, 0)), mode="reflect")
    with torch.no_grad():
        expected = model(torch.from_numpy(padded).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()[:40, :72]
    assert np.abs(expected - image).max() > 0.1  # the model changes the image ...
    assert np.abs(got - expected).max() < 1e-4  # ... and the bundle's plan does exactly that
    # executed compute: the scale stage at 1/16, 1/4 and 1 of the padded image
    macs = Bundle(out).stages["scale"].macs_per_pixel * 48 * 80 * (1 / 16 + 1 / 4 + 1)
    assert route.macs[0] == pytest.approx(macs) and route.full_macs == pytest.approx(macs)


def test_per_channel_variant_restores_each_plane(tmp_path):
    model = small_srn(channels=1, lstm=True, seed=2)
    write_bundle(model, "srn", tmp_path / "b")
    image = np.random.default_rng(2).random((32, 48, 3)).astype(np.float32)
    got = Session(tmp_path / "b", backend="onnxruntime").run(image, clip=False).image
    with torch.no_grad():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[:, None])[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() < 1e-4


def write_official_checkpoint(folder, source) -> None:
    """``source``'s weights as the official trainer saves them: a TF1 checkpoint folder with
    the variable names of the official ``models/model.py`` (TF layouts)."""
    from edgerestore.models.srn_tf1 import _CONVS, _RESBLOCKS, _TRANSPOSED
    from test_tf1_checkpoint import _write_checkpoint

    sd = {k: v.numpy() for k, v in source.state_dict().items()}
    to_tf = lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # noqa: E731 - [out,in,kh,kw] -> [kh,kw,in,out]
    tensors = {}
    for tf_name, ours in _CONVS.items():
        tensors[f"g_net/{tf_name}/weights"] = to_tf(sd[f"net.{ours}.weight"])
        tensors[f"g_net/{tf_name}/biases"] = sd[f"net.{ours}.bias"]
    for tf_name, ours in _TRANSPOSED.items():  # conv2d_transpose: [kh, kw, out, in]
        tensors[f"g_net/{tf_name}/weights"] = np.ascontiguousarray(sd[f"net.{ours}.weight"].transpose(2, 3, 1, 0))
        tensors[f"g_net/{tf_name}/biases"] = sd[f"net.{ours}.bias"]
    for tf_name, (stage, index) in _RESBLOCKS.items():
        for conv in ("conv1", "conv2"):
            tensors[f"g_net/{tf_name}/{conv}/weights"] = to_tf(sd[f"net.{stage}.blocks.{index}.{conv}.weight"])
            tensors[f"g_net/{tf_name}/{conv}/biases"] = sd[f"net.{stage}.blocks.{index}.{conv}.bias"]
    if source.lstm:
        tensors["g_net/convLSTM/LSTM_conv/weights"] = to_tf(sd["net.lstm.conv.weight"])
        tensors["g_net/convLSTM/LSTM_conv/biases"] = sd["net.lstm.conv.bias"]
    assert "g_net/enc1_2/conv1/weights" in tensors and "g_net/dec3_3/conv2/biases" in tensors  # official names
    folder.mkdir(parents=True)
    _write_checkpoint(folder / "deblur.model-523000", tensors)
    (folder / "checkpoint").write_text('model_checkpoint_path: "deblur.model-523000"\n')


def test_official_tf1_checkpoint_imports(tmp_path):
    """A checkpoint written with the official variable names (TF layouts) loads, and its
    variant (per-channel + ConvLSTM) and widths come from the file."""
    source = small_srn(channels=1, lstm=True, seed=3)
    folder = tmp_path / "lstm"
    write_official_checkpoint(folder, source)
    model = create_model("srn", weights=folder)
    assert model.config() == {"channels": 1, "lstm": True, "widths": [8, 12, 16], "levels": 3}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_int8_export_cli_restore_and_profile_of_the_demo(tmp_path, run_cli):
    images = write_images(tmp_path / "calib", 4, (48, 64, 3))
    bundle = tmp_path / "srn.bundle"
    demo_int8_roundtrip(run_cli, "srn", images, "motion:9", 48, bundle, images / "img0.png", "--precision", "int8")
    assert Bundle(bundle).manifest["provenance"]["weights"].endswith("srn_demo.pth")
