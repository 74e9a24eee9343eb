"""SRN-DeblurNet's official TensorFlow-1 checkpoints -> :class:`~.srn.SRN` state_dict.

The authors' checkpoints (``checkpoints/{color,lstm,gray}/deblur.model-523000.*``) hold the
slim variables of ``models/model.py``: ``g_net/enc1_1/{weights,biases}``, the ResBlocks
``g_net/enc1_2/conv1/...`` .. ``g_net/dec1_1/conv2/...``, the transposed convolutions
``g_net/dec2_4``, ``g_net/dec1_4`` and, for the ``lstm`` model, the ConvLSTM's
``.../LSTM_conv/{weights,biases}``. Read with :mod:`.tf1_checkpoint` (no TensorFlow).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from edgerestore.runtime.errors import EdgeRestoreError

from .checkpoint import Checkpoint
from .tf1_checkpoint import read_tf1_checkpoint, tf_conv_to_torch

SCOPE = "g_net/"
# TF scope of each ResBlock -> (our stage, block index); the decoder counts down in TF.
_RESBLOCKS = {f"{side}{level}_{k}": (f"{side}{level}", i)
              for side, order in (("enc", (2, 3, 4)), ("dec", (3, 2, 1)))
              for level in (1, 2, 3) for i, k in enumerate(order)}
_CONVS = {"enc1_1": "enc1_1", "enc2_1": "enc2_1.conv", "enc3_1": "enc3_1.conv", "dec1_0": "dec1_0"}
_TRANSPOSED = {"dec2_4": "dec2_4", "dec1_4": "dec1_4"}


def is_tf1_checkpoint(path: Path) -> bool:
    """A folder with a ``checkpoint`` file, or a prefix with a ``.index`` beside it."""
    if path.is_dir():
        return (path / "checkpoint").is_file()
    return path.suffix == ".index" or path.with_name(path.name + ".index").is_file()


def read_official(path: Path) -> Checkpoint:
    tensors = read_tf1_checkpoint(path)
    state: dict[str, torch.Tensor] = {}

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise EdgeRestoreError(f"{path}: not an SRN-DeblurNet checkpoint: variable '{name}' is missing")
        return tensors[name]

    for tf_name, ours in _CONVS.items():
        state[f"net.{ours}.weight"] = _tensor(tf_conv_to_torch(take(f"{SCOPE}{tf_name}/weights")))
        state[f"net.{ours}.bias"] = _tensor(take(f"{SCOPE}{tf_name}/biases"))
    for tf_name, ours in _TRANSPOSED.items():
        # conv2d_transpose kernels are [kh, kw, out, in]; ConvTranspose2d wants [in, out, kh, kw]
        state[f"net.{ours}.weight"] = _tensor(np.transpose(take(f"{SCOPE}{tf_name}/weights"), (3, 2, 0, 1)))
        state[f"net.{ours}.bias"] = _tensor(take(f"{SCOPE}{tf_name}/biases"))
    for tf_name, (stage, index) in _RESBLOCKS.items():
        for conv in ("conv1", "conv2"):
            prefix = f"net.{stage}.blocks.{index}.{conv}"
            state[f"{prefix}.weight"] = _tensor(tf_conv_to_torch(take(f"{SCOPE}{tf_name}/{conv}/weights")))
            state[f"{prefix}.bias"] = _tensor(take(f"{SCOPE}{tf_name}/{conv}/biases"))
    lstm = sorted(name for name in tensors if name.endswith("LSTM_conv/weights"))
    if len(lstm) > 1:
        raise EdgeRestoreError(f"{path}: more than one ConvLSTM ({', '.join(lstm)})")
    if lstm:
        base = lstm[0].removesuffix("weights")
        state["net.lstm.conv.weight"] = _tensor(tf_conv_to_torch(tensors[lstm[0]]))
        state["net.lstm.conv.bias"] = _tensor(take(base + "biases"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return Checkpoint(state, kind="tf1", meta={"source": "SRN-DeblurNet TF1 checkpoint"}, sha256=digest.hexdigest())


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
