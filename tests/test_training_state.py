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
