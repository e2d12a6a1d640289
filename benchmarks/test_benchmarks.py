"""pytest-benchmark microbenchmarks: every gradient set x implementation x dtype.

    pytest benchmarks/                        # measure on CUDA if present, else the CPU
    pytest benchmarks/ --benchmark-json=out.json --benchmark-compare

Grouped by set and dtype, so each group compares the implementations on the same tensors. Every
implementation is warmed up on a small set before the first benchmark, and each test warms its own
up once more before it is timed. CI runs them once each with ``--benchmark-disable`` as a smoke
test (without the first warm-up); times are never asserted.
"""

import pytest
import torch

from benchmarks.common import DTYPES, IMPLEMENTATIONS, available, elements, make_grads, make_step, warm_up
from benchmarks.shapes import SETS
from gan_kernels import GANState

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module", autouse=True)
def warmed_up(request):
    """Every implementation and the copy once warmed up before the first benchmark, so that the
    process's first-call costs do not land in the first group (skipped by --benchmark-disable)."""
    if not request.config.getoption("benchmark_disable", False):
        warm_up(DEVICE, list(DTYPES), [name for name in IMPLEMENTATIONS if available(name, DEVICE)])


@pytest.mark.parametrize("implementation", [name for name in IMPLEMENTATIONS if available(name, DEVICE)])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("set_name", list(SETS))
def test_gan_step(benchmark, set_name, dtype_name, implementation):
    source = make_grads(set_name, DTYPES[dtype_name], DEVICE)
    grads = [g.clone() for g in source]
    step = make_step(implementation)
    state = GANState()
    step(grads, state)  # warm-up: compiles, caches layouts

    def restore():
        torch._foreach_copy_(grads, source)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    def run():
        step(grads, state)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{set_name} {dtype_name}"
    benchmark.extra_info.update(elements=elements(set_name), bytes_3_accesses=3 * elements(set_name) * source[0].element_size())
    benchmark.pedantic(run, setup=restore, rounds=10, iterations=1)
    assert all(torch.isfinite(g).all() for g in grads)
