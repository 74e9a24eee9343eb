"""RL-Restore (Yu et al., CVPR 2018): an agent picks, per 63x63 patch and step, one of 12
small restoration CNNs ("tools") or stop; at most 3 steps.

Built from the authors' TensorFlow-1 checkpoints (github.com/yuke93/RL-Restore, MIT):
``toolbox/toolNN`` (12 tools) and ``models/model`` (the agent), read without TensorFlow by
:mod:`.tf1_checkpoint`. The layer wiring below is the one recorded in the checkpoints'
``.meta`` graphs (read with :func:`.tf1_checkpoint.read_tf1_graph`; tests check it), not a
guess from variable names:

* small tool (01, 02, 05, 06, 09, 10): ``sum = x + conv3(relu(conv2(relu(conv1(x)))))``,
  9x9 3->32, 5x5 32->16, 5x5 16->3;
* large tool (03, 04, 07, 08, 11, 12): ``a = conv1_2(relu(conv1(x)))`` (5x5 3->64, 1x1 64->32,
  no activation); ``s2 = a + conv2a(relu(conv2(relu(a))))``; ``s3 = s2 + conv2d(relu(conv2c(relu(s2))))``
  (3x3 32->32 each); ``sum = x + conv3(relu(conv2_2(s3)))`` (1x1 32->64, 5x5 64->3);
* agent (``prediction/*``): four stride-2 SAME convs + ReLU (9x9 3->32, 5x5 32->24, 5x5 24->24,
  5x5 24->24), a 4x4 grid of max-pool bins (NHWC order; on 63x63 patches the map is 4x4, so
  it equals the plain flatten of dqn/agent.py), FC 384->32 + ReLU, concat the previous action's
  one-hot (12, zeros at step 0), BasicLSTMCell(50), FC 50->13 Q-values (12 tools + stop).

All tensors are RGB in [0, 1], NCHW here (the TF graphs are NHWC). The test rule of
dqn/agent.py ``predict_test``: argmax Q per patch; a stopped patch stays stopped; the one-hot
of the previous tool feeds the next step; LSTM state per patch starts at zero.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel, StageGraph, StagePlan, TensorSpec, Tiling
from .checkpoint import Checkpoint, load_checkpoint
from .pathrestore import LSTMCell, same_pad
from .tf1_checkpoint import read_tf1_checkpoint, require, tf_conv_to_torch, tf_dense_to_torch

TILE = 63
TOOLS = 12
STOP = TOOLS  # action index of "stop" (the 13th Q-value)
STEPS = 3
# Tools pad with zeros at every tile edge. 63/20 tiles (stride 43) keep 5 pixels next to an
# inner edge out of the merge; on kodim01 half noisy / half blurred + JPEG, per-tile chains
# scored 23.13 dB against 22.98 dB with Path-Restore's 63/10 tiles (benchmarks/rlrestore_eval.py).
TILE_OVERLAP = 20
# The official toolbox layout: which tools are the larger residual CNNs (also read from the files).
OFFICIAL_KINDS = ("small", "small", "large", "large") * 3

_SMALL_LAYERS = {"conv1": (9, 3, 32), "conv2": (5, 32, 16), "conv3": (5, 16, 3)}
_LARGE_LAYERS = {"conv1": (5, 3, 64), "conv1_2": (1, 64, 32), "conv2": (3, 32, 32), "conv2a": (3, 32, 32),
                 "conv2c": (3, 32, 32), "conv2d": (3, 32, 32), "conv2_2": (1, 32, 64), "conv3": (5, 64, 3)}
_AGENT_CONVS = {"l1": (9, 3, 32), "l2": (5, 32, 24), "l3": (5, 24, 24), "l4": (5, 24, 24)}


def _conv(layers: dict[str, tuple[int, int, int]]) -> nn.ModuleDict:
    # Stride-1 SAME with odd kernels pads symmetrically: plain Conv2d padding matches TF.
    return nn.ModuleDict({name: nn.Conv2d(cin, cout, k, padding=k // 2) for name, (k, cin, cout) in layers.items()})


class SmallTool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = _conv(_SMALL_LAYERS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return x + c["conv3"](F.relu(c["conv2"](F.relu(c["conv1"](x)))))


class LargeTool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = _conv(_LARGE_LAYERS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        a = c["conv1_2"](F.relu(c["conv1"](x)))
        s2 = a + c["conv2a"](F.relu(c["conv2"](F.relu(a))))  # tf 'sum2'
        s3 = s2 + c["conv2d"](F.relu(c["conv2c"](F.relu(s2))))  # tf 'sum3'
        return x + c["conv3"](F.relu(c["conv2_2"](s3)))  # tf 'sum'


TOOL_CLASSES = {"small": SmallTool, "large": LargeTool}
TOOL_LAYERS = {"small": _SMALL_LAYERS, "large": _LARGE_LAYERS}


class Agent(nn.Module):
    """One decision step: image + previous action one-hot + LSTM state -> Q-values + new state.

    ``action`` has one column per switch branch (12 tools + stop); rows that chose stop have
    left the plan, so only the 12 tool columns feed the LSTM, as in dqn/agent.py ``action_in``.
    """

    def __init__(self, units: int = 50, fc: int = 32):
        super().__init__()
        self.units = units
        self.convs = nn.ModuleDict({name: nn.Conv2d(cin, cout, k, stride=2)
                                    for name, (k, cin, cout) in _AGENT_CONVS.items()})
        self.fc = nn.Linear(24 * 4 * 4, fc)
        self.lstm = LSTMCell(fc + TOOLS, units)
        self.q = nn.Linear(units, TOOLS + 1)

    def forward(self, image: torch.Tensor, action: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        y = image
        for conv in self.convs.values():
            y = F.relu(conv(same_pad(y, conv.kernel_size[0], 2)))
        # The saved graph max-pools a 4x4 grid of bins (NHWC order) before the FC layer; a
        # 63x63 patch (the only size the agent sees) leaves a 4x4 map, one pixel per bin.
        y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)
        y = F.relu(self.fc(y))
        h, c = self.lstm(torch.cat([y, action[:, :TOOLS]], dim=1), h, c)
        return self.q(h), h, c


class RLRestore(RestorationModel):
    arch = "rlrestore"

    def __init__(self, tool_kinds: list[str] | tuple[str, ...] = OFFICIAL_KINDS, units: int = 50, steps: int = STEPS):
        super().__init__()
        if len(tool_kinds) != TOOLS or not set(tool_kinds) <= set(TOOL_CLASSES):
            raise EdgeRestoreError(f"rlrestore needs {TOOLS} tools of kinds {sorted(TOOL_CLASSES)}, "
                                   f"got {list(tool_kinds)}")
        self.channels, self.units, self.steps = 3, units, steps
        self.tool_kinds = tuple(tool_kinds)
        self.tools = nn.ModuleList(TOOL_CLASSES[kind]() for kind in self.tool_kinds)
        self.agent = Agent(units)

    # -- reference inference ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]

    @torch.no_grad()
    def route(self, x: torch.Tensor, vote: bool = False):
        """Run the toolchain on 63x63 patches ``x`` (N, 3, 63, 63).

        ``vote=False``: each patch follows its own argmax (official synthetic-set test).
        ``vote=True``: all patches take the majority action at each step, ties to the lower
        index (``np.bincount(actions).argmax()`` of dqn/agent.py ``predict_mine``).
        Returns the output, the actions (N, steps; 12 = stop, -1 = stopped earlier) and the
        Q-values (N, steps, 13; NaN where not reached).
        """
        n = x.shape[0]
        h = x.new_zeros(n, self.units)
        c = x.new_zeros(n, self.units)
        action = x.new_zeros(n, TOOLS + 1)
        active = torch.ones(n, dtype=torch.bool)
        actions = torch.full((n, self.steps), -1, dtype=torch.long)
        qs = torch.full((n, self.steps, TOOLS + 1), float("nan"))
        for step in range(self.steps):
            rows = active.nonzero()[:, 0]
            if not len(rows):
                break
            q, h[rows], c[rows] = self.agent(x[rows], action[rows], h[rows], c[rows])
            choice = q.argmax(1)
            if vote:
                choice = torch.full_like(choice, int(np.bincount(choice.numpy()).argmax()))
            qs[rows, step], actions[rows, step] = q, choice
            action[rows] = F.one_hot(choice, TOOLS + 1).to(x.dtype)
            x = x.clone()
            for tool in choice.unique().tolist():
                if tool != STOP:
                    picked = rows[choice == tool]
                    x[picked] = self.tools[tool](x[picked])
            active[rows[choice == STOP]] = False
        return x, actions, qs

    # -- descriptor -------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        # Every tool sees 17x17: 9+5+5 (small) or 5+1+4*3+1+5 (large) minus the shared centres.
        return 1 + self.steps * 16

    def default_tiling(self) -> Tiling:
        # 63x63 patches, as the agent was trained on (its FC layer fixes the size).
        return Tiling(tile=TILE, overlap=TILE_OVERLAP, halo=self.receptive_field // 2, ramp=5, fixed=True)

    def config(self) -> dict[str, Any]:
        return {"tool_kinds": list(self.tool_kinds), "units": self.units, "steps": self.steps}

    def parameter_counts(self) -> dict[str, int]:
        agent = sum(p.numel() for p in self.agent.parameters())
        return {"tools": sum(p.numel() for p in self.tools.parameters()), "agent": agent}

    def stage_plan(self) -> StagePlan:
        image = TensorSpec("image", (3, None, None), "image")
        image_out = TensorSpec("image_out", (3, None, None), "image")
        patch = TensorSpec("image", (3, TILE, TILE), "image")
        state = lambda name: TensorSpec(name, (self.units,), "state")  # noqa: E731
        stages = [StageGraph("agent", self.agent,
                             [patch, TensorSpec("action", (TOOLS + 1,), "state"), state("h"), state("c")],
                             [TensorSpec("q", (TOOLS + 1,), "logits"), state("h_out"), state("c_out")],
                             macs_per_call=_agent_macs(self.agent, TILE))]
        for k, tool in enumerate(self.tools):
            stages.append(StageGraph(_tool_name(k), tool, [image], [image_out], macs_per_pixel=_conv_macs(tool)))
        branches = [{"name": _tool_name(k), "label": str(k + 1), "steps": [
            {"op": "run", "stage": _tool_name(k), "in": {"image": "image"}, "out": {"image_out": "image"}}]}
            for k in range(TOOLS)]
        branches.append({"name": "stop", "stop": True, "steps": []})
        plan: list[dict[str, Any]] = []
        for step in range(self.steps):
            plan += [
                {"op": "run", "stage": "agent", "in": {"image": "image", "action": "action", "h": "h", "c": "c"},
                 "out": {"q": "q", "h_out": "h", "c_out": "c"}},
                # one_hot: the switch writes the chosen branch as a one-hot row into 'action',
                # the agent's previous-action input at the next step.
                {"op": "switch", "name": f"step{step}", "logits": "q", "one_hot": "action", "branches": branches},
            ]
        initial = {"action": {"shape": [TOOLS + 1], "value": 0.0},
                   "h": {"shape": [self.units], "value": 0.0}, "c": {"shape": [self.units], "value": 0.0}}
        return StagePlan(stages, plan, initial)

    # -- checkpoints ------------------------------------------------------------------------
    @classmethod
    def read_checkpoint(cls, path: str | Path) -> Checkpoint:
        """The official folder (``toolbox/`` + ``models/``) or an edgerestore checkpoint file."""
        path = Path(path)
        if not path.is_dir():
            return load_checkpoint(path)
        return read_official(path)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        kinds = ["large" if f"tools.{k}.conv.conv1_2.weight" in state_dict else "small" for k in range(TOOLS)]
        return {"tool_kinds": kinds}


def _tool_name(k: int) -> str:
    return f"tool{k + 1:02d}"


def read_official(root: Path) -> Checkpoint:
    """Map the official TF1 checkpoints onto :class:`RLRestore`'s state_dict names."""
    toolbox, agent_dir = root / "toolbox", root / "models"
    for folder in (toolbox, agent_dir):
        if not folder.is_dir():
            raise EdgeRestoreError(f"{root}: not an RL-Restore weights folder (no '{folder.name}/' "
                                   "with the TF1 checkpoints)")
    state: dict[str, torch.Tensor] = {}
    digest = hashlib.sha256()
    for k in range(TOOLS):
        prefix = toolbox / _tool_name(k)
        tensors = read_tf1_checkpoint(prefix)
        # Any large-only layer makes it a large tool, so a missing variable is named as such.
        kind = "large" if {name.split("/")[0] for name in tensors} - set(_SMALL_LAYERS) else "small"
        layers = TOOL_LAYERS[kind]
        _require(prefix, tensors, [f"{name}/{part}" for name in layers for part in ("weights", "biases")])
        for name in layers:
            state[f"tools.{k}.conv.{name}.weight"] = _tensor(tf_conv_to_torch(tensors[f"{name}/weights"]))
            state[f"tools.{k}.conv.{name}.bias"] = _tensor(tensors[f"{name}/biases"])
        _digest(digest, prefix, tensors)
    prefix = agent_dir / "model"
    # The folder's 'checkpoint' file names the agent checkpoint, as tf.train.Saver reads it.
    tensors = read_tf1_checkpoint(agent_dir if (agent_dir / "checkpoint").is_file() else prefix)
    p = "prediction/"
    lstm = p + "prediction_rnn/basic_lstm_cell/"
    _require(prefix, tensors, [p + f"{n}/{part}" for n in _AGENT_CONVS for part in ("w", "biases")]
             + [p + "l7/Matrix", p + "l7/bias", lstm + "kernel", lstm + "bias", p + "q/Matrix", p + "q/bias"])
    for name in _AGENT_CONVS:
        state[f"agent.convs.{name}.weight"] = _tensor(tf_conv_to_torch(tensors[p + f"{name}/w"]))
        state[f"agent.convs.{name}.bias"] = _tensor(tensors[p + f"{name}/biases"])
    # TF dense kernels are [in, out]; the LSTM kernel's rows are [fc 32, action 12, h 50] and its
    # columns the gates i, j, f, o -- the order LSTMCell splits them in.
    for ours, theirs in (("fc", "l7/Matrix"), ("q", "q/Matrix")):
        state[f"agent.{ours}.weight"] = _tensor(tf_dense_to_torch(tensors[p + theirs]))
    state["agent.fc.bias"] = _tensor(tensors[p + "l7/bias"])
    state["agent.q.bias"] = _tensor(tensors[p + "q/bias"])
    state["agent.lstm.kernel.weight"] = _tensor(tf_dense_to_torch(tensors[lstm + "kernel"]))
    state["agent.lstm.kernel.bias"] = _tensor(tensors[lstm + "bias"])
    _digest(digest, prefix, tensors)
    return Checkpoint(state, kind="tf1", meta={"source": "RL-Restore TF1 checkpoints"}, sha256=digest.hexdigest())


def _require(prefix: Path, tensors: dict, names: list[str]) -> None:
    try:
        require(tensors, names)
    except EdgeRestoreError as err:
        raise EdgeRestoreError(f"{prefix}: {err}") from None


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _digest(digest, prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """Fingerprint of the weights actually read (names + bytes), for the bundle's provenance."""
    digest.update(prefix.name.encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())


def _conv_macs(module: nn.Module) -> float:
    return float(sum(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                     for m in module.modules() if isinstance(m, nn.Conv2d)))


def _agent_macs(agent: Agent, tile: int) -> float:
    total, size = 0, tile
    for conv in agent.convs.values():
        size = -(-size // 2)
        total += conv.in_channels * conv.out_channels * conv.kernel_size[0] ** 2 * size * size
    for linear in (agent.fc, agent.lstm.kernel, agent.q):
        total += linear.in_features * linear.out_features
    return float(total)


# -- the official synthetic test protocol (dqn/environment.py, dqn/utils.py) -----------------
def load_test_set(root: str | Path, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``root/{name}_in`` and ``root/{name}_gt`` as the official test does it: both folders
    listed and sorted, paired by position (file names differ, e.g. ``1.png``/``1_gt.png``),
    ``cv2.imread(...) / 255``, then ``data_reformat``: BGR -> RGB and H/W swapped, because
    the tools were trained on MATLAB-written (column-major) HDF5 patches.

    Returns float32 inputs and targets (N, 63, 63, 3) in that swapped RGB layout, and the
    input names. :func:`from_test_layout` undoes the swap for saving.
    """
    import cv2

    root = Path(root)
    folders = [root / f"{name}_in", root / f"{name}_gt"]
    for folder in folders:
        if not folder.is_dir():
            raise EdgeRestoreError(f"RL-Restore test set '{name}': folder '{folder}' not found")
    files = [sorted(p for p in folder.iterdir() if p.is_file()) for folder in folders]
    if len(files[0]) != len(files[1]) or not files[0]:
        raise EdgeRestoreError(f"RL-Restore test set '{name}': {len(files[0])} inputs but {len(files[1])} "
                               "ground-truth images")
    planes = []
    for group in files:
        images = []
        for path in group:
            pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if pixels is None or pixels.shape != (TILE, TILE, 3):
                raise EdgeRestoreError(f"'{path}': not a readable {TILE}x{TILE} color image")
            images.append(pixels)
        planes.append(np.stack(images).astype(np.float32) / 255.0)
    inputs, targets = (to_test_layout(p[..., ::-1]) for p in planes)  # imread gives BGR
    return inputs, targets, [p.stem for p in files[0]]


def to_test_layout(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB -> the layout the tools were trained in (H and W swapped)."""
    return np.ascontiguousarray(rgb.swapaxes(1, 2))


from_test_layout = to_test_layout  # a transpose is its own inverse


def official_psnr(output: np.ndarray, target: np.ndarray) -> float:
    """dqn/utils.py ``psnr_cal``: float images, no clipping or rounding, MSE + 1e-10."""
    mse = float(np.mean((np.asarray(output, np.float64) - np.asarray(target, np.float64)) ** 2))
    return 10.0 * np.log10(1.0 / (mse + 1e-10))
