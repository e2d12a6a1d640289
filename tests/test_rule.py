import copy
import math

import pytest
import torch

from gan_kernels import GAN, GANAdamW, GANState, attach, gan_, reference
from gan_kernels.rule import autoscale
from tests.helpers import bits, check_steps_against_exact, random_grads

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
NAN = torch.tensor(math.nan, dtype=torch.float64)


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_first_step_sets_exponent_from_sigma():
    sigma = math.exp(-4.0)
    alpha, exponent = autoscale(scalar(sigma), NAN)
    assert exponent.item() == pytest.approx(0.25)
    # sigma ** (1 / -ln sigma) is 1/e at the first step whenever sigma < 1/e
    assert alpha.item() == pytest.approx(math.exp(-1.0), rel=1e-6)


def test_exponent_is_at_most_one():
    alpha, exponent = autoscale(scalar(0.5), NAN)
    assert exponent.item() == 1.0
    assert alpha.item() == pytest.approx(0.5)


def test_alpha_never_exceeds_one():
    alpha, exponent = autoscale(scalar(3.0), NAN)
    assert exponent.item() == 1.0
    assert alpha.item() == 1.0


def test_set_exponent_is_reused():
    exponent = torch.tensor(0.25, dtype=torch.float64)
    alpha, new_exponent = autoscale(scalar(1e-4), exponent)
    assert new_exponent.item() == 0.25
    assert alpha.item() == pytest.approx(1e-4**0.25, rel=1e-6)


@pytest.mark.parametrize("sigma", [0.0, math.inf, math.nan])
def test_unusable_sigma_gives_one_and_keeps_state(sigma):
    alpha, exponent = autoscale(scalar(sigma), NAN)
    assert alpha.item() == 1.0
    assert math.isnan(exponent.item())
    alpha, exponent = autoscale(scalar(sigma), torch.tensor(0.5, dtype=torch.float64))
    assert alpha.item() == 1.0
    assert exponent.item() == 0.5


def test_dtypes_follow_inputs():
    alpha, exponent = autoscale(scalar(0.1), NAN)
    assert alpha.dtype == torch.float32 and exponent.dtype == torch.float64
    alpha, _ = autoscale(torch.tensor(0.1, dtype=torch.float64), NAN)
    assert alpha.dtype == torch.float64


# A rule of the user's: the exponent state counts the finite steps and alpha shrinks with it.
def counting_rule(sigma, exponent):
    count = torch.where(torch.isnan(exponent), torch.zeros_like(exponent), exponent) + 1
    alpha = torch.sqrt(torch.clamp(sigma, max=1.0)) / (1 + count).to(sigma.dtype)
    return alpha, count


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Compiled kernels round float32 to bfloat16 to nearest; Triton's interpreter truncates.
ROUNDING = {"torch": "nearest", "triton": "nearest" if DEVICE == "cuda" else "truncate"}
SHAPES = [(33, 124), (5000,), (7, 5), (1,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float32]


def rule_grads(seed=0):
    return [g.to(DEVICE) for g in random_grads(SHAPES, DTYPES, seed=seed, scale=1e-3, offset=1e-4)]


def run_on(backend):
    if backend == "reference":
        return lambda grads, state, mode, rule: reference.gan_(grads, state, mode=mode, rule=rule)
    return lambda grads, state, mode, rule: gan_(grads, state, mode=mode, backend=backend, rule=rule)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", ["gan", "znorm", "gc"])
def test_a_rule_of_ones_own_gives_the_same_result_on_every_backend(backend, mode):
    """Outputs, stats and the stored exponent against the float64 evaluation with the same rule,
    over steps whose sigma moves; in modes other than gan the rule's exponent is stored too."""
    step = run_on(backend)
    check_steps_against_exact(
        lambda grads, state, m: step(grads, state, m, counting_rule), rule_grads(), mode, steps=3,
        rounding=ROUNDING[backend], rule=counting_rule,
    )


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_the_rules_exponent_is_stored_on_finite_steps_only(backend):
    step = run_on(backend)
    state = GANState(device=DEVICE)
    grads = rule_grads()
    stats = step(grads, state, "gan", counting_rule)
    assert state.exponent.item() == 1.0 and state.step.item() == 1
    assert stats.alpha.item() == pytest.approx(math.sqrt(stats.global_std.item()) / 2, rel=1e-6)

    bad = rule_grads(seed=1)
    bad[1][7] = math.nan
    before = [bits(g).clone() for g in bad]
    stats = step(bad, state, "gan", counting_rule)
    assert bool(stats.nonfinite)
    assert all(torch.equal(bits(g), b) for g, b in zip(bad, before))
    assert state.exponent.item() == 1.0 and state.step.item() == 1

    stats = step(rule_grads(seed=2), state, "gan", counting_rule)
    assert state.exponent.item() == 2.0 and state.step.item() == 2
    assert stats.alpha.item() == pytest.approx(math.sqrt(stats.global_std.item()) / 3, rel=1e-6)


def test_the_built_in_rule_stays_in_the_finalize(monkeypatch):
    """rule=None never evaluates a rule with torch operations on the kernels' path, and a rule of
    one's own costs no extra launch."""
    from gan_kernels.kernels import launch

    with launch.count_launches() as own:
        gan_(rule_grads(), GANState(device=DEVICE), backend="triton", rule=counting_rule)
    monkeypatch.setattr(launch, "advance", lambda *args: pytest.fail("the built-in rule left the finalize"))
    with launch.count_launches() as builtin:
        gan_(rule_grads(), GANState(device=DEVICE), backend="triton")
    # Three dtype groups: a statistics and an apply launch each, and one finalize.
    assert builtin[0] == own[0] == 7


def wrong_shape(sigma, exponent):
    return sigma.reshape(1), exponent


def wrong_device(sigma, exponent):
    return torch.ones((), device="meta"), exponent


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("rule,message", [
    (wrong_shape, "alpha must be a 0-d floating tensor"),
    (wrong_device, "alpha must be a 0-d floating tensor"),
    (lambda sigma, exponent: sigma, "must return a pair"),
    (lambda sigma, exponent: (sigma, 1.0), "exponent must be a 0-d floating tensor"),
])
def test_a_rule_that_returns_the_wrong_thing_is_named_and_changes_nothing(backend, rule, message):
    grads = rule_grads()
    before = [bits(g).clone() for g in grads]
    state = GANState(device=DEVICE)
    with pytest.raises(TypeError, match=message):
        run_on(backend)(grads, state, "gan", rule)
    assert all(torch.equal(bits(g), b) for g, b in zip(grads, before))
    assert math.isnan(state.exponent.item()) and state.step.item() == 0


def test_a_rule_that_is_not_callable_is_refused_everywhere():
    model = torch.nn.Linear(3, 2)
    calls = [
        lambda: gan_(rule_grads(), rule=0.5),
        lambda: reference.gan_(rule_grads(), rule="sqrt"),
        lambda: GAN(torch.optim.SGD(model.parameters(), lr=0.1), rule=0.5),
        lambda: GANAdamW(model.parameters(), rule=0.5),
        lambda: attach(torch.optim.SGD(model.parameters(), lr=0.1), rule=0.5),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="rule must be None or a callable"):
            call()


def linear_grads(model, step):
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=generator) * 10.0 ** -(2 + step)).to(p.device)


@pytest.mark.parametrize("entry", ["GAN", "GANAdamW-torch", "GANAdamW-triton", "attach"])
def test_every_optimizer_entry_point_takes_the_rule(entry):
    """Each entry point's alpha and stored exponent are the rule's (the reference on the same
    gradients), step after step; GANAdamW's parameters and state are those of GAN(AdamW) with the
    same rule."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)).to(DEVICE)
    twin = copy.deepcopy(model)
    composed = GAN(torch.optim.AdamW(twin.parameters()), rule=counting_rule)
    if entry == "GAN":
        opt = GAN(torch.optim.AdamW(model.parameters()), rule=counting_rule)
        stats, state = (lambda: opt.last_stats), opt.gan_state
    elif entry.startswith("GANAdamW"):
        opt = GANAdamW(model.parameters(), backend=entry.split("-")[1], rule=counting_rule)
        stats, state = (lambda: opt.last_stats), opt.gan_state
    else:
        opt = torch.optim.AdamW(model.parameters())
        attachment = attach(opt, rule=counting_rule)
        stats, state = (lambda: attachment.last_stats), attachment.gan_state
    exact = GANState()
    for step in range(3):
        linear_grads(model, step)
        linear_grads(twin, step)
        eligible = [p.grad.detach().cpu().double() for p in model.parameters() if p.ndim > 1]
        expected = reference.gan_(eligible, exact, compute_dtype=torch.float64, rule=counting_rule)
        opt.step()
        composed.step()
        assert stats().alpha.item() == pytest.approx(expected.alpha.item(), rel=1e-5)
        assert state.exponent.item() == exact.exponent.item() == step + 1
        for ours, theirs in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
            assert opt.state[ours]["step"].item() == composed.state[theirs]["step"].item() == step + 1
