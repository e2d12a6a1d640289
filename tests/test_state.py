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


@pytest.mark.parametrize("values,error,message", [
    ({"exponent": 0.5}, KeyError, "missing keys"),
    ({"exponent": torch.ones(2), "step": 1}, ValueError, "0-d"),
    ({"exponent": 0.5, "step": torch.ones(2, dtype=torch.int64)}, ValueError, "0-d"),
    ({"exponent": 0.5, "step": 1.5}, TypeError, "'step' must be an integer"),
    ({"exponent": "half", "step": 1}, TypeError, "'exponent' must be a number"),
])
def test_load_rejects_bad_values_and_changes_nothing(values, error, message):
    state = GANState()
    state.load_state_dict({"exponent": 0.25, "step": 3})
    with pytest.raises(error, match=message):
        state.load_state_dict(values)
    assert state.exponent.item() == 0.25 and state.step.item() == 3


def test_load_copies_into_the_states_own_tensors():
    """A wrap view, a captured graph or a compiled step holds the state's tensors: a load must
    reach them."""
    exponent, step = torch.tensor(math.nan, dtype=torch.float64), torch.tensor(0)
    state = GANState.wrap(exponent, step)
    state.load_state_dict({"exponent": torch.tensor(0.5, dtype=torch.float32), "step": 7})
    assert state.exponent is exponent and state.step is step
    assert exponent.item() == 0.5 and step.item() == 7
    assert exponent.dtype == torch.float64 and step.dtype == torch.int64


def test_updated_in_place_so_references_stay_valid():
    state = GANState()
    exponent, step = state.exponent, state.step
    gan_([torch.randn(10, 10) * 1e-3], state)
    assert state.exponent is exponent and state.step is step
    assert step.item() == 1 and not math.isnan(exponent.item())


def test_repr():
    assert repr(GANState()) == "GANState(exponent=nan, step=0)"


def test_repr_never_reads_a_device_tensor():
    """Reading a value off an accelerator would synchronise with it: meta tensors have no value to
    read at all, so a repr that reads one raises."""
    assert repr(GANState(device="meta")) == "GANState(device=meta)"
