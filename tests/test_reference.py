"""The reference against hand-computed cases (docs/method.md)."""

import math

import pytest
import torch

from gan_kernels import GANState, reference
from tests.helpers import check_steps_against_exact, random_grads


def test_gan_mode_by_hand():
    g = torch.tensor([[1.0, 2.0], [3.0, 6.0]]) * 0.01  # mean 0.03, deviations 0.01 * [-2, -1, 0, 3]
    state = GANState()
    stats = reference.gan_([g], state)
    sigma = 0.01 * math.sqrt(14 / 3)
    p = 1 / -math.log(sigma)
    assert stats.global_std.item() == pytest.approx(sigma, rel=1e-6)
    assert state.exponent.item() == pytest.approx(p, rel=1e-6)
    alpha = sigma**p
    assert stats.alpha.item() == pytest.approx(alpha, rel=1e-6)
    expected = torch.tensor([[-2.0, -1.0], [0.0, 3.0]]) * 0.01 * alpha
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(stats.means, torch.tensor([0.03]))
    torch.testing.assert_close(stats.stds, torch.tensor([sigma]))
    assert not stats.nonfinite
    assert state.step.item() == 1


def test_global_std_pools_all_tensors():
    a = torch.tensor([1.0, 3.0])  # mean 2, M2 2
    b = torch.tensor([10.0, 10.0, 16.0])  # mean 12, M2 24
    stats = reference.gan_([a, b], mode="center")
    assert stats.global_std.item() == pytest.approx(math.sqrt(26 / 4))
    torch.testing.assert_close(stats.means, torch.tensor([2.0, 12.0]))
    torch.testing.assert_close(stats.stds, torch.tensor([math.sqrt(2.0), math.sqrt(12.0)]))
    assert stats.alpha.item() == 1.0
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(b, torch.tensor([-2.0, -2.0, 4.0]))


def test_gc_removes_one_mean_per_row():
    """Gradient Centralization (Yong et al. 2020): the mean over all dimensions but the first, one
    per output channel; the statistics stay whole-tensor ones."""
    w = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 8.0]]])  # rows: means 4 and 2
    column = torch.tensor([[2.0], [6.0]])  # rows of one element
    flat = torch.tensor([1.0, 2.0, 6.0])  # every element is a row
    stats = reference.gan_([w, column, flat], mode="gc")
    torch.testing.assert_close(w, torch.tensor([[[-3.0, -1.0], [1.0, 3.0]], [[-2.0, -2.0], [-2.0, 6.0]]]))
    assert torch.equal(column, torch.zeros(2, 1)) and torch.equal(flat, torch.zeros(3))
    torch.testing.assert_close(stats.means, torch.tensor([3.0, 4.0, 3.0]))
    assert stats.alpha.item() == 1.0
    whole_m2 = 76.0 + 8.0 + 14.0  # about each whole tensor's mean
    assert stats.global_std.item() == pytest.approx(math.sqrt(whole_m2 / 12))


def test_center_removes_the_whole_tensor_mean():
    w = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    stats = reference.gan_([w], mode="center")
    torch.testing.assert_close(w, torch.tensor([[-3.0, -1.0], [1.0, 3.0]]))
    assert stats.alpha.item() == 1.0


def test_znorm_divides_by_each_std():
    a = torch.tensor([1.0, 3.0])
    b = torch.tensor([10.0, 10.0, 16.0])
    stats = reference.gan_([a, b], mode="znorm")
    assert stats.alpha.item() == 1.0
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0]) / math.sqrt(2.0))
    torch.testing.assert_close(b, torch.tensor([-2.0, -2.0, 4.0]) / math.sqrt(12.0))


def test_exponent_set_once_then_reused():
    state = GANState()
    reference.gan_([torch.tensor([0.0, 0.02])], state)  # sigma = 0.01 * sqrt(2)
    p = 1 / -math.log(0.01 * math.sqrt(2))
    assert state.exponent.item() == pytest.approx(p)
    g = torch.tensor([0.0, 0.002])  # sigma ten times smaller: the exponent stays
    stats = reference.gan_([g], state)
    assert state.exponent.item() == pytest.approx(p)
    assert stats.alpha.item() == pytest.approx((0.001 * math.sqrt(2)) ** p, rel=1e-6)
    assert state.step.item() == 2


def test_empty_list():
    state = GANState()
    stats = reference.gan_([], state)
    assert stats.means.shape == stats.stds.shape == (0,)
    assert stats.alpha.item() == 1.0 and stats.global_std.item() == 0.0
    assert not stats.nonfinite
    assert math.isnan(state.exponent.item())


def test_zero_size_and_one_element_tensors():
    empty, single, pair = torch.zeros(0, 3), torch.tensor([[5.0]]), torch.tensor([1.0, 2.0])
    stats = reference.gan_([empty, single, pair], mode="center")
    assert empty.shape == (0, 3)
    assert single.item() == 0.0
    torch.testing.assert_close(stats.means, torch.tensor([0.0, 5.0, 1.5]))
    torch.testing.assert_close(stats.stds, torch.tensor([0.0, 0.0, math.sqrt(0.5)]))
    assert stats.global_std.item() == pytest.approx(math.sqrt(0.5 / 2))


def test_a_single_element_has_no_spread():
    state = GANState()
    g = torch.tensor([3.0])
    stats = reference.gan_([g], state)
    assert stats.global_std.item() == 0.0 and stats.alpha.item() == 1.0
    assert g.item() == 0.0
    assert math.isnan(state.exponent.item())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("mode", ["gan", "center", "gc", "znorm"])
def test_nonfinite_input_changes_nothing(bad, mode):
    state = GANState()
    reference.gan_([torch.tensor([0.0, 0.1, 0.3])], state)
    exponent, step = state.exponent.clone(), state.step.clone()
    clean = torch.tensor([1.0, -0.0, 2.0])
    dirty = torch.tensor([1.0, bad, 3.0])
    before = [clean.clone(), dirty.clone()]
    stats = reference.gan_([clean, dirty], state, mode=mode)
    assert stats.nonfinite
    assert torch.equal(clean, before[0]) and torch.signbit(clean[1])
    assert torch.equal(dirty.nan_to_num(), before[1].nan_to_num())
    assert torch.equal(state.exponent, exponent) and torch.equal(state.step, step)


def test_overflowing_sigma_is_nonfinite():
    g = torch.tensor([3e38, -3e38, 3e38])
    before = g.clone()
    stats = reference.gan_([g])
    assert stats.nonfinite
    assert torch.equal(g, before)


def test_float64_compute_on_request():
    g = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32)
    stats = reference.gan_([g], compute_dtype=torch.float64, mode="center")
    assert stats.means.dtype == torch.float64
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, torch.tensor([-4 / 3, -1 / 3, 5 / 3]))


def test_statistics_dtype():
    stats = reference.gan_([torch.ones(3, dtype=torch.bfloat16)])
    assert stats.means.dtype == torch.float32
    stats = reference.gan_([torch.ones(3), torch.ones(3, dtype=torch.float64)])
    assert stats.means.dtype == stats.alpha.dtype == torch.float64


@pytest.mark.parametrize("mode", ["gan", "center", "gc", "znorm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_steps_with_moving_sigma_against_float64(dtype, mode):
    """The reference in its own precision over several steps whose gradients change scale, so that
    alpha moves away from its first value and the stored exponent is used."""
    grads = random_grads([(300, 7), (5000,), (1,)], [dtype] * 3, seed=3, scale=1e-3, offset=2e-4)
    check_steps_against_exact(lambda g, s, m: reference.gan_(g, s, mode=m), grads, mode, steps=4)
