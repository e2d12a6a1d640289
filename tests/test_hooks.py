"""attach (docs/api.md): GAN through an optimizer's step pre-hook, the GANState in the optimizer's own
state dict, and the unscaled gradients under a loss scaler."""

import copy

import pytest
import torch
from torch import nn

from gan_kernels import GAN, GANAdamW, GANState, attach, reference
from gan_kernels.hooks import innermost
from gan_kernels.optim import default_eligible

HOOK_REGISTRIES = ("_optimizer_step_pre_hooks", "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks")


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 6, generator=generator) for _ in range(count)]


def train(model, opt, data, scaler=None, scale=1.0):
    for x in data:
        opt.zero_grad()
        loss = model(x).square().mean() * scale
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


@pytest.mark.parametrize("mode", ["gan", "gc", "znorm"])
def test_attach_equals_the_wrapper(mode):
    ours, theirs = make_model(), make_model()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    handle = attach(opt, mode=mode)
    wrapped = GAN(torch.optim.AdamW(theirs.parameters(), lr=1e-2), mode=mode)
    data = batches(4)
    train(ours, opt, data)
    train(theirs, wrapped, data)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(handle.last_stats.alpha, wrapped.last_stats.alpha)
    assert torch.equal(handle.gan_state.step, wrapped.gan_state.step) and handle.gan_state.step.item() == 4


def test_checkpoints_carry_the_gan_state_and_resume_bit_for_bit():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = attach(opt)
    train(model, opt, batches(3))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    assert set(checkpoint["opt"]) == {"state", "param_groups", "gan"}

    resumed_model = make_model(seed=7)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt = torch.optim.AdamW(resumed_model.parameters(), lr=1e-2)
    resumed = attach(resumed_opt)
    resumed_opt.load_state_dict(checkpoint["opt"])
    assert torch.equal(resumed.gan_state.exponent, handle.gan_state.exponent) and resumed.gan_state.step.item() == 3
    data = batches(3, seed=2)
    train(model, opt, data)
    train(resumed_model, resumed_opt, data)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_attaching_twice_is_an_error_and_remove_restores_the_optimizer():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: dict(getattr(opt, name)) for name in HOOK_REGISTRIES}
    handle = attach(opt)
    with pytest.raises(RuntimeError, match="attached to this SGD already"):
        attach(opt)
    handle.remove()
    assert {name: dict(getattr(opt, name)) for name in HOOK_REGISTRIES} == before
    assert "gan" not in opt.state_dict()
    snapshot = [p.detach().clone() for p in model.parameters()]
    train(model, opt, batches(1))
    plain = make_model()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for p, s in zip(plain.parameters(), snapshot):
        p.data.copy_(s)
    train(plain, plain_opt, batches(1))
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)  # after remove(), no GAN at all
    attach(opt).remove()  # and it can be attached again


@pytest.mark.parametrize("fused", [False, True], ids=["unscaled-by-the-scaler", "unscaled-by-fused-adamw"])
def test_gan_sees_the_unscaled_gradients_under_a_loss_scaler(fused):
    """With a plain optimizer the scaler unscales before the step; a fused AdamW unscales inside
    its step, after the pre-hook: either way alpha must be that of the true gradients."""
    ours, theirs = make_model(), make_model()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2, fused=fused)
    handle = attach(opt)
    reference = GAN(torch.optim.AdamW(theirs.parameters(), lr=1e-2, fused=fused))
    data = batches(3)
    train(ours, opt, data, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    train(theirs, reference, data)
    torch.testing.assert_close(handle.last_stats.global_std, reference.last_stats.global_std, rtol=1e-6, atol=0)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_step_the_scaler_skips_never_reaches_gan():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    train(model, opt, batches(1), scaler=scaler)
    kept = handle.gan_state.state_dict()
    train(model, opt, batches(1), scaler=scaler, scale=float("inf"))
    assert torch.equal(handle.gan_state.step, kept["step"]) and torch.equal(handle.gan_state.exponent, kept["exponent"])


def test_innermost_unwraps_framework_wrappers():
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)

    class Wrapper:  # as accelerate and Lightning keep the optimizer they wrap
        def __init__(self, inner, attribute):
            setattr(self, attribute, inner)

    assert innermost(opt) is opt
    assert innermost(Wrapper(Wrapper(opt, "optimizer"), "_optimizer")) is opt
    assert innermost(GAN(opt)) is opt
    with pytest.raises(TypeError, match="no torch.optim.Optimizer inside"):
        innermost(Wrapper(3, "optimizer"))


def test_bad_input():
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        attach(make_model())
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown mode"):
        attach(opt, mode="adam")
    with pytest.raises(TypeError, match="eligible must be a callable"):
        attach(opt, eligible=1)
    attach(opt).remove()  # the failed calls attached nothing


@pytest.mark.parametrize("by_keyword", [False, True], ids=["positional", "keyword"])
def test_a_step_with_a_closure_applies_gan_after_the_closure(by_keyword):
    """A closure computes the gradients inside the step (as Lightning's does, by keyword): GAN must
    transform those, not whatever the gradients held when the step began."""
    ours, theirs = make_model(), make_model()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    attach(opt)
    wrapped = GAN(torch.optim.AdamW(theirs.parameters(), lr=1e-2))
    for x in batches(3):
        for model, optimizer in ((ours, opt), (theirs, wrapped)):
            def closure(model=model, optimizer=optimizer, x=x):
                optimizer.zero_grad()
                loss = model(x).square().mean()
                loss.backward()
                return loss

            if by_keyword:
                optimizer.step(closure=closure)
            else:
                optimizer.step(closure)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def sgd():
    return torch.optim.SGD(make_model().parameters(), lr=0.1)


@pytest.mark.parametrize(
    "second,match",
    [
        (lambda: GAN(GAN(sgd())), r"GAN\(\.\.\.\) wrapper \(of a SGD\), which applies GAN itself"),
        (lambda: GAN(GANAdamW(make_model().parameters())), "GANAdamW, which applies GAN itself"),
        (lambda: attach(GANAdamW(make_model().parameters())), "GANAdamW, which applies GAN itself"),
        (lambda: attach(GAN(sgd())), r"GAN\(\.\.\.\) wrapper"),
    ],
    ids=["wrap-a-wrapper", "wrap-GANAdamW", "attach-GANAdamW", "attach-a-wrapper"],
)
def test_gan_on_an_optimizer_that_applies_gan_itself_is_refused(second, match):
    with pytest.raises(RuntimeError, match=match):
        second()


def test_gan_is_never_added_where_it_is_attached_or_wrapping():
    opt = sgd()
    before = {name: dict(getattr(opt, name)) for name in HOOK_REGISTRIES}
    handle = attach(opt)
    with pytest.raises(RuntimeError, match="attached to this SGD already; remove"):
        GAN(opt)
    handle.remove()
    assert {name: dict(getattr(opt, name)) for name in HOOK_REGISTRIES} == before
    wrapper = GAN(opt)  # removing the attachment lets it be wrapped
    with pytest.raises(RuntimeError, match=r"this SGD is already wrapped by GAN\(\.\.\.\)"):
        attach(opt)
    assert {name: dict(getattr(opt, name)) for name in HOOK_REGISTRIES} == before  # nothing registered
    sibling = GAN(opt)  # a second wrapper: stepping either applies GAN once
    assert sibling.optimizer is opt
    del wrapper, sibling
    attach(opt).remove()  # once no wrapper lives, it can be attached again


def test_gan_is_found_inside_framework_wrappers():
    class Wrapper(torch.optim.Optimizer):  # as accelerate's AcceleratedOptimizer keeps its optimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

    opt = sgd()
    handle = attach(opt)
    with pytest.raises(RuntimeError, match="attached to this SGD already"):
        GAN(Wrapper(opt))
    handle.remove()
    GAN(Wrapper(opt))


@pytest.mark.parametrize("how", ["wrap", "attach"])
def test_lbfgs_gets_gan_on_every_gradient_it_evaluates(how):
    """LBFGS evaluates its closure several times per step: each gradient must get GAN, as a
    closure that applies the reference gan_ after backward; the GANState advances once per
    evaluation."""
    ours, theirs = make_model(), make_model()
    options = {"lr": 0.5, "max_iter": 4, "history_size": 3}
    inner = torch.optim.LBFGS(ours.parameters(), **options)
    opt = GAN(inner) if how == "wrap" else inner
    gan = opt if how == "wrap" else attach(inner)
    plain = torch.optim.LBFGS(theirs.parameters(), **options)
    state, evaluations = GANState(), []
    for x in batches(3):
        def closure():
            opt.zero_grad()
            loss = ours(x).square().mean()
            loss.backward()
            return loss

        def closure_applying_gan():
            plain.zero_grad()
            loss = theirs(x).square().mean()
            loss.backward()
            reference.gan_([p.grad for p in theirs.parameters() if default_eligible(p)], state)
            evaluations.append(loss.detach())
            return loss

        torch.testing.assert_close(opt.step(closure), plain.step(closure_applying_gan), rtol=1e-5, atol=1e-7)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert len(evaluations) > 3  # several evaluations per step
    assert gan.gan_state.step.item() == len(evaluations)
    torch.testing.assert_close(gan.gan_state.exponent, state.exponent, rtol=1e-5, atol=0)
