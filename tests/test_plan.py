"""Step plans (gan_kernels.plan): the steady state reuses a plan only while every gradient keeps
its pointer, sizes, strides, dtype and device; anything else takes the full path (validation and a
new plan). Plans that an optimizer holds outlive the cache. On both backends: the fallback and the
Triton kernels (Triton's interpreter on a CPU, compiled on a GPU)."""

import pytest
import torch

from gan_kernels import GAN, GANState, gan_
from gan_kernels import plan as plans
from tests.helpers import assert_outputs_close, assert_stats_close, clone_all, exact_evaluation, random_grads

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]
# Compiled kernels round float32 to bfloat16 to nearest; Triton's interpreter truncates.
ROUNDING = "nearest" if DEVICE == "cuda" else "truncate"


def step_and_check(grads, backend, state=None):
    """One gan_ step against the float64 evaluation; returns the plan the step ran on."""
    inputs = clone_all(grads)
    expected, expected_stats = exact_evaluation(grads)
    stats = gan_(grads, GANState(device=DEVICE) if state is None else state, backend=backend)
    assert_stats_close(stats, expected_stats, inputs)
    assert_outputs_close(grads, expected, inputs, ROUNDING if backend == "triton" else "nearest")
    return plans.lookup(grads, backend)


def fresh(shapes, dtype=torch.float32, seed=0):
    return [g.to(DEVICE) for g in random_grads(shapes, [dtype] * len(shapes), seed=seed, scale=1e-2, offset=1e-3)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_buffers_reuse_their_plan(backend):
    grads = fresh([(30, 7), (500,), (3, 3, 3)])
    plan = step_and_check(grads, backend)
    assert plan is not None and step_and_check(grads, backend) is plan


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reallocated_gradient_gets_a_new_plan(backend):
    grads = fresh([(30, 7), (500,)])
    plan = step_and_check(grads, backend)
    grads[1] = grads[1].clone()
    assert plans.lookup(grads, backend) is None
    assert step_and_check(grads, backend) is not plan


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_smaller_size_at_the_same_pointer_takes_the_full_path(backend):
    buffer = fresh([(3000,)])[0]
    grads = [buffer[:2000], fresh([(40,)], seed=1)[0]]
    plan = step_and_check(grads, backend)
    grads[0].resize_(1500)
    rest = buffer[1500:].clone()
    assert plans.lookup(grads, backend) is None
    assert step_and_check(grads, backend) is not plan
    assert torch.equal(buffer[1500:], rest)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_strides_at_the_same_pointer_take_the_full_path(backend):
    matrix = fresh([(40, 60)])[0]
    grads = [matrix, fresh([(40,)], seed=1)[0]]
    plan = step_and_check(grads, backend)
    matrix.t_()  # same pointer and elements, other sizes and strides
    assert plans.lookup(grads, backend) is None
    transposed = step_and_check(grads, backend)
    assert transposed is not plan
    # Same pointer, sizes and dtype as a contiguous block of 40 x 30, but every other row of 30
    # skipped: a plan made for the contiguous block would read and write the skipped elements.
    grads[0] = matrix.t().reshape(-1)[:1200].view(40, 30)
    step_and_check(grads, backend)
    grads[0] = matrix.t()[:, :30]
    rest = matrix.t()[:, 30:].clone()
    assert plans.lookup(grads, backend) is None
    step_and_check(grads, backend)
    assert torch.equal(matrix.t()[:, 30:], rest)


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_dtype_at_the_same_pointer_takes_the_full_path(backend):
    grads = fresh([(4000,), (64,)], dtype=torch.float16)
    plan = step_and_check(grads, backend)
    grads[0].data = grads[0].data.view(torch.bfloat16)  # same pointer, sizes and strides
    assert plans.lookup(grads, backend) is None
    assert step_and_check(grads, backend) is not plan


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_device_at_the_same_pointer_is_still_rejected(backend):
    """A zero-size tensor may have a null pointer on any device: only the device tells a list
    that mixes devices from the valid one cached before."""
    grads = [torch.zeros(0, device=DEVICE), fresh([(50,)])[0]]
    assert grads[0].data_ptr() == 0
    gan_(grads, backend=backend)
    grads[0] = torch.zeros(0, device="meta")
    assert grads[0].data_ptr() == 0
    with pytest.raises(ValueError, match=r"grads\[1\] is on .* but grads\[0\] is on meta"):
        gan_(grads, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_overlapping_or_expanded_view_at_a_cached_pointer_is_still_rejected(backend):
    buffer = fresh([(100,)])[0]
    gan_([buffer[:10], buffer[10:20]], backend=backend)  # a plan for these pointers
    before = buffer.clone()
    with pytest.raises(ValueError, match="overlap"):
        gan_([buffer[:15], buffer[10:20]], backend=backend)
    assert torch.equal(buffer, before)
    gan_([buffer[:10]], backend=backend)
    before = buffer.clone()
    with pytest.raises(ValueError, match="expanded"):
        gan_([buffer[:1].expand(10)], backend=backend)
    assert torch.equal(buffer, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cache_evicts_only_what_nothing_else_holds(backend):
    """An optimizer's plan survives any number of other layouts: after 20 of them (the cache
    keeps 8) the optimizer steps on the very same plan and tables, with the results of a twin
    that never saw the other layouts."""

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(DEVICE)
        return model, GAN(torch.optim.SGD(model.parameters(), lr=0.1), backend=backend)

    (model, opt), (twin, twin_opt) = setup(), setup()
    x = torch.randn(32, 8, device=DEVICE)

    def train(net, optimizer):
        optimizer.zero_grad(set_to_none=False)
        net(x).square().mean().backward()
        optimizer.step()

    train(model, opt)
    train(twin, twin_opt)
    held = opt._plan
    tables = held.runner.layout.numels.data_ptr() if backend == "triton" else held.runner.work.data_ptr()
    # Twenty other layouts, kept alive so that none can reuse another's addresses (a CUDA caching
    # allocator hands freed blocks straight back, and a reused address is the same layout).
    others = [fresh([(20 + seed, 3), (7,)], seed=seed) for seed in range(20)]
    for grads in others:
        gan_(grads, backend=backend)
    assert held not in plans._cache.values()
    for _ in range(2):
        train(model, opt)
        train(twin, twin_opt)
    assert opt._plan is held
    assert tables == (held.runner.layout.numels.data_ptr() if backend == "triton" else held.runner.work.data_ptr())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_a_plan_holds_no_reference_to_the_gradients():
    import gc
    import weakref

    grads = fresh([(30, 7), (500,)])
    gan_(grads, backend="torch")
    alive = [weakref.ref(g) for g in grads]
    del grads
    gc.collect()
    assert all(ref() is None for ref in alive)
