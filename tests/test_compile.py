"""torch.compile: gan_ is one custom operator in the graph (no graph breaks), with eager results."""

import inspect

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gan_kernels import GAN, GANState, gan_
from tests.helpers import clone_all, random_grads


def grads():
    return random_grads([(30, 3), (70_000,), (5, 5), (1,)], [torch.float32, torch.float32, torch.bfloat16, torch.float32], seed=0, scale=1e-3)


@pytest.mark.parametrize("mode", ["gan", "znorm"])
def test_opcheck(mode):
    """The fake implementation must give the real outputs' shapes and dtypes: float32 statistics,
    float64 ones when the list holds a float64 gradient, and an empty list."""
    exponent = torch.tensor(float("nan"), dtype=torch.float64)
    with_float64 = grads() + random_grads([(6, 2)], [torch.float64], seed=1)
    for gradients in (grads(), with_float64, []):
        torch.library.opcheck(torch.ops.gan_kernels.gan_step.default, (gradients, exponent.clone(), torch.tensor(0), mode, "torch"))


def test_compiled_function_has_no_graph_break_and_matches_eager():
    def three_modes(a, b, c, state):
        alphas = [gan_(g, state, mode=m, backend="torch").alpha for g, m in ((a, "gan"), (b, "gc"), (c, "znorm"))]
        return torch.stack(alphas) * 2

    compiled = torch.compile(three_modes, fullgraph=True, backend="inductor")
    eager_lists, compiled_lists = [grads() for _ in range(3)], [grads() for _ in range(3)]
    eager_state, compiled_state = GANState(), GANState()
    for _ in range(2):
        expected = three_modes(*eager_lists, eager_state)
        result = compiled(*compiled_lists, compiled_state)
        torch.testing.assert_close(result, expected)
        for ours, theirs in zip(compiled_lists, eager_lists):
            for a, b in zip(ours, theirs):
                assert torch.equal(a, b)
        assert torch.equal(compiled_state.exponent, eager_state.exponent)
        assert torch.equal(compiled_state.step, eager_state.step)


def test_compiled_wrapper_step_adds_no_graph_break():
    """torch.optim graph-breaks around its own step; GAN.step must add none of its own."""

    def setup(wrap):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, GAN(opt) if wrap else opt

    x = torch.randn(16, 4)
    model, opt = setup(True)
    model(x).square().mean().backward()
    explanation = torch._dynamo.explain(opt.step)()
    torch._dynamo.reset()
    # The wrapped optimizer's step opens with torch.optim's own deliberate graph break (its
    # _use_grad); everything GAN.step adds, the gan_kernels::gan_step operator included, traces.
    for reason in explanation.break_reasons:
        frame = reason.user_stack[-1]
        assert frame.filename.endswith("torch/optim/optimizer.py") and frame.name == "_use_grad", reason.reason
    assert explanation.graph_break_count <= 1

    (model, opt), (eager_model, eager_opt) = setup(True), setup(True)
    step = torch.compile(opt.step)
    for _ in range(3):
        for net, optimizer, run in ((model, opt, step), (eager_model, eager_opt, eager_opt.step)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            run()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        # Compiled AdamW itself rounds differently from eager AdamW in the last bits.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert opt.gan_state.step.item() == 3
    torch.testing.assert_close(opt.last_stats.alpha, eager_opt.last_stats.alpha)


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_operator():
    with Ops() as ops:
        gan_(grads(), backend="torch")
    assert not any("gan_kernels" in name for name in ops.names)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_on_another_device_under_compile_is_named():
    compiled = torch.compile(lambda g, s: gan_(g, s).alpha, fullgraph=True)
    with pytest.raises(Exception, match="GANState\\(device='cuda:0'\\)"):
        compiled([g.cuda() for g in grads()], GANState())


def halving_rule(sigma, exponent):
    return torch.where(sigma > 0, sigma.clamp(max=1.0).sqrt(), torch.ones_like(sigma)) / 2, exponent


def test_a_rule_of_ones_own_runs_eagerly_inside_a_compiled_function():
    """A Python rule cannot enter the compiled operator: the step runs eagerly there, with the same
    results as an eager call."""

    def run(g, state):
        return gan_(g, state, backend="torch", rule=halving_rule).alpha * 2

    compiled = torch.compile(run, backend="aot_eager")
    ours, theirs = grads(), grads()
    state, eager_state = GANState(), GANState()
    for _ in range(2):
        torch.testing.assert_close(compiled(ours, state), run(theirs, eager_state))
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    assert state.step.item() == 2
    if "reason" in inspect.signature(torch.compiler.disable).parameters:
        torch._dynamo.reset()
        with pytest.raises(Exception, match="a rule of one's own is a Python callable"):
            torch.compile(run, backend="aot_eager", fullgraph=True)(grads(), GANState())
