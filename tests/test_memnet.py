"""MemNet: the published M6R6 size, export parity, tiled == whole, INT8, CLI, and the
supervised trainer's CLI (resumes, and its checkpoint imports)."""


import numpy as np
import pytest
import torch

from edgerestore.export import write_bundle
from edgerestore.models import MemNet, create_model, load_checkpoint
from edgerestore.runtime.session import Session
from conftest import demo_int8_roundtrip
from test_int8_export import write_images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_published_size():
    model = MemNet()  # M6R6, 64 channels
    assert model.layers == 80
    assert model.parameter_counts()["conv"] == 676_992  # the paper's 677k
    assert model.receptive_field == 149


@pytest.fixture(scope="module")
def memnet_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = MemNet(features=8, blocks=2, recursions=2)
    with torch.no_grad():  # non-trivial statistics and reconstructions
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.weights.copy_(torch.tensor([0.3, 0.7]))
    model.eval()
    out = tmp_path_factory.mktemp("bundles") / "memnet_small"
    report = write_bundle(model, "memnet", out)
    return model, out, report


def test_export_parity_and_tiles_equal_the_whole_image(memnet_bundle):
    model, out, report = memnet_bundle
    assert report.parity[0].max_abs_error <= 1e-4
    image = np.random.default_rng(0).random((90, 110, 1)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    for session in (Session(out, backend="onnxruntime", tile=64), Session(out, backend="onnxruntime", whole=True)):
        assert np.abs(session.run(image, clip=False).image - expected).max() < 1e-4


def test_int8_export_cli_restore_and_profile_of_the_demo(tmp_path, run_cli):
    images = write_images(tmp_path / "calib", 4, (64, 64))
    bundle = tmp_path / "memnet.bundle"
    demo_int8_roundtrip(run_cli, "memnet", images, "gaussian:25", 64, bundle, images / "img0.png")


def test_trainer_cli_resumes_and_its_checkpoint_imports(tmp_path, run_cli):
    data = write_images(tmp_path / "train", 2, (48, 48))
    ckpt = tmp_path / "memnet.pth"
    args = ["train", "memnet", "--data", data, "-o", ckpt, "--batch", "2", "--patch", "32", "--features", "4",
            "--blocks", "1", "--recursions", "2", "--fp16-weights"]
    assert run_cli(*args, "--steps", "2").exit_code == 0
    result = run_cli(*args, "--steps", "3")  # continues from the state file's step 2
    assert result.exit_code == 0, result.output
    meta = load_checkpoint(ckpt).meta
    assert meta["train"]["steps"] == 3 and meta["fp16_weights"] is True
    assert torch.load(ckpt, weights_only=True)["state_dict"]["memory.0.conv1.weight"].dtype == torch.float16
    model = create_model("memnet", weights=ckpt)
    assert model.config() == {"channels": 1, "features": 4, "blocks": 1, "recursions": 2}
    changed = run_cli(*args[:-1], "--steps", "4", "--lr", "0.1")  # other settings: refuse to mix runs
    assert changed.exit_code == 1 and "other settings" in changed.stderr
