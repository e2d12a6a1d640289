import math

import pytest
import torch

from gan_kernels import GANState, gan_


def test_fresh_state():
    state = GANState()
    assert math.isnan(state.exponent.item()) and state.step.item() == 0
    assert state.exponent.dtype == torch.float64 and state.step.dtype == torch.int64


def test_state_dict_round_trip():
    state = GANState()
    gan_([torch.randn(10, 10) * 1e-3], state)
    loaded = GANState()
    loaded.load_state_dict(state.state_dict())
    assert torch.equal(loaded.exponent, state.exponent) and torch.equal(loaded.step, state.step)
    snapshot = state.state_dict()
    gan_([torch.randn(10, 10) * 1e-3], state)
    assert snapshot["step"].item() == 1, "state_dict must hold copies"


def test_load_rejects_incomplete_or_shaped_values():
    with pytest.raises(KeyError, match="missing keys"):
        GANState().load_state_dict({"exponent": 0.5})
    with pytest.raises(ValueError, match="0-d"):
        GANState().load_state_dict({"exponent": torch.ones(2), "step": 1})


def test_updated_in_place_so_references_stay_valid():
    state = GANState()
    exponent, step = state.exponent, state.step
    gan_([torch.randn(10, 10) * 1e-3], state)
    assert state.exponent is exponent and state.step is step
    assert step.item() == 1 and not math.isnan(exponent.item())


def test_repr():
    assert repr(GANState()) == "GANState(exponent=nan, step=0)"
