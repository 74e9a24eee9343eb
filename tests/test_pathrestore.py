"""Path-Restore: architecture, per-branch export, and the routed runtime."""

import json
import shutil

import numpy as np
import pytest
import torch

from edgerestore.models import PathRestore, create_model, save_checkpoint
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.executor import RoutePolicy
from edgerestore.runtime.session import Session
from edgerestore.runtime.tilelib import extract


def test_parameter_counts_match_the_paper():
    assert PathRestore().parameter_counts() == {"trunk": 889_795, "pathfinder": 29_534}


@pytest.fixture(scope="module")
def image():
    """Structured content (a gradient, a bright noisy patch) so tiles differ."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:170] / 170.0
    img = np.stack([x, y, x * y], axis=2) + rng.normal(0, 0.02, (150, 170, 3))
    img[40:110, 90:160] += rng.normal(0.3, 0.3, (70, 70, 3))
    return img.astype(np.float32)


def mixed_router(model: PathRestore, image: np.ndarray) -> PathRestore:
    """Random weights route every tile the same way; sharpen the router and centre its
    first decision on these tiles so the runtime really has to split batches."""
    from edgerestore.runtime.tiling import TileGrid

    torch.manual_seed(3)
    with torch.no_grad():
        model.pathfinder.logits.weight.normal_(0, 3.0)
        model.pathfinder.logits.bias.zero_()
        tiles = torch.from_numpy(extract(image, TileGrid(*image.shape[:2], 63, 10)))
        zeros = torch.zeros(len(tiles), model.units)
        logits = model.pathfinder(model.head(tiles), zeros, zeros)[0]
        margin = (logits[:, 1] - logits[:, 0]).sort().values
        middle = len(margin) // 2  # halfway between two tiles: no tile sits on the 0.5 threshold
        model.pathfinder.logits.bias[1] -= (margin[middle - 1] + margin[middle]) / 2
    return model.eval()


@pytest.fixture(scope="module")
def routed(tmp_path_factory, image):
    from edgerestore.export import write_bundle

    torch.manual_seed(0)
    model = mixed_router(PathRestore(features=16), image)
    out = tmp_path_factory.mktemp("bundles") / "pathrestore_small"
    write_bundle(model, "pathrestore", out)
    return model, out


def torch_route(model, tiles, min_confidence=0.5):
    with torch.no_grad():
        out, actions, _ = model.route(torch.from_numpy(tiles), min_confidence=min_confidence)
    return out.numpy(), actions.numpy()


def decisions_of(result):
    return np.stack([result.decisions[f"block{i}"] for i in range(6)], 1)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_bundle_reproduces_pytorch_decisions_and_pixels(routed, image, backend):
    model, bundle = routed
    route = Session(bundle, backend=backend).run(image, clip=False)
    tiles = extract(image, route.grid)
    expected_tiles, actions = torch_route(model, tiles)
    decisions = decisions_of(route)
    assert any(0 < actions[:, i].mean() < 1 for i in range(6)), "test needs a block with mixed routing"
    assert (decisions == actions).mean() == 1.0
    from edgerestore.runtime.tilelib import merge

    np.testing.assert_allclose(route.image, merge(expected_tiles, route.grid), atol=1e-4)


def test_branches_run_only_on_their_tiles(routed, image):
    _, bundle = routed
    session = Session(bundle, backend="onnxruntime")
    calls = {}
    session.stage_hooks.append(lambda stage, rows, feeds, outs, s: calls.setdefault(stage, []).append(len(rows)))
    route = session.run(image)
    decisions = decisions_of(route)
    n = len(decisions)
    for i in range(6):
        assert sum(calls[f"block{i}.shared"]) == n
        assert sum(calls.get(f"block{i}.branch", [])) == (decisions[:, i] == 1).sum()
    assert sum(calls["pathfinder"]) == 6 * n
    # executed MACs follow the decisions exactly
    stages = Bundle(bundle).stages
    branch = stages["block0.branch"].macs_per_call
    expected_saving = (decisions == 0).sum() * branch
    full = route.full_macs * n
    assert np.isclose(full - route.macs.sum(), expected_saving)


def test_min_confidence_dial(routed, image):
    model, bundle = routed
    shares = []
    for c in (0.0, 0.3, 0.5, 0.7, 1.0):
        session = Session(bundle, backend="onnxruntime", min_confidence=c)
        route = session.run(image)
        shares.append(route.cheap_share(session.bundle.plan))
        tiles = extract(image, route.grid)
        assert (decisions_of(route) == torch_route(model, tiles, c)[1]).all()
    assert shares[0] == 1.0 and shares[-1] == 0.0
    assert all(a >= b for a, b in zip(shares, shares[1:]))
    with pytest.raises(EdgeRestoreError, match="min-confidence"):
        RoutePolicy(1.5)


def test_route_map_and_mac_report(routed, run_cli, tmp_path):
    import cv2

    _, bundle = routed
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), (np.random.default_rng(1).random((140, 160, 3)) * 255).astype(np.uint8))
    result = run_cli("restore", bundle, source, "-o", tmp_path / "out.png", "--route-map", tmp_path / "map.png",
                     "--backend", "onnxruntime", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert 0 < report["gmac_per_image"] < report["full_path_gmac_per_image"]
    assert 0 < report["bypass_share"] < 1
    assert cv2.imread(str(tmp_path / "map.png")).shape == (140, 160, 3)


def test_fixed_tiles_refuse_whole_and_other_tile_sizes(routed, image):
    _, bundle = routed
    with pytest.raises(EdgeRestoreError, match="fixed 63x63"):
        Session(bundle, backend="onnxruntime", whole=True)
    with pytest.raises(EdgeRestoreError, match="only runs on 63x63"):
        Session(bundle, backend="onnxruntime", tile=64)
    with pytest.raises(EdgeRestoreError, match="smaller than the 63x63 tile"):
        Session(bundle, backend="onnxruntime").run(image[:50])


def _edit_manifest(bundle, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_router_stage_missing(routed, tmp_path):
    bundle = _edit_manifest(routed[1], tmp_path, lambda m, d: m["stages"].pop("pathfinder"))
    with pytest.raises(EdgeRestoreError, match=r"manifest.json: plan\[1\]\.stage: unknown stage 'pathfinder'"):
        Bundle(bundle)


def test_branch_file_missing(routed, tmp_path):
    bundle = _edit_manifest(routed[1], tmp_path, lambda m, d: (d / "block3.branch.onnx").unlink())
    with pytest.raises(EdgeRestoreError, match="block3.branch.onnx' is missing"):
        Bundle(bundle)


def test_plan_referencing_an_unknown_stage(routed, tmp_path):
    def edit(manifest, _):
        manifest["plan"][3]["branches"][1]["steps"][0]["stage"] = "block9.branch"

    bundle = _edit_manifest(routed[1], tmp_path, edit)
    with pytest.raises(EdgeRestoreError, match="block9.branch"):
        Bundle(bundle)


def test_switch_with_wrong_branch_count(routed, tmp_path, image):
    def edit(manifest, _):
        manifest["plan"][3]["branches"].append({"name": "extra", "steps": []})

    bundle = _edit_manifest(routed[1], tmp_path, edit)
    with pytest.raises(EdgeRestoreError, match="3 branches but its router gives 2 logits"):
        Session(bundle, backend="onnxruntime").run(image)


def test_checkpoint_of_another_architecture(tmp_path, run_cli):
    from edgerestore.models import DnCNN

    dncnn = DnCNN(channels=3, depth=5)
    for path, save in [(tmp_path / "own.pth", lambda p: save_checkpoint(p, dncnn.state_dict(), "dncnn", dncnn.config())),
                       (tmp_path / "plain.pth", lambda p: torch.save(dncnn.state_dict(), p))]:
        save(path)
        result = run_cli("export", "pathrestore", "--weights", path, "-o", tmp_path / "b")
        assert result.exit_code == 1 and result.stderr.startswith("error: ")
        assert "dncnn" in result.stderr or "does not fit" in result.stderr
        assert not (tmp_path / "b").exists()


def test_training_runs_and_resumes(tmp_path):
    import cv2

    from edgerestore.models.train.pathrestore import TrainConfig, train

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(data / f"{i}.png"), (rng.random((80, 90, 3)) * 255).astype(np.uint8))
    out = tmp_path / "pr.pth"
    config = TrainConfig(data=str(data), output=str(out), stage1_steps=2, stage2_steps=0, batch=2, save_every=1)
    train(config)
    steps = []
    config.stage2_steps = 2
    train(config, progress=lambda s: steps.append((s["step"], s["stage"])))
    assert steps == [(3, 2), (4, 2)], "the second run resumes at step 3, in stage II"
    model = create_model("pathrestore", weights=out)
    assert model.parameter_counts()["pathfinder"] == 29_534
    # The state is read with weights_only=True: a swapped one with code in it is refused, unrun.
    from test_training_state import Payload

    state_file = out.with_name(out.name + ".state")
    state = torch.load(state_file, weights_only=True)
    marker = tmp_path / "ran"
    torch.save({**state, "data_rng": Payload(marker)}, state_file)
    config.stage2_steps = 3
    with pytest.raises(EdgeRestoreError, match="cannot resume"):
        train(config)
    assert not marker.exists()


def test_train_command_writes_a_checkpoint_and_logs_without_a_terminal(tmp_path, run_cli):
    import cv2

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        cv2.imwrite(str(data / f"{i}.png"), (rng.random((70, 70, 3)) * 255).astype(np.uint8))
    out = tmp_path / "pr.pth"
    result = run_cli("train", "pathrestore", "--data", data, "-o", out, "--stage1-steps", "1", "--stage2-steps", "1",
                     "--batch", "2", "--samples", "2")
    assert result.exit_code == 0, result.output
    assert "step 2/2" in result.stderr and "stage 2" in result.stderr
    assert create_model("pathrestore", weights=out).provenance["checkpoint_kind"] == "edgerestore"


def test_reinforce_rewards_complex_blocks_only_where_they_pay():
    """Tiles where the complex path beats the bypass path by more than the penalty learn to
    take it; tiles where it gains nothing learn to bypass."""
    import torch

    from edgerestore.models.train.pathrestore import SCALE, reinforce_loss

    torch.manual_seed(0)
    tiles, samples, blocks = 128, 4, 6
    n = tiles * samples
    logits = torch.zeros(n, blocks, 2, requires_grad=True)
    dist = torch.distributions.Categorical(logits=logits)
    actions = dist.sample()
    hard = (torch.arange(n) // samples) < tiles // 2  # consecutive rows: one tile's paths
    mse_in = torch.where(hard, 400.0, 25.0) / SCALE
    bypass = torch.where(hard, 100.0, 5.0) / SCALE
    # each complex block removes 3 units of MSE on a hard tile, nothing on an easy one
    mse_out = bypass - torch.where(hard, 3.0, 0.0) * actions.sum(1) / SCALE
    loss = reinforce_loss(actions, list(dist.log_prob(actions).unbind(1)), list(dist.entropy().unbind(1)),
                          mse_in, mse_out, samples, penalty=0.5, entropy_weight=0.0)
    loss.backward()
    push_complex = -(logits.grad[..., 1] - logits.grad[..., 0])  # gradient descent direction
    assert push_complex[hard].mean() > 0 > push_complex[~hard].mean()
