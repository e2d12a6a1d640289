"""The GAN optimizer wrapper (docs/api.md): same as "reference GAN on eligible grads, then the plain
optimizer", and at home with the rest of torch.optim."""

import copy
import warnings

import pytest
import torch
from torch import nn

import gan_kernels
from gan_kernels import GAN, GANAdamW, GANState, reference


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),  # a bias before BatchNorm gets only rounding noise
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def batches(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 6, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator))
        for _ in range(count)
    ]


def backward(model, batch):
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


def train(model, opt, data, scaler=None):
    for batch in data:
        opt.zero_grad()
        if scaler is None:
            backward(model, batch)
            opt.step()
        else:
            x, y = batch
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()


def eligible_params(model):
    return [model[0].weight, model[4].weight]


@pytest.mark.parametrize("mode", ["gan", "center", "gc", "znorm"])
def test_equals_reference_then_plain_optimizer(mode):
    ours, theirs = make_model(), make_model()
    opt = GAN(torch.optim.AdamW(ours.parameters(), lr=1e-2), mode=mode)
    plain = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    state = GANState()
    for batch in batches(5):
        opt.zero_grad()
        plain.zero_grad()
        backward(ours, batch)
        backward(theirs, batch)
        opt.step()
        expected = reference.gan_([p.grad for p in eligible_params(theirs)], state, mode=mode)
        plain.step()
        torch.testing.assert_close(opt.last_stats.alpha, expected.alpha, rtol=1e-5, atol=0)
        torch.testing.assert_close(opt.last_stats.global_std, expected.global_std, rtol=1e-5, atol=0)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert opt.gan_state.step.item() == state.step.item() == 5


def test_biases_and_norm_parameters_untouched():
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.0))
    backward(model, batches(1)[0])
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        if p.ndim > 1:
            assert not torch.equal(p.grad, before[name]), name
            assert abs(p.grad.mean().item()) < 1e-7
        else:
            assert torch.equal(p.grad, before[name]), name
    assert opt.last_stats.means.shape == (2,)


def test_eligible_predicate():
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.0), eligible=lambda p: p is model[4].bias)
    backward(model, batches(1)[0])
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]) == (name != "4.bias"), name
    assert opt.last_stats.means.shape == (1,)


def test_shares_groups_and_state_with_the_wrapped_optimizer():
    model = make_model()
    inner = torch.optim.AdamW(model.parameters())
    opt = GAN(inner)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    assert opt.defaults is inner.defaults
    train(model, opt, batches(1))
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    assert len(opt.state) == len(list(model.parameters()))


def test_lr_scheduler():
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=1.0))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for batch in batches(3):
            opt.zero_grad()
            backward(model, batch)
            opt.step()
            scheduler.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.125
    assert scheduler.get_last_lr() == [0.125]


def test_grad_scaler_sees_unscaled_gradients():
    scaled_model, plain_model = make_model(), make_model()
    scaled = GAN(torch.optim.AdamW(scaled_model.parameters(), lr=1e-2))
    plain = GAN(torch.optim.AdamW(plain_model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    data = batches(4)
    train(scaled_model, scaled, data, scaler)
    train(plain_model, plain, data)
    for a, b in zip(scaled_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(scaled.last_stats.global_std, plain.last_stats.global_std)


def test_grad_scaler_skipped_step_leaves_gan_state_alone():
    model = make_model()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    train(model, opt, batches(2), scaler)
    gan_state = opt.gan_state.state_dict()
    params = [p.clone() for p in model.parameters()]
    opt.zero_grad()
    x, y = batches(1, seed=5)[0]
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    model[4].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert torch.equal(opt.gan_state.step, gan_state["step"])
    assert torch.equal(opt.gan_state.exponent, gan_state["exponent"])
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p, before)
    assert scaler.get_scale() == 2.0**11


def test_state_dict_round_trip_resumes_bit_for_bit():
    model = make_model()
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-2))
    train(model, opt, batches(3))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    assert set(checkpoint["opt"]) == {"state", "param_groups", "gan"}

    resumed_model = make_model(seed=123)
    resumed = GAN(torch.optim.AdamW(resumed_model.parameters(), lr=1e-2))
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["opt"])
    assert torch.equal(resumed.gan_state.exponent, opt.gan_state.exponent)

    data = batches(3, seed=2)
    train(model, opt, data)
    train(resumed_model, resumed, data)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(resumed.gan_state.step, opt.gan_state.step)


def test_plain_optimizer_state_dicts_interoperate():
    model = make_model()
    plain = torch.optim.AdamW(model.parameters())
    train(model, plain, batches(1))
    opt = GAN(torch.optim.AdamW(model.parameters()))
    train(model, opt, batches(2, seed=3))
    kept = opt.gan_state.state_dict()
    opt.load_state_dict(plain.state_dict())
    # A plain optimizer's state dict carries no GANState: the wrapper keeps the one it has.
    assert opt.gan_state.step.item() == 2
    assert torch.equal(opt.gan_state.exponent, kept["exponent"]) and not kept["exponent"].isnan()
    torch.optim.AdamW(model.parameters()).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("kind", ["GAN", "GANAdamW"])
def test_state_dict_hooks_are_honoured(kind):
    """The four state-dict hooks run, in torch's order and with torch's arguments; they see the
    whole dict, ``"gan"`` included, and what they return replaces it."""
    model = make_model()
    opt = GAN(torch.optim.AdamW(model.parameters())) if kind == "GAN" else GANAdamW(model.parameters())
    train(model, opt, batches(2))
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(("save-pre", o is opt)))

    def save_post(o, state_dict):
        calls.append(("save-post", o is opt, "gan" in state_dict))
        return {**state_dict, "note": "saved"}

    def load_pre(o, state_dict):
        calls.append(("load-pre", o is opt, state_dict.get("note")))
        changed = copy.deepcopy({k: v for k, v in state_dict.items() if k != "note"})
        changed["gan"]["step"] = torch.tensor(41)
        return changed

    opt.register_state_dict_post_hook(save_post)
    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append(("load-post", o is opt, o.gan_state.step.item())))
    saved = opt.state_dict()
    assert saved["note"] == "saved" and "gan" in saved
    opt.load_state_dict(saved)
    assert calls == [("save-pre", True), ("save-post", True, True), ("load-pre", True, "saved"), ("load-post", True, 41)]
    assert opt.gan_state.step.item() == 41
    train(model, opt, batches(1))  # the loaded state steps on


def test_sparse_gradients_are_left_alone():
    def setup():
        torch.manual_seed(0)
        return nn.Embedding(20, 6, sparse=True), nn.Linear(6, 3)

    (embedding, linear), (plain_embedding, plain_linear) = setup(), setup()
    opt = GAN(torch.optim.SGD([*embedding.parameters(), *linear.parameters()], lr=0.1))
    plain = torch.optim.SGD([*plain_embedding.parameters(), *plain_linear.parameters()], lr=0.1)
    tokens = torch.tensor([[1, 4, 4, 7], [0, 2, 9, 19]])
    for net, optimizer in (((embedding, linear), opt), ((plain_embedding, plain_linear), plain)):
        optimizer.zero_grad()
        net[1](net[0](tokens)).square().mean().backward()
    assert embedding.weight.grad.is_sparse
    assert opt.eligible_grads() == [linear.weight.grad]
    reference.gan_([plain_linear.weight.grad], GANState())
    opt.step()
    plain.step()
    assert torch.equal(embedding.weight, plain_embedding.weight)
    torch.testing.assert_close(linear.weight, plain_linear.weight, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.1))
    backward(model, batches(1)[0])
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        assert (p.grad is None) if set_to_none else torch.equal(p.grad, torch.zeros_like(p))
    opt.step()
    assert opt.last_stats.means.shape == ((0,) if set_to_none else (2,))


def test_add_param_group():
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.0))
    extra = nn.Linear(3, 2)
    opt.add_param_group({"params": extra.parameters(), "lr": 0.0})
    assert len(opt.optimizer.param_groups) == 2
    extra(model(batches(1)[0][0])).sum().backward()
    bias_grad = extra.bias.grad.clone()
    opt.step()
    assert opt.last_stats.means.shape == (3,)
    assert abs(extra.weight.grad.mean().item()) < 1e-7
    assert torch.equal(extra.bias.grad, bias_grad)


def test_closure_runs_with_grad_enabled():
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.1))
    batch = batches(1)[0]

    def closure():
        opt.zero_grad()
        return backward(model, batch)

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.requires_grad and opt.last_stats is not None
    assert opt.gan_state.step.item() == 1


def test_a_closure_is_evaluated_once_then_gan_then_the_step():
    ours, theirs = make_model(), make_model()
    opt = GAN(torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9))
    plain = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    state, calls = GANState(), []
    for batch in batches(3):
        def closure(batch=batch):
            calls.append(batch)
            opt.zero_grad()
            loss = backward(ours, batch)
            calls.append(loss)
            return loss

        assert opt.step(closure) is calls[-1]
        plain.zero_grad()
        backward(theirs, batch)
        gan_kernels.gan_([p.grad for p in eligible_params(theirs)], state)
        plain.step()
    assert len(calls) == 6 and opt.gan_state.step.item() == 3
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_step_hooks_run():
    model = make_model()
    opt = GAN(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    backward(model, batches(1)[0])
    opt.step()
    assert calls == ["pre", "post"]


def test_constructor_errors():
    model = make_model()
    with pytest.raises(TypeError, match="wraps a torch.optim.Optimizer"):
        GAN(model.parameters())
    with pytest.raises(ValueError, match="available modes"):
        GAN(torch.optim.SGD(model.parameters(), lr=0.1), mode="lamb")
    with pytest.raises(ValueError, match="available backends"):
        GAN(torch.optim.SGD(model.parameters(), lr=0.1), backend="jax")
    with pytest.raises(TypeError, match="eligible must be a callable"):
        GAN(torch.optim.SGD(model.parameters(), lr=0.1), eligible=True)


def test_repr():
    opt = GAN(torch.optim.SGD(make_model().parameters(), lr=0.1), mode="gc")
    text = repr(opt)
    assert text.startswith("GAN(mode='gc', backend='auto', eligible=default,")
    assert "SGD (" in text and "lr: 0.1" in text
