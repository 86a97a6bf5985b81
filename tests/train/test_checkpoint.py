"""Checkpoint states carry no code: a planted pickle is refused, and nothing of it runs."""

import pickle
import random

import numpy as np
import pytest
import torch

from sdft.errors import StageError
from sdft.train.checkpoint import load_state, rng_state, set_rng_state


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what an attacker's pickle does when loaded without weights_only
        return (open, (str(self.marker), "w"))


def test_a_state_file_with_code_in_it_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    planted = tmp_path / "training_state.pt"
    with open(planted, "wb") as f:
        pickle.dump({"optimizer": _Payload(marker)}, f)
    with pytest.raises(StageError, match="training_state.pt: refusing to load it"):
        load_state(planted)
    assert not marker.exists()


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_state(tmp_path / "rng.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
