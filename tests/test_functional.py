"""``gan_`` (the torch fallback) against the reference and the float64 evaluation (docs/method.md, docs/guarantees.md)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gan_kernels import GANState, fallback, gan_, reference
from tests.helpers import (
    assert_outputs_close,
    assert_stats_close,
    bits,
    check_steps_against_exact,
    clone_all,
    exact_evaluation,
    random_grads,
)

MODES = ["gan", "center", "gc", "znorm"]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(params=["host", "device"])
def apply_path(request, monkeypatch):
    """Run the fallback the CPU's way, or the accelerators' way (Welford statistics of large
    tensors, factors left on the device) forced onto the CPU."""
    if request.param == "device":
        monkeypatch.setattr(fallback, "on_host", lambda device: False)
    return request.param


def torch_backend(grads, state, mode):
    return gan_(grads, state, mode=mode, backend="torch")


def check_against_exact(grads, mode="gan", steps=1):
    check_steps_against_exact(torch_backend, grads, mode, steps)


@st.composite
def gradient_lists(draw):
    count = draw(st.integers(0, 6))
    grads = []
    for _ in range(count):
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=4)))
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
        scale = 10.0 ** draw(st.integers(-5, 2))
        offset = scale * draw(st.sampled_from([0.0, 0.5, -3.0, 10.0]))
        seed = draw(st.integers(0, 2**16))
        g = random_grads([shape], [dtype], seed=seed, scale=scale, offset=offset)[0]
        if draw(st.booleans()) and g.ndim >= 2:
            g = g.transpose(0, -1)
        grads.append(g)
    return grads


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grads=gradient_lists(), mode=st.sampled_from(MODES))
def test_random_lists_match_exact_evaluation(grads, mode):
    check_against_exact(grads, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sizes_at_stack_and_tile_boundaries(dtype, mode, apply_path):
    sizes = [1, 2, fallback.STACK_MAX - 1, fallback.STACK_MAX, fallback.STACK_MAX + 1]
    sizes += [fallback.TILE - 1, fallback.TILE, 2 * fallback.TILE + 3]
    grads = random_grads([(n,) for n in sizes], [dtype] * len(sizes), seed=1, scale=1e-3, offset=2e-4)
    check_against_exact(grads, mode)


@pytest.mark.parametrize("mode", MODES)
def test_many_small_mixed_tensors(mode, apply_path):
    shapes = [(16, 16, 3, 3), (32, 16, 3, 3), (10, 64), (64,), (3, 3)] * 40
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float64] * 40
    grads = random_grads(shapes, dtypes, seed=2, scale=1e-2)
    check_against_exact(grads, mode)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_multi_step_state(dtype, apply_path):
    grads = random_grads([(300, 7), (5000,), (70000,)], [dtype] * 3, seed=3, scale=1e-4)
    check_against_exact(grads, "gan", steps=4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("size", [1000, fallback.TILE * 2 + 17])
def test_large_common_offset(dtype, size, apply_path):
    """A one-pass E[x^2] - E[x]^2 loses everything here; two-pass numerics must not."""
    offset = 1e3 if dtype in (torch.float32, torch.float64) else 8.0
    grads = random_grads([(size,), (size // 3, 3)], [dtype] * 2, seed=4, scale=1.0, offset=offset)
    check_against_exact(grads, "gan")


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_views(mode, apply_path):
    base = random_grads([(64, 130), (300, 400), (40, 50, 6)], [torch.float32, torch.bfloat16, torch.float64], seed=5)
    grads = [base[0][:, ::2], base[1].t(), base[2].permute(2, 0, 1)[1:]]
    untouched = [base[0][:, 1::2].clone(), base[2].permute(2, 0, 1)[0].clone()]
    check_against_exact(grads, mode)
    assert torch.equal(base[0][:, 1::2], untouched[0])
    assert torch.equal(base[2].permute(2, 0, 1)[0], untouched[1])


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_without_float64(mode, apply_path):
    grads = random_grads([(70000,), (33, 3, 3), (4096,)], [torch.float32] * 3, seed=6, scale=1e-3)
    ours, theirs = clone_all(grads), clone_all(grads)
    stats = gan_(ours, mode=mode, backend="torch")
    expected = reference.gan_(theirs, mode=mode)
    assert_stats_close(stats, expected, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7 * b.abs().max().item())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("mode", MODES)
def test_nonfinite_leaves_everything_untouched(bad, mode, apply_path):
    grads = random_grads([(500,), (70000,), (7,), (1,)], [torch.float32, torch.bfloat16, torch.float64, torch.float32], seed=7)
    grads[0][3] = -0.0
    grads[1][70000 - 1] = bad
    # A one-element tensor's mean is the element itself: an apply that is not neutralised zeroes it.
    grads[3][0] = 0.75
    before = clone_all(grads)
    state = GANState()
    gan_(random_grads([(9,)], [torch.float32]), state, backend="torch")
    exponent, step = state.exponent.clone(), state.step.clone()
    stats = gan_(grads, state, mode=mode, backend="torch")
    assert stats.nonfinite.dtype == torch.bool and stats.nonfinite
    for g, b in zip(grads, before):
        assert torch.equal(bits(g), bits(b))
    assert torch.equal(state.exponent, exponent) and torch.equal(state.step, step)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_float64_gradient_keeps_every_statistic_in_float64(backend):
    """With a float64 tensor in the list, the statistics of all tensors (float32 and bfloat16 ones
    included) accumulate in float64: float64 accuracy for sigma, alpha, the means and the stds."""
    grads = random_grads([(3000,), (40, 9), (5000,)], [torch.float32, torch.float64, torch.bfloat16], seed=10, scale=1e-2, offset=1.0)
    expected_outputs, expected = exact_evaluation(grads)
    stats = gan_(grads, backend=backend)
    for name in ("alpha", "global_std", "means", "stds"):
        got, want = getattr(stats, name), getattr(expected, name)
        assert got.dtype == torch.float64, name
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=name)
    torch.testing.assert_close(grads[1], expected_outputs[1], rtol=1e-12, atol=1e-15)


def test_device_apply_writes_nothing_on_a_nonfinite_step(monkeypatch):
    """The accelerator apply keeps every bit of a non-finite step, NaN payloads and signs included,
    for small (stacked) and large (tiled) tensors alike, whatever the factors."""
    monkeypatch.setattr(fallback, "on_host", lambda device: False)
    grads = random_grads([(100,), (7, 7), (1,), (fallback.STACK_MAX + 3,)], [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16], seed=8)
    grads[0][0], grads[0][1], grads[0][2] = -0.0, math.inf, -math.nan
    grads[1][0, 0] = math.nan
    grads[3][5] = -math.nan
    before = clone_all(grads)
    plan = fallback.FallbackPlan(grads, torch.device("cpu"))
    plan.partials(grads)
    plan.apply_(grads, torch.full((4,), 3.0), torch.tensor(True), "gan", center=torch.full((4,), math.nan))
    for g, b in zip(grads, before):
        assert torch.equal(bits(g), bits(b))


def test_sigma_overflow_is_nonfinite():
    grads = [torch.tensor([3e38, -3e38, 3e38, -3e38])]
    before = clone_all(grads)
    stats = gan_(grads, backend="torch")
    assert stats.nonfinite and torch.equal(grads[0], before[0])


def test_edge_lists():
    state = GANState()
    stats = gan_([], state)
    assert stats.means.shape == (0,) and not stats.nonfinite and stats.alpha.item() == 1.0
    check_against_exact([torch.zeros(0), torch.tensor([2.5]), torch.zeros(3, 0, 2)], "gan")
    check_against_exact([torch.tensor([2.5])], "znorm")


def test_deterministic():
    grads = random_grads([(70000,), (fallback.TILE * 3 + 5,), (3, 3)] * 3, [torch.float32] * 9, seed=9)
    first, second = clone_all(grads), clone_all(grads)
    stats_a = gan_(first, backend="torch")
    stats_b = gan_(second, backend="torch")
    for a, b in zip(first + list(stats_a), second + list(stats_b)):
        assert torch.equal(a, b)


def test_returns_stats_on_device_without_autograd():
    w = torch.randn(5, 5, requires_grad=True)
    g = torch.randn(5, 5, requires_grad=True)
    stats = gan_([w.detach(), g.detach()])
    assert all(not t.requires_grad for t in stats)
    with torch.enable_grad():
        leaf = torch.randn(4, 4, requires_grad=True)
        gan_([leaf])
    assert leaf.grad_fn is None


def rows_apart(dtype, seed=11):
    """Gradients whose rows have their own offsets, so that one mean per row (mode "gc") and one
    per tensor differ: conv and linear weights, an (n, 1) weight, a large weight (tiled), a
    strided view and a channels_last one."""
    shapes = [(16, 3, 3, 3), (30, 7), (10, 1), (40, 2000), (64, 130), (8, 4, 5, 5)]
    grads = random_grads(shapes, [torch.float64] * len(shapes), seed=seed, scale=1e-2)
    for g in grads:
        g += torch.linspace(-0.05, 0.08, g.shape[0], dtype=torch.float64).view(-1, *[1] * (g.ndim - 1))
    grads = [g.to(dtype) for g in grads]
    grads[4] = grads[4][:, ::2]
    grads[5] = grads[5].to(memory_format=torch.channels_last)
    return grads


@pytest.mark.parametrize("backend", ["torch", "auto", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gc_is_one_mean_per_row_on_every_backend(dtype, backend, apply_path):
    """Mode "gc" against a direct per-row computation in float64 (and the statistics against the
    whole-tensor ones); "triton" runs it on the fallback."""
    grads = rows_apart(dtype)
    inputs = clone_all(grads)
    expected = [x.double() - x.double().mean(dim=tuple(range(1, x.ndim)), keepdim=True) for x in inputs]
    _, whole = exact_evaluation(inputs, mode="center")
    stats = gan_(grads, mode="gc", backend=backend)
    assert_stats_close(stats, whole, inputs)
    assert_outputs_close(grads, expected, inputs)
    assert grads[5].is_contiguous(memory_format=torch.channels_last)
    check_against_exact(rows_apart(dtype, seed=12), "gc", steps=3)
