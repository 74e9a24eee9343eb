"""Training resume reads its state file with ``torch.load(weights_only=True)`` only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgerestore.models.train.state import load_state, pack_numpy_rng, save_state, unpack_numpy_rng
from edgerestore.runtime.errors import EdgeRestoreError


class Payload:
    """What a swapped state file could hold: unpickling it would touch ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_numpy_rng_state_round_trips_through_a_safe_load(tmp_path):
    rng = np.random.RandomState(7)
    rng.standard_normal(3)  # a cached gaussian in the state, too
    path = tmp_path / "x.state"
    save_state(path, {"data_rng": pack_numpy_rng(rng), "step": 3})
    expected = rng.standard_normal(5), rng.randint(1 << 30, size=4)
    state = torch.load(path, weights_only=True)  # what a resume does: no pickled code allowed
    resumed = np.random.RandomState(0)
    unpack_numpy_rng(resumed, state["data_rng"])
    got = resumed.standard_normal(5), resumed.randint(1 << 30, size=4)
    assert np.array_equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])


def test_a_state_file_with_code_in_it_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.state"
    torch.save({"step": 1, "x": Payload(marker)}, path)
    with pytest.raises(EdgeRestoreError, match="cannot resume from .*delete it to start over"):
        load_state(path)
    assert not marker.exists()


def test_pathrestore_training_resumes_from_a_safe_state_and_refuses_a_swapped_one(tmp_path):
    import cv2

    from edgerestore.models.train.pathrestore import TrainConfig, train

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(data / f"{i}.png"), (rng.random((70, 70, 3)) * 255).astype(np.uint8))
    out = tmp_path / "pr.pth"
    config = TrainConfig(data=str(data), output=str(out), stage1_steps=2, stage2_steps=0, batch=2, save_every=1)
    train(config)
    state_file = out.with_name(out.name + ".state")
    state = torch.load(state_file, weights_only=True)
    assert state["step"] == 2
    marker = tmp_path / "ran"
    torch.save({**state, "data_rng": Payload(marker)}, state_file)
    config.stage2_steps = 1
    with pytest.raises(EdgeRestoreError, match="cannot resume"):
        train(config)
    assert not marker.exists()
