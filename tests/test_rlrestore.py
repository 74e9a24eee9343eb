"""RL-Restore from the official TF1 checkpoints: wiring, export, both routing policies, bad weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, need_shared
from edgerestore.models import RLRestore, create_model
from edgerestore.models.rlrestore import STOP, TILE, TOOLS, load_test_set, official_psnr
from edgerestore.models.tf1_checkpoint import read_tf1_checkpoint, read_tf1_graph
from edgerestore.runtime import degrade, imageio, metrics
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.session import Session
from edgerestore.runtime.routemap import PALETTE
from edgerestore.runtime.tilelib import extract
from edgerestore.runtime.tiling import TileGrid

WEIGHTS = SHARED / "weights" / "rl_restore"
TEST_SETS = SHARED / "data" / "RLRestore_test"
SETS = ("mild", "moderate", "severe")


# ---------------------------------------------------------------------------- no shared data needed
def test_parameter_counts_match_the_checkpoint_shapes():
    # tools: 6 x 21,827 (small) + 6 x 50,851 (large); agent: the variables listed in test_tf1_checkpoint
    assert RLRestore().parameter_counts() == {"tools": 436_068, "agent": 87_863}


def test_plan_unrolls_three_agent_steps_with_a_thirteen_way_switch():
    split = RLRestore().stage_plan()
    assert [s.name for s in split.stages] == ["agent"] + [f"tool{k:02d}" for k in range(1, 13)]
    runs = [s for s in split.plan if s["op"] == "run"]
    switches = [s for s in split.plan if s["op"] == "switch"]
    assert [s["stage"] for s in runs] == ["agent"] * 3 and len(switches) == 3
    for switch in switches:
        assert switch["one_hot"] == "action" and len(switch["branches"]) == TOOLS + 1
        assert switch["branches"][STOP] == {"name": "stop", "stop": True, "steps": []}
        assert [b["steps"][0]["stage"] for b in switch["branches"][:TOOLS]] == [f"tool{k:02d}" for k in range(1, 13)]
    assert split.initial["action"]["shape"] == [TOOLS + 1]


def test_previous_action_feeds_only_the_tool_columns():
    """A stopped row never reaches the agent again, so the stop column must not matter."""
    torch.manual_seed(0)
    agent = RLRestore().agent.eval()
    x, h, c = torch.rand(2, 3, TILE, TILE), torch.randn(2, 50), torch.randn(2, 50)
    a = F.one_hot(torch.tensor([3, 7]), TOOLS + 1).float()
    with torch.no_grad():
        q1 = agent(x, a, h, c)[0]
        q2 = agent(x, a + F.one_hot(torch.tensor([STOP, STOP]), TOOLS + 1).float(), h, c)[0]
        q3 = agent(x, F.one_hot(torch.tensor([4, 7]), TOOLS + 1).float(), h, c)[0]
    assert torch.equal(q1, q2) and not torch.allclose(q1[0], q3[0])


# ---------------------------------------------------------------------------- the official weights
@pytest.fixture(scope="module")
def weights() -> Path:
    return need_shared(WEIGHTS / "toolbox")


@pytest.fixture(scope="module")
def model(weights):
    return create_model("rlrestore", weights=WEIGHTS)


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    from edgerestore.export import write_bundle

    out = tmp_path_factory.mktemp("bundles") / "rlrestore"
    write_bundle(model, "rlrestore", out)
    return out


def _run_tf_graph(nodes, variables, x: np.ndarray, output: str) -> np.ndarray:
    """Evaluate a tool's saved TF graph (NHWC) with torch ops, following its recorded inputs."""
    cache = {"Placeholder": torch.from_numpy(x)}

    def value(name: str) -> torch.Tensor:
        name = name.split(":")[0]
        if name not in cache:
            node = nodes[name]
            args = [value(i) for i in node.inputs if not i.startswith("^")]
            if node.op == "VariableV2":
                cache[name] = torch.from_numpy(variables[name])
            elif node.op == "Identity":
                cache[name] = args[0]
            elif node.op == "Conv2D":
                assert node.attrs["padding"] == "SAME" and node.attrs["strides"] == [1, 1, 1, 1]
                y = F.conv2d(args[0].permute(0, 3, 1, 2), args[1].permute(3, 2, 0, 1), padding="same")
                cache[name] = y.permute(0, 2, 3, 1)
            elif node.op == "BiasAdd":
                cache[name] = args[0] + args[1]
            elif node.op == "Relu":
                cache[name] = torch.relu(args[0])
            elif node.op == "AddN":
                cache[name] = sum(args)
            else:
                raise AssertionError(f"unexpected op {node.op} in the tool graph")
        return cache[name]

    return value(output).numpy()


@pytest.mark.parametrize("tool", range(TOOLS))
def test_tool_modules_compute_what_the_saved_graphs_compute(model, tool):
    """The residual wiring is only recorded in the .meta graph: run that graph, compare."""
    prefix = WEIGHTS / "toolbox" / f"tool{tool + 1:02d}"
    nodes = read_tf1_graph(prefix)
    assert nodes["Placeholder"].op == "Placeholder" and nodes["sum"].op == "AddN"  # what dqn/environment.py feeds/reads
    x = np.random.default_rng(tool).random((2, 40, 50, 3), dtype=np.float32)
    expected = _run_tf_graph(nodes, read_tf1_checkpoint(prefix), x, "sum")
    with torch.no_grad():
        got = model.tools[tool](torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_agent_wiring_matches_the_saved_graph(weights):
    nodes = read_tf1_graph(WEIGHTS / "models" / "model.meta")
    p = "prediction/"
    for layer in ("l1", "l2", "l3", "l4"):
        conv = nodes[p + f"{layer}/Conv2D"]
        assert conv.attrs["padding"] == "SAME" and conv.attrs["strides"] == [1, 2, 2, 1]
    # FC input: 16 max-pooled bins, row-major over a 4x4 grid (= NHWC flatten of a 4x4 map)
    bins = nodes[p + "concat"].inputs[:-1]
    assert nodes[p + "l7/MatMul"].inputs[0] == p + "concat" and len(bins) == 16
    for k, name in enumerate(bins):
        sliced = nodes[nodes[name].inputs[0]]
        fractions = []
        for stack in sliced.inputs[1:3]:  # begin, end: [batch, row, col, channel]
            for cast in nodes[stack].inputs[1:3]:
                rounding = nodes[nodes[cast].inputs[0]]
                fractions.append(float(nodes[nodes[rounding.inputs[0]].inputs[0]].attrs["value"]))
        i, j = divmod(k, 4)
        assert fractions == [i / 4, j / 4, (i + 1) / 4, (j + 1) / 4], name
    # LSTM input = [relu(l7), previous action]; cell kernel over [input, h]; gates i, j, f, o, forget bias 1
    assert nodes[p + "concat_1"].inputs[:2] == (p + "l7/Relu", p + "action_in")
    cell = p + "prediction_rnn/while/prediction_rnn/basic_lstm_cell/"
    assert nodes[cell + "basic_lstm_cell/concat"].inputs[1] == p + "prediction_rnn/while/Identity_3"
    assert nodes[cell + "add"].inputs[0].endswith("split:2")
    assert float(nodes[nodes[cell + "add"].inputs[1]].attrs["value"]) == 1.0
    assert nodes[cell + "Tanh"].inputs == (cell + "split:1",)
    assert nodes[cell + "Sigmoid_2"].inputs == (cell + "split:3",)
    assert nodes[p + "q/MatMul"].inputs[1] == p + "q/Matrix/read"


@pytest.mark.parametrize("name", SETS)
def test_official_sets_bundle_takes_the_pytorch_actions_and_improves(model, bundle, name):
    inputs, targets, _ = load_test_set(need_shared(TEST_SETS), name)
    nchw = inputs.transpose(0, 3, 1, 2).copy()
    out, actions, _ = model.route(torch.from_numpy(nchw))
    route = Session(bundle, backend="onnxruntime").run_rows({"image": nchw})
    decided = np.stack([route.decisions[f"step{i}"] for i in range(3)], 1)
    np.testing.assert_array_equal(decided, actions.numpy())
    np.testing.assert_allclose(route.image, out.numpy(), atol=1e-4)
    before = np.mean([official_psnr(a, b) for a, b in zip(inputs, targets)])
    after = np.mean([official_psnr(a, b) for a, b in zip(out.numpy().transpose(0, 2, 3, 1), targets)])
    assert after > before + 2.0, (name, before, after)


def _kodak(name: str) -> np.ndarray:
    path = need_shared(SHARED / "data" / "Kodak24" / f"{name}.png")
    return imageio.to_float(imageio.read_image(path)).astype(np.float64)


def _mixed(clean: np.ndarray) -> np.ndarray:
    """Left half strong noise, right half blur + JPEG."""
    half = clean.shape[1] // 2
    return np.concatenate([degrade.parse("gaussian:50").apply(clean)[:, :half],
                           degrade.parse("blur:2+jpeg:20").apply(clean)[:, half:]], 1)


def test_vote_policy_matches_pytorch_vote(model, bundle):
    """Every tile of an image takes the majority action (ties to the lower index) at each step."""
    image = _mixed(_kodak("kodim05")[:100, :160]).astype(np.float32)
    # a budget of 4 tiles: the image's tiles arrive in several chunks, the vote still takes them all
    route = Session(bundle, backend="onnxruntime", route_policy="vote", memory_budget=64).run(image, clip=False)
    tiles = extract(np.ascontiguousarray(image), route.grid)
    _, actions, _ = model.route(torch.from_numpy(tiles), vote=True)
    n = len(tiles)
    decided = np.stack([route.decisions.get(f"step{i}", np.full(n, -1)) for i in range(3)], 1)
    np.testing.assert_array_equal(decided, actions.numpy())
    assert all(len(set(column)) == 1 for column in decided.T)
    _, own, _ = model.route(torch.from_numpy(tiles))
    assert len(set(own[:, 0].tolist())) > 1, "the test needs tiles that disagree before the vote"


def test_mixed_image_per_tile_chains_beat_the_vote(bundle, run_cli, tmp_path):
    """Left half strong noise, right half blur + JPEG: per-tile chains restore both halves,
    one voted chain cannot; the route maps show it."""
    clean = _kodak("kodim01")[160:352, 224:544]
    half = clean.shape[1] // 2
    mixed = _mixed(clean)
    source = tmp_path / "mixed.png"
    imageio.write_image(source, imageio.from_float(mixed, 8))
    truth = imageio.from_float(clean, 8)
    psnr, first_branch = {}, {}
    for policy in ("tile", "vote"):
        result = run_cli("restore", bundle, source, "-o", tmp_path / f"{policy}.png", "--backend", "onnxruntime",
                         "--route-policy", policy, "--route-map", tmp_path / f"{policy}_map.png", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["gmac_per_image"] > 0
        psnr[policy] = metrics.psnr(imageio.read_image(tmp_path / f"{policy}.png").pixels, truth)
        first_branch[policy] = _first_branch_per_half(imageio.read_image(tmp_path / f"{policy}_map.png").pixels,
                                                      imageio.read_image(source).pixels, half)
    assert psnr["tile"] > psnr["vote"] + 0.5, psnr
    assert metrics.psnr(imageio.read_image(source).pixels, truth) < psnr["vote"]
    left, right = first_branch["tile"]
    assert left.most_common(1)[0][0] != right.most_common(1)[0][0], first_branch["tile"]
    voted_left, voted_right = first_branch["vote"]
    assert len(voted_left | voted_right) == 1, first_branch["vote"]


def _first_branch_per_half(picture: np.ndarray, image: np.ndarray, half: int):
    """Undo the map's gray blend at each tile cell's centre and match the branch colour."""
    from collections import Counter

    grid = TileGrid(*image.shape[:2], TILE, 20)
    gray = image.mean(axis=2)
    ys, xs = [*grid.origins_y, grid.height], [*grid.origins_x, grid.width]
    sides = (Counter(), Counter())
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            y, x = (ys[i] + ys[i + 1]) // 2 + 4, (xs[j] + xs[j + 1]) // 2  # below the label
            color = (picture[y, x].astype(float) - 0.45 * gray[y, x]) / 0.55
            branch = int(np.argmin([np.abs(color - np.array(p)).sum() for p in PALETTE]))
            sides[0 if xs[j] + TILE // 2 < half else 1][branch] += 1
    return sides


# ---------------------------------------------------------------------------- corrupt weights
@pytest.fixture()
def weights_copy(weights, tmp_path) -> Path:
    """The checkpoints without the (large, unused) .meta graphs, writable."""
    copy = tmp_path / "rl_restore"
    shutil.copytree(WEIGHTS, copy, ignore=shutil.ignore_patterns("*.meta"))
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def _export_fails(run_cli, weights: Path, out: Path, *patterns: str) -> None:
    result = run_cli("export", "rlrestore", "--weights", weights, "-o", out)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    assert not out.exists()


def test_truncated_data_file(weights_copy, run_cli, tmp_path):
    data = weights_copy / "toolbox" / "tool07.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    _export_fails(run_cli, weights_copy, tmp_path / "b", "tool07.data-00000-of-00001", "truncated")


def test_crc_mismatch(weights_copy, run_cli, tmp_path):
    data = weights_copy / "models" / "model.data-00000-of-00001"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 3] ^= 0x10
    data.write_bytes(bytes(blob))
    _export_fails(run_cli, weights_copy, tmp_path / "b", "model.data-00000-of-00001", "CRC mismatch")


@pytest.mark.parametrize("checkpoint, variable", [("toolbox/tool11", "conv2c/weights"),
                                                  ("toolbox/tool03", "conv1_2/weights"),
                                                  ("models/model", "prediction/prediction_rnn/basic_lstm_cell/kernel")])
def test_missing_variable(weights_copy, run_cli, tmp_path, checkpoint, variable):
    from test_tf1_checkpoint import _write_checkpoint

    prefix = weights_copy / checkpoint
    tensors = read_tf1_checkpoint(prefix)
    del tensors[variable]
    _write_checkpoint(prefix, tensors)
    _export_fails(run_cli, weights_copy, tmp_path / "b", prefix.name, variable)


def test_missing_tool_and_wrong_folder(weights_copy, run_cli, tmp_path):
    _export_fails(run_cli, weights_copy / "toolbox", tmp_path / "b", "not an RL-Restore weights folder")
    (weights_copy / "toolbox" / "tool12.index").unlink()
    _export_fails(run_cli, weights_copy, tmp_path / "b", "tool12.index", "not found")


def test_route_policy_is_checked():
    with pytest.raises(EdgeRestoreError, match="unknown route policy 'majority'"):
        Session("nonexistent", route_policy="majority")
