"""Tests that need a CUDA device: compiled kernels, no host sync, CUDA graph capture.

They are skipped on machines without CUDA; tests/test_kernels.py covers the same kernels through
Triton's interpreter there.
"""

import copy

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from gan_kernels import GAN, GANState, gan_  # noqa: E402
from tests.helpers import check_steps_against_exact, clone_all, random_grads  # noqa: E402

MODES = ["gan", "center", "znorm"]


def cuda_grads(seed=0):
    shapes = [(64, 3, 3, 3), (128, 64, 3, 3), (1000, 512), (10,), (4097,), (300_001,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16, torch.float32]
    return [g.cuda() for g in random_grads(shapes, dtypes, seed=seed, scale=1e-3, offset=1e-4)]


@pytest.mark.parametrize("mode", MODES)
def test_compiled_kernels_match_exact_evaluation(mode):
    def run(grads, state, mode):
        return gan_(grads, state, mode=mode, backend="triton")

    check_steps_against_exact(run, cuda_grads(), mode, steps=3)


def test_no_host_sync_in_gan_or_the_wrapper():
    grads = cuda_grads()
    state = GANState()
    gan_(grads, state, backend="triton")  # compile and build the layout first
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True))
    x = torch.randn(32, 64, device="cuda")

    def train_step():
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        opt.step()

    train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gan_(grads, state, backend="triton")
        train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_replay_on_new_gradients():
    grads = cuda_grads(seed=1)
    state = GANState(device="cuda")
    eager_state = GANState(device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        gan_(clone_all(grads), GANState(device="cuda"), backend="triton")  # warm up: compile
        gan_(grads, state, backend="triton")  # builds the layout for these buffers
    torch.cuda.current_stream().wait_stream(stream)
    gan_(clone_all(cuda_grads(seed=1)), eager_state, backend="triton")

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gan_(grads, state, backend="triton")
    for seed in (2, 3):
        fresh = cuda_grads(seed=seed)
        for g, f in zip(grads, fresh):
            g.copy_(f)
        eager = clone_all(fresh)
        expected = gan_(eager, eager_state, backend="triton")
        graph.replay()
        torch.cuda.synchronize()
        for g, e in zip(grads, eager):
            assert torch.equal(g, e)
        for a, b in zip(captured, expected):
            assert torch.equal(a, b)
        assert torch.equal(state.exponent, eager_state.exponent)


def test_a_checkpoint_loaded_after_capture_reaches_the_graph():
    """GANState.load_state_dict copies in place: a graph captured before the load replays with
    the loaded exponent and step."""
    grads = cuda_grads(seed=5)
    state = GANState(device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        gan_(clone_all(grads), GANState(device="cuda"), backend="triton")
        gan_(grads, state, backend="triton")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gan_(grads, state, backend="triton")
    state.load_state_dict({"exponent": 0.5, "step": 40})
    fresh = cuda_grads(seed=6)
    for g, f in zip(grads, fresh):
        g.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    assert state.exponent.item() == 0.5 and state.step.item() == 41
    assert captured.alpha.item() == pytest.approx(min(1.0, captured.global_std.item() ** 0.5), rel=1e-6)


def test_fallback_on_cuda_has_no_host_sync():
    grads = cuda_grads(seed=4)
    gan_(clone_all(grads), backend="torch")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = gan_(grads, backend="torch")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not stats.nonfinite.item()


def test_a_tensor_past_two_to_the_31_elements():
    """64-bit offsets: 2**31 + 5 float16 elements (4 GiB)."""
    n = 2**31 + 5
    g = torch.full((n,), 1.0, dtype=torch.float16, device="cuda")
    g[-1] = 2.0
    stats = gan_([g], mode="center", backend="triton")
    expected_mean = (n + 1) / n
    assert abs(stats.means[0].item() - expected_mean) < 1e-6
    assert g[-1].item() == pytest.approx(2.0 - expected_mean, abs=1e-3)
    assert g[0].item() == pytest.approx(1.0 - expected_mean, abs=1e-6)


def test_capture_a_whole_training_step():
    """The README's CUDA-graph recipe: forward, backward and GAN.step with a capturable AdamW,
    captured once and replayed on new batches, against the same steps run eagerly (the eager
    steps' host syncs are checked by the tests of cold and steady steps)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).cuda()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True))
    static_x = torch.randn(16, 32, device="cuda")
    static_y = torch.randint(0, 10, (16,), device="cuda")

    def train_step():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(static_x), static_y)
        loss.backward()
        opt.step()
        return loss

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            train_step()
    torch.cuda.current_stream().wait_stream(stream)

    twin = copy.deepcopy(model)
    twin_opt = GAN(torch.optim.AdamW(twin.parameters(), lr=1e-3, capturable=True))
    twin_opt.load_state_dict(opt.state_dict())

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = train_step()
    for seed in range(3):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(16, 32, device="cuda", generator=generator)
        y = torch.randint(0, 10, (16,), device="cuda", generator=generator)
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        twin_opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        twin_opt.step()
        torch.testing.assert_close(opt.last_stats.global_std, twin_opt.last_stats.global_std, msg=f"step {seed}")
        torch.testing.assert_close(opt.last_stats.alpha, twin_opt.last_stats.alpha, msg=f"step {seed}")
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(opt.gan_state.step, twin_opt.gan_state.step)
    assert static_loss.isfinite()


def test_direct_launches_match_tritons_own_launch():
    """After its first launch a plan launches the compiled kernels directly: bitwise the results
    of Triton's own launch, which a new plan uses for its first step."""
    from gan_kernels import plan as plans
    from gan_kernels.functional import step

    grads = cuda_grads(seed=5)
    twin = clone_all(grads)
    state, twin_state = GANState(device="cuda"), GANState(device="cuda")
    held = None
    for seed in range(3):
        stats, held = step(grads, state, "gan", "triton", held)
        plans._cache.clear()
        plans._last = None
        expected, _ = step(twin, twin_state, "gan", "triton")  # a new plan: Triton's own launch
        for a, b in zip(grads + list(stats), twin + list(expected)):
            assert torch.equal(a, b), seed
        fresh = cuda_grads(seed=50 + seed)
        for g, t, f in zip(grads, twin, fresh):
            g.copy_(f)
            t.copy_(f)
    (stats_sites, finalize_site), = held.runner.sites["stats", "single_read", "gan", False, True]
    apply_sites = held.runner.sites["apply", "gan"]
    assert all(site.compiled is not None for site in [*stats_sites, finalize_site, *apply_sites])


def test_a_captured_plan_outlives_other_layouts():
    """A plan used inside CUDA-graph capture stays alive (tables, scratch) however many other
    layouts go through the cache, until released: the graph replays correctly after 20 others
    have evicted it from the cache."""
    from gan_kernels import plan as plans

    grads = cuda_grads(seed=6)
    state, eager_state = GANState(device="cuda"), GANState(device="cuda")
    gan_(clone_all(grads), eager_state, backend="triton")  # the same first step, eagerly
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        gan_(grads, state, backend="triton")  # builds the plan, compiles the kernels
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gan_(grads, state, backend="triton")
    plan = plans.lookup(grads, "triton")
    assert plan.captured
    others = [cuda_grads(seed=100 + seed) for seed in range(20)]  # alive: twenty distinct layouts
    for other in others:
        gan_(other, backend="triton")
    assert plan not in plans._cache.values()
    fresh = cuda_grads(seed=7)
    for g, f in zip(grads, fresh):
        g.copy_(f)
    eager = clone_all(fresh)
    expected = gan_(eager, eager_state, backend="triton")
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(grads + list(captured), eager + list(expected)):
        assert torch.equal(a, b)
    del graph
    assert plans.release_captured_plans() >= 1 and not plan.captured


def test_cold_steps_have_no_host_sync():
    """New gradient buffers every step (a new plan each time, tables sent with a non-blocking copy
    from pinned memory) and a new optimizer's first step: nothing waits for the device."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(8, 16, device="cuda")).square().mean().backward()
    lists = [cuda_grads(seed=200 + seed) for seed in range(3)]
    gan_(clone_all(lists[0]), backend="triton")  # compile outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for grads in lists:
            gan_(grads, GANState(device="cuda"), backend="triton")
            gan_(clone_all(grads), GANState(device="cuda"), backend="torch")
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_ganadamw_training_step_in_a_cuda_graph():
    """A whole training step with GANAdamW (a tensor lr, so that a schedule could change it),
    captured and replayed, against the same steps taken eagerly by a twin; the eager steps take
    no host sync."""
    from gan_kernels import GANAdamW

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).cuda()
    twin = copy.deepcopy(model)
    opt = GANAdamW(model.parameters(), lr=torch.tensor(1e-3, device="cuda"), backend="triton")
    twin_opt = GANAdamW(twin.parameters(), lr=torch.tensor(1e-3, device="cuda"), backend="triton")
    static_x = torch.randn(16, 32, device="cuda")
    static_y = torch.randint(0, 10, (16,), device="cuda")

    def train_step(net, optimizer, x, y):
        optimizer.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            train_step(model, opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        train_step(twin, twin_opt, static_x, static_y)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(model, opt, static_x, static_y)
    for seed in range(3):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(16, 32, device="cuda", generator=generator)
        y = torch.randint(0, 10, (16,), device="cuda", generator=generator)
        static_x.copy_(x)
        static_y.copy_(y)
        opt.param_groups[0]["lr"].fill_(1e-3 / (seed + 1))
        twin_opt.param_groups[0]["lr"].fill_(1e-3 / (seed + 1))
        graph.replay()
        torch.cuda.set_sync_debug_mode("error")
        try:
            train_step(twin, twin_opt, x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.gan_state.step, twin_opt.gan_state.step)


def test_recording_coherence_and_the_function_step_has_no_host_sync():
    from gan_kernels.telemetry import GradientRecorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 8)).cuda()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True))
    recorder = GradientRecorder.for_optimizer(opt, model, coherence=True, probe=torch.randn(16, 64, device="cuda"),
                                              probe_every=2)
    x = torch.randn(32, 64, device="cuda")

    def train_step():
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        opt.step()
        recorder.record(opt.last_stats)

    train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):
            train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rows = recorder.flush()
    assert len(rows) == 7 and all(row["coherence/1"] == row["coherence/1"] for row in rows[1:])
    assert rows[5]["coherence/5"] == rows[5]["coherence/5"] and rows[5]["function_step"] > 0
