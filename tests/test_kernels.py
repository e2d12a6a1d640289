"""The Triton path against the float64 evaluation of one step (docs/method.md).

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); with one, the same tests run the compiled kernels on CUDA tensors.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from gan_kernels import GAN, GANState, gan_, reference, rule  # noqa: E402
from gan_kernels import plan as plans  # noqa: E402
from gan_kernels.kernels import finalize, launch, layout  # noqa: E402
from tests.helpers import (  # noqa: E402
    assert_outputs_close,
    assert_stats_close,
    bits,
    check_steps_against_exact,
    clone_all,
    exact_evaluation,
    random_grads,
)

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Compiled kernels round float32 to bfloat16 to nearest; Triton's interpreter truncates.
ROUNDING = "nearest" if DEVICE == "cuda" else "truncate"
MODES = ["gan", "center", "znorm"]
FORMS = list(launch.STATS_FORMS)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def on_device(grads):
    return [g.to(DEVICE) for g in grads]


def kernel_step(grads, state, mode, stats_form="single_read"):
    """One step on the kernels through the plan cache, with a choice of statistics form."""
    plan = plans.lookup(grads, "triton") or plans.build(grads, "triton")
    return plan.step(grads, state, mode, stats_form=stats_form)


def kernels(form):
    def run(grads, state, mode):
        return kernel_step(grads, state, mode, form)

    return run


def boundary_sizes(dtype):
    tile = layout.tile_elements(dtype)
    return [1, 2, tile - 1, tile, tile + 1, 2 * tile + 5]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tile_boundaries(dtype, mode, form):
    sizes = boundary_sizes(dtype)
    grads = on_device(random_grads([(n,) for n in sizes], [dtype] * len(sizes), seed=1, scale=1e-3, offset=3e-4))
    check_steps_against_exact(kernels(form), grads, mode, rounding=ROUNDING)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
def test_hundreds_of_small_mixed_tensors(mode, form):
    shapes = [(16, 3, 3, 3), (8, 8), (5,), (1, 1), (3, 7, 2)] * 80
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16] * 80
    grads = on_device(random_grads(shapes, dtypes, seed=2, scale=1e-2))
    check_steps_against_exact(kernels(form), grads, mode, rounding=ROUNDING)


@pytest.mark.parametrize("form", FORMS)
def test_one_large_tensor(form):
    grads = on_device(random_grads([(300_001,)], [torch.float32], seed=3, scale=1e-3, offset=-2e-3))
    check_steps_against_exact(kernels(form), grads, "gan", rounding=ROUNDING)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_common_offset(dtype, form):
    offset = 1e3 if dtype == torch.float32 else 8.0
    grads = on_device(random_grads([(20_000,), (300, 7)], [dtype] * 2, seed=4, scale=1.0, offset=offset))
    check_steps_against_exact(kernels(form), grads, "gan", rounding=ROUNDING)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_and_unaligned(mode, form):
    base = on_device(random_grads([(64, 130), (300, 40), (9, 4, 5, 5), (1001,)], [torch.float32, torch.bfloat16, torch.float16, torch.float32], seed=5))
    channels_last = base[2].to(memory_format=torch.channels_last)
    grads = [base[0][:, ::2], base[1].t(), channels_last, base[3][1:]]
    assert launch.is_direct(channels_last) and not launch.is_direct(grads[0]) and not launch.is_direct(grads[3])
    untouched = [base[0][:, 1::2].clone(), base[3][:1].clone()]
    check_steps_against_exact(kernels(form), grads, mode, rounding=ROUNDING)
    assert torch.equal(base[0][:, 1::2], untouched[0]) and torch.equal(base[3][:1], untouched[1])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_step_state(dtype, form):
    grads = on_device(random_grads([(700, 7), (5000,)], [dtype] * 2, seed=6, scale=1e-4))
    check_steps_against_exact(kernels(form), grads, "gan", steps=4, rounding=ROUNDING)


def test_edge_lists():
    for form in FORMS:
        check_steps_against_exact(kernels(form), on_device([torch.zeros(0), torch.tensor([2.5]), torch.zeros(3, 0)]), "gan")
        check_steps_against_exact(kernels(form), on_device([torch.tensor([2.5])]), "znorm")
        check_steps_against_exact(kernels(form), on_device([torch.zeros(0, 4)]), "gan")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
def test_nonfinite_leaves_everything_untouched(bad, mode, form):
    grads = on_device(random_grads([(5000,), (70, 7), (9,)], DTYPES, seed=7))
    grads[0][3] = -0.0
    grads[1][69, 6] = bad
    before = clone_all(grads)
    state = GANState(device=DEVICE)
    kernel_step(on_device(random_grads([(9,)], [torch.float32])), state, "gan", stats_form=form)
    exponent, step = state.exponent.clone(), state.step.clone()
    stats = kernel_step(grads, state, mode, stats_form=form)
    assert stats.nonfinite.dtype == torch.bool and stats.nonfinite.item()
    for g, b in zip(grads, before):
        assert torch.equal(bits(g), bits(b))
    assert torch.equal(state.exponent, exponent) and torch.equal(state.step, step)
    healthy = kernel_step(clone_all(before[::2]), state, mode, stats_form=form)
    assert not healthy.nonfinite.item() and state.step.item() == step.item() + 1


def test_sigma_overflow_is_nonfinite():
    grads = on_device([torch.tensor([3e38, -3e38, 3e38, -3e38])])
    before = clone_all(grads)
    assert kernel_step(grads, GANState(device=DEVICE), "gan").nonfinite.item()
    assert torch.equal(grads[0], before[0])


def test_matches_the_fallback_closely():
    grads = on_device(random_grads([(70000,), (33, 3, 3), (4096,)], [torch.float32] * 3, seed=8, scale=1e-3))
    ours, theirs = clone_all(grads), clone_all(grads)
    stats = gan_(ours, backend="triton")
    expected = gan_(theirs, backend="torch")
    assert_stats_close(stats, expected, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7 * b.abs().max().item())


class CountOps(TorchDispatchMode):
    """Records the ATen operations (each one or more device launches) that the host side of a step
    runs; ``paused`` hides what happens inside a kernel launch (the interpreter's own copies)."""

    def __init__(self):
        super().__init__()
        self.ops = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("form,expected", [("single_read", 3), ("two_pass", 5)])
def test_launches_do_not_depend_on_the_number_of_tensors(form, expected, monkeypatch):
    aten = CountOps()
    real_launch = launch._launch

    def launch_unrecorded(*args, **kwargs):
        aten.paused = True
        try:
            real_launch(*args, **kwargs)
        finally:
            aten.paused = False

    monkeypatch.setattr(launch, "_launch", launch_unrecorded)
    counts = set()
    for k in (3, 60, 400):
        grads = on_device(random_grads([(33, 5)] * k, [torch.float32] * k, seed=k))
        state = GANState(device=DEVICE)
        kernel_step(grads, state, "gan", stats_form=form)  # builds and caches the layout
        aten.ops.clear()
        with launch.count_launches() as launches, aten:
            kernel_step(grads, state, "gan", stats_form=form)
        counts.add((launches[0], tuple(aten.ops)))
    assert len(counts) == 1
    (launches, ops), = counts
    # Besides the kernels, a step only allocates its outputs (no device work).
    assert launches == expected and len(ops) == 5 and set(ops) <= {"aten.empty.memory_format", "aten.new_empty.default"}, ops


def test_one_statistics_and_one_apply_launch_per_dtype_group():
    grads = on_device(random_grads([(100,)] * 6, DTYPES * 2, seed=9))
    with launch.count_launches() as launches:
        gan_(grads, backend="triton")
    assert launches[0] == 2 * len(DTYPES) + 1


def test_plan_is_cached_and_rebuilt_when_buffers_change():
    grads = on_device(random_grads([(50,), (7, 7)], [torch.float32] * 2, seed=10))
    state = GANState(device=DEVICE)
    kernel_step(grads, state, "gan")
    cached = plans.lookup(grads, "triton")
    kernel_step(grads, state, "gan")
    assert cached is not None and plans.lookup(grads, "triton") is cached
    moved = clone_all(grads)
    assert plans.lookup(moved, "triton") is None
    check_steps_against_exact(kernels("single_read"), moved, "gan")
    assert plans.lookup(moved, "triton") is not cached


def check_one_step(grads, mode="gan"):
    """One ``gan_`` step on the kernels against the float64 evaluation of the same values."""
    inputs = clone_all(grads)
    expected, expected_stats = exact_evaluation(grads)
    assert_stats_close(gan_(grads, mode=mode, backend="triton"), expected_stats, inputs)
    assert_outputs_close(grads, expected, inputs, ROUNDING)


def test_lists_that_share_a_pointer_get_their_own_layouts():
    """Tensors that start at one address but differ in size, dtype or strides must never share
    a layout: a stale one would transform part of a tensor, or write past a smaller one."""
    buffer = on_device(random_grads([(3000,)], [torch.float32], seed=12, scale=1e-2, offset=1e-3))[0]
    check_one_step([buffer[:1000]])
    check_one_step([buffer])  # same pointer, more elements
    rest = buffer[1000:].clone()
    check_one_step([buffer[:1000]])  # same pointer, fewer elements: nothing past them is written
    assert torch.equal(buffer[1000:], rest)

    matrix = buffer[:2000].view(40, 50)
    rest = matrix[:, 25:].clone()
    check_one_step([matrix[:, :25]])  # same pointer and size as buffer[:1000], other strides
    assert torch.equal(matrix[:, 25:], rest)

    halves = on_device(random_grads([(2000,)], [torch.bfloat16], seed=13, scale=1e-2))[0]
    check_one_step([halves[:1000]])
    check_one_step([halves.view(torch.float32)])  # same pointer and size, another dtype


def test_repeated_steps_on_a_cached_layout_give_the_right_values():
    grads = on_device(random_grads([(5000,), (33, 7), (9000,)], DTYPES, seed=14, scale=1e-3))
    check_steps_against_exact(lambda g, s, m: gan_(g, s, mode=m, backend="triton"), grads, "gan", steps=4, rounding=ROUNDING)


def test_bitwise_repeatable():
    grads = on_device(random_grads([(20_000,), (3, 3), (5000,)] * 3, DTYPES * 3, seed=11))
    first, second = clone_all(grads), clone_all(grads)
    stats_a = kernel_step(first, GANState(device=DEVICE), "gan")
    stats_b = kernel_step(second, GANState(device=DEVICE), "gan")
    for a, b in zip(first + list(stats_a), second + list(stats_b)):
        assert torch.equal(a, b)


def test_dispatch():
    with launch.count_launches() as launches:
        gan_([torch.randn(10, 10)], backend="auto")
    assert launches[0] == 0, "auto keeps CPU tensors on the fallback"
    with launch.count_launches() as launches:
        gan_(on_device([torch.randn(10, 10)]), backend="triton")
    assert launches[0] == 3
    with launch.count_launches() as launches:
        gan_(on_device([torch.randn(10, 10), torch.randn(5, dtype=torch.float64)]), backend="triton")
    assert launches[0] == 0, "a list with float64 keeps float64 statistics on the fallback"


def test_wrapper_on_the_kernels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).to(DEVICE)
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).to(DEVICE)
    twin.load_state_dict(model.state_dict())
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.1), backend="triton")
    plain = torch.optim.SGD(twin.parameters(), lr=0.1)
    state = GANState(device=DEVICE)
    for _ in range(3):
        x = torch.randn(4, 8, device=DEVICE)
        for net, optimizer in ((model, opt), (twin, plain)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
        opt.step()
        reference.gan_([twin[0].weight.grad, twin[2].weight.grad], state)
        plain.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@triton.jit
def autoscale_probe(sigmas, exponents, alphas, new_exponents, COUNT: tl.constexpr):
    for i in range(COUNT):
        alpha, exponent = finalize.autoscale(tl.load(sigmas + i), tl.load(exponents + i))
        tl.store(alphas + i, alpha)
        tl.store(new_exponents + i, exponent)


def test_device_rule_equals_the_rule():
    values = [0.0, 1e-30, 1e-4, 0.2, math.exp(-1.0), 0.5, 1.0, 3.0, math.inf, math.nan]
    pairs = [(s, p) for s in values for p in (math.nan, 0.25, 1.0)]
    sigmas = torch.tensor([s for s, _ in pairs], dtype=torch.float32, device=DEVICE)
    exponents = torch.tensor([p for _, p in pairs], dtype=torch.float64, device=DEVICE)
    alphas, new_exponents = torch.empty_like(sigmas), torch.empty_like(exponents)
    autoscale_probe[(1,)](sigmas, exponents, alphas, new_exponents, COUNT=len(pairs))
    for i, (s, p) in enumerate(pairs):
        alpha, exponent = rule.autoscale(sigmas[i].cpu(), exponents[i].cpu())
        torch.testing.assert_close(alphas[i].cpu(), alpha, rtol=1e-6, atol=0)
        torch.testing.assert_close(new_exponents[i].cpu(), exponent, rtol=1e-7, atol=0, equal_nan=True)


@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles_without_spills_and_with_vector_access(arch, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "gan_kernels.kernels.aot", "--arch", str(arch), "--json", str(report)],
                   env=env, check=True, capture_output=True, timeout=600)
    rows = json.loads(report.read_text())
    # Statistics (3 forms), apply and the fused AdamW update (3 modes each) per dtype; 5 finalizes
    # (3 phases, the fused optimizer's, and one for a rule of one's own).
    assert len(rows) == 3 * 9 + 5
    for row in rows:
        assert row["local_bytes"] == 0 and row["stack_bytes"] == 0, row
        # A 16 KiB tile over 256 threads is four 16-byte vectors per thread.
        if row["kernel"].startswith("stats"):
            assert row["vector_loads"] >= 4, row
        if row["kernel"].startswith("apply"):
            assert row["vector_loads"] >= 4 and row["vector_stores"] >= 4, row
        # The update's 2048-element tile: 8 elements per thread, in 16-byte vectors (two in float32,
        # one in float16/bfloat16) for each of g, p, m, v and the max of v (stored: all but g).
        if row["kernel"].startswith("adamw"):
            vectors = 2 if "fp32" in row["kernel"] else 1
            assert row["vector_loads"] >= 5 * vectors and row["vector_stores"] >= 4 * vectors, row
